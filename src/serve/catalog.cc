#include "serve/catalog.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

namespace mingpt::serve {
namespace fs = std::filesystem;
namespace {

constexpr int kMaxDepth = 4;            // levels below the root that are scanned
constexpr size_t kMaxEntries = 20000;   // directory entries visited per scan
constexpr size_t kMaxBenchBytes = 4 << 20;    // bench.csv: read whole (a few rows per model)
constexpr size_t kMaxCsvRecordBytes = 1 << 20;
constexpr size_t kTailBytes = 64 << 10;       // read for the last step: hundreds of rows

constexpr size_t kMaxMetaBytes = 16 << 20;

std::string ReadAll(std::istream& in) {
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::optional<nlohmann::json> ParseMeta(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  return j;
}

// meta.json of a checkpoint given by path (--checkpoint, which may lie
// outside the root).
std::optional<nlohmann::json> ReadMeta(const std::string& dir) {
  const std::string path = dir + "/meta.json";
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  const auto size = fs::file_size(path, ec);
  if (ec || size > kMaxMetaBytes) return std::nullopt;
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  return ParseMeta(ReadAll(f));
}

std::string Canonical(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::canonical(path, ec);
  return ec ? std::string() : p.string();
}

CheckpointEntry EntryFromMeta(const nlohmann::json& meta) {
  CheckpointEntry e;
  e.config = meta.contains("config") ? meta["config"] : nlohmann::json(nullptr);
  if (meta.contains("step") && meta["step"].is_number_integer()) e.step = meta["step"].get<int64_t>();
  return e;
}

// The step of the last row of metrics.csv at `path` whose step is an
// integer, from the header and the file's last kTailBytes: /v1/runs asks
// this of every run at every call, and a long run's file is large. Rows with
// a non-integral step (1e300 does not fit an int64) are passed over.
std::optional<int64_t> LastStep(std::istream& f, uint64_t size) {
  std::string head(kTailBytes, '\0');
  f.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(f.gcount()));
  const CsvTable header = ParseCsv(head.substr(0, head.find('\n')));
  const auto col = std::find(header.columns.begin(), header.columns.end(), "step");
  if (col == header.columns.end()) return std::nullopt;
  const size_t c = col - header.columns.begin();
  const uint64_t start = size > kTailBytes ? size - kTailBytes : 0;
  f.clear();
  f.seekg(static_cast<std::streamoff>(start));
  std::string tail(static_cast<size_t>(size - start), '\0');
  f.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  tail.resize(static_cast<size_t>(f.gcount()));
  // From the start: the header is a row to skip; from the middle: a partial line.
  const size_t nl = tail.find('\n');
  if (nl == std::string::npos) return std::nullopt;
  std::istringstream in(tail.substr(nl + 1));
  CsvReader reader(in, kTailBytes);
  std::optional<int64_t> step;
  for (std::vector<std::string> row; reader.Next(&row);) {
    if (c >= row.size()) continue;
    const nlohmann::json v = CsvCell(row[c]);
    if (v.is_number_integer()) step = v.get<int64_t>();
  }
  return step;
}

// Whether an id found by a scan is listed: one the API accepts back
// (IsSafeId), and text that JSON carries as it is (a name that is not UTF-8
// would be listed with U+FFFD in it, an id no request can name). What is not
// listed is not served at all, so no id stands for two things.
bool Listable(const std::string& id) {
  if (!IsSafeId(id)) return false;
  try {
    (void)nlohmann::json(id).dump();  // strict: throws on invalid UTF-8
  } catch (const nlohmann::json::exception&) {
    return false;
  }
  return true;
}

}  // namespace

bool IsSafeId(const std::string& id) {
  if (id.empty() || id.size() > kMaxIdChars || id[0] == '/') return false;
  for (char c : id) {
    if (static_cast<unsigned char>(c) < 0x20 || c == '\\' || c == 0x7f) return false;
  }
  std::stringstream s(id);
  std::string part;
  while (std::getline(s, part, '/')) {
    if (part == "..") return false;
  }
  return true;
}

bool CsvReader::Next(std::vector<std::string>* record) {
  record->clear();
  if (too_long_) return false;
  std::streambuf* in = in_.rdbuf();
  std::string cell;
  bool quoted = false, any = false;
  size_t bytes = 0;
  for (int c = in->sbumpc(); c != std::char_traits<char>::eof(); c = in->sbumpc()) {
    if (++bytes > max_record_bytes_) {
      too_long_ = true;
      return false;
    }
    if (quoted) {
      if (c == '"' && in->sgetc() == '"') {
        cell += '"';
        in->sbumpc();
      } else if (c == '"') {
        quoted = false;
      } else {
        cell += static_cast<char>(c);
      }
      continue;
    }
    if (c == '"') {
      quoted = true;
      any = true;
    } else if (c == ',') {
      record->push_back(std::move(cell));
      cell.clear();
      any = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && in->sgetc() == '\n') in->sbumpc();
      if (any || !cell.empty()) {
        record->push_back(std::move(cell));
        return true;
      }
    } else {
      cell += static_cast<char>(c);
      any = true;
    }
  }
  if (any || !cell.empty()) {
    record->push_back(std::move(cell));
    return true;
  }
  return false;
}

CsvTable ParseCsv(const std::string& text) {
  std::istringstream in(text);
  CsvReader reader(in, text.size());
  CsvTable t;
  if (!reader.Next(&t.columns)) return t;
  for (std::vector<std::string> row; reader.Next(&row);) {
    row.resize(t.columns.size());  // a row cut short (being written) gets empty cells
    t.rows.push_back(std::move(row));
  }
  return t;
}

nlohmann::json CsvCell(const std::string& cell) {
  if (cell.empty()) return nullptr;
  char* end = nullptr;
  const double v = std::strtod(cell.c_str(), &end);
  if (end == cell.c_str() + cell.size() && std::isfinite(v)) {
    if (v == std::floor(v) && std::fabs(v) < 9e15 && cell.find_first_of(".eE") == std::string::npos) {
      return static_cast<int64_t>(v);
    }
    return v;
  }
  return cell;
}

StatusOr<Catalog> Catalog::Create(const std::string& root, const std::string& checkpoint) {
  Catalog c;
  if (!root.empty()) {
    std::error_code ec;
    if (!fs::is_directory(root, ec)) {
      return Status::Error("--root '" + root + "' is not a directory");
    }
    c.root_ = Canonical(root);
    if (c.root_.empty()) return Status::Error("--root '" + root + "' cannot be resolved");
  }
  if (!checkpoint.empty()) {
    std::error_code ec;
    if (!fs::is_directory(checkpoint, ec)) {
      return Status::Error("--checkpoint '" + checkpoint + "' is not a directory");
    }
    if (!ReadMeta(checkpoint)) {
      return Status::Error("--checkpoint '" + checkpoint + "' holds no readable meta.json");
    }
    std::string given = checkpoint;
    while (given.size() > 1 && given.back() == '/') given.pop_back();
    Extra e;
    e.given = checkpoint;
    e.absolute = fs::absolute(given).lexically_normal().string();
    if (!c.root_.empty() && c.UnderRoot(checkpoint)) {
      // The id the scan gives it, when the flag names it by a path in the root.
      const std::string rel = fs::path(e.absolute).lexically_proximate(c.root_).string();
      e.id = e.path = Listable(rel) ? rel : "checkpoint";
    } else {
      e.id = "checkpoint";
      e.path = checkpoint;
    }
    c.extra_ = std::move(e);
  }
  return c;
}

std::optional<CheckpointEntry> Catalog::ResolveExtra() const {
  auto meta = ReadMeta(extra_->absolute);
  if (!meta) return std::nullopt;
  CheckpointEntry e = EntryFromMeta(*meta);
  e.id = extra_->id;
  e.path = extra_->path;
  e.dir = Canonical(extra_->absolute);
  if (e.dir.empty()) return std::nullopt;
  return e;
}

bool Catalog::InRoot(const std::string& real) const {
  if (root_.empty() || real.empty()) return false;
  return real == root_ || (real.size() > root_.size() && real.compare(0, root_.size(), root_) == 0 &&
                           (root_.back() == '/' || real[root_.size()] == '/'));
}

bool Catalog::UnderRoot(const std::string& path) const { return InRoot(Canonical(path)); }

bool Catalog::MayRead(const std::string& real_dir) const {
  if (real_dir.empty()) return false;
  if (InRoot(real_dir)) return true;
  if (!extra_) return false;
  // --checkpoint's version now, or one beside it that a save has replaced
  // since the look (training saves a new version directory next to the old).
  const std::string named = Canonical(extra_->absolute);
  return !named.empty() && (real_dir == named || fs::path(real_dir).parent_path() ==
                                                     fs::path(named).parent_path());
}

std::optional<Catalog::RootedFile> Catalog::OpenUnderRoot(const std::string& path,
                                                          uint64_t limit) const {
  if (root_.empty()) return std::nullopt;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return std::nullopt;
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) > limit) {
    return std::nullopt;
  }
  // Where the opened file is: a symlink swapped in after any check of the
  // path cannot move it. It is read through the same link, which reopens
  // this file whatever the path names now.
  const std::string self = "/proc/self/fd/" + std::to_string(fd);
  std::error_code ec;
  const fs::path real = fs::read_symlink(self, ec);
  if (ec || !InRoot(real.string())) return std::nullopt;
  RootedFile f{std::ifstream(self, std::ios::binary), static_cast<uint64_t>(st.st_size)};
  if (!f.in) return std::nullopt;
  return f;
}

std::optional<nlohmann::json> Catalog::ReadRootedMeta(const std::string& dir) const {
  auto f = OpenUnderRoot(dir + "/meta.json", kMaxMetaBytes);
  if (!f) return std::nullopt;
  return ParseMeta(ReadAll(f->in));
}

bool Catalog::CheckpointUnderRoot(const std::string& dir) const {
  if (!UnderRoot(dir)) return false;
  std::error_code ec;
  size_t visited = 0;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    if (++visited > kMaxEntries || !UnderRoot(it->path().string())) return false;
  }
  return !ec;
}

bool Catalog::ReadableUnderRoot(const std::string& path, size_t limit) const {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec) || !UnderRoot(path)) return false;
  const auto size = fs::file_size(path, ec);
  return !ec && size <= limit;
}

std::vector<std::string> Catalog::Directories() const {
  std::vector<std::string> dirs;
  if (root_.empty()) return dirs;
  dirs.push_back(root_);
  std::error_code ec;
  size_t visited = 0;
  for (auto it = fs::recursive_directory_iterator(root_, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (++visited > kMaxEntries) break;
    std::error_code e2;
    if (it->is_symlink(e2) || !it->is_directory(e2)) continue;
    const std::string name = it->path().filename().string();
    if (name == "checkpoints" || (!name.empty() && name[0] == '.')) {
      it.disable_recursion_pending();  // checkpoint versions, hidden directories
      continue;
    }
    dirs.push_back(it->path().string());
    if (it.depth() + 1 >= kMaxDepth) it.disable_recursion_pending();
  }
  return dirs;
}

std::vector<CheckpointEntry> Catalog::Checkpoints() const {
  std::vector<CheckpointEntry> found;
  for (const std::string& dir : Directories()) {
    for (const char* which : {"best", "last"}) {
      const std::string path = dir + "/checkpoints/" + which;
      std::error_code ec;
      if (!fs::exists(path, ec) || !CheckpointUnderRoot(path)) continue;
      const std::string id = fs::path(path).lexically_relative(root_).string();
      if (!Listable(id) || (extra_ && extra_->id == id)) continue;
      auto meta = ReadRootedMeta(path);
      if (!meta) continue;
      CheckpointEntry e = EntryFromMeta(*meta);
      e.id = e.path = id;
      e.dir = Canonical(path);
      found.push_back(std::move(e));
    }
  }
  std::sort(found.begin(), found.end(),
            [](const CheckpointEntry& a, const CheckpointEntry& b) { return a.id < b.id; });
  if (extra_) {
    if (auto e = ResolveExtra()) found.insert(found.begin(), std::move(*e));
  }
  return found;
}

std::vector<RunEntry> Catalog::Runs() const {
  std::vector<RunEntry> runs;
  for (const std::string& dir : Directories()) {
    // Of any size: only its first line and its tail are read here.
    auto metrics = OpenUnderRoot(dir + "/metrics.csv", std::numeric_limits<uint64_t>::max());
    if (!metrics) continue;
    RunEntry r;
    r.dir = dir;
    if (dir == root_) {
      r.id = fs::path(root_).filename().string();
      if (!Listable(r.id)) r.id = "root";
    } else {
      r.id = fs::path(dir).lexically_relative(root_).string();
      if (!Listable(r.id)) continue;
    }
    for (const char* which : {"last", "best"}) {
      const std::string path = dir + "/checkpoints/" + which;
      if (!CheckpointUnderRoot(path)) continue;
      if (auto meta = ReadRootedMeta(path); meta && meta->contains("config")) {
        r.config = (*meta)["config"];
        break;
      }
    }
    r.last_step = LastStep(metrics->in, metrics->size).value_or(0);
    runs.push_back(std::move(r));
  }
  // By id, each once: of a run in the root itself and one under it with the
  // same id (the root's name, or "root"), the root's is kept.
  std::stable_sort(runs.begin(), runs.end(),
                   [](const RunEntry& a, const RunEntry& b) { return a.id < b.id; });
  runs.erase(std::unique(runs.begin(), runs.end(),
                         [](const RunEntry& a, const RunEntry& b) { return a.id == b.id; }),
             runs.end());
  return runs;
}

StatusOr<CheckpointEntry> Catalog::FindCheckpoint(const std::string& id) const {
  if (id.empty() && extra_) {
    if (auto e = ResolveExtra()) return std::move(*e);
    return Status::Error("--checkpoint '" + extra_->given + "' holds no readable meta.json now");
  }
  std::vector<CheckpointEntry> all = Checkpoints();
  if (all.empty()) return Status::Error("no checkpoints to generate from");
  if (id.empty()) {
    for (const CheckpointEntry& e : all) {
      if (e.id.size() >= 5 && e.id.compare(e.id.size() - 5, 5, "/best") == 0) return e;
    }
    return all.front();
  }
  for (CheckpointEntry& e : all) {
    if (e.id == id) return std::move(e);
  }
  return Status::Error("unknown checkpoint '" + id + "'");
}

StatusOr<RunEntry> Catalog::FindRun(const std::string& id) const {
  for (RunEntry& r : Runs()) {
    if (r.id == id) return std::move(r);
  }
  return Status::Error("unknown run '" + id + "'");
}

StatusOr<nlohmann::json> Catalog::Metrics(const RunEntry& run) const {
  // Of any size: read as a stream, keeping at most kMaxMetricRows + 1 rows.
  auto file = OpenUnderRoot(run.dir + "/metrics.csv", std::numeric_limits<uint64_t>::max());
  if (!file) return Status::Error("cannot read metrics.csv of run '" + run.id + "' (gone)");
  CsvReader reader(file->in, kMaxCsvRecordBytes);
  std::vector<std::string> columns, row, last;
  reader.Next(&columns);
  // Rows 0, k, 2k, ... (k doubling whenever more than kMaxMetricRows are
  // kept), so memory stays bounded in one pass over a file of any length.
  std::vector<std::vector<std::string>> kept;
  size_t k = 1, n = 0;
  for (; reader.Next(&row); ++n) {
    row.resize(columns.size());  // a row cut short (being written) gets empty cells
    if (n % k == 0) {
      kept.push_back(row);
      if (kept.size() > kMaxMetricRows) {
        size_t w = 1;  // row 0 stays where it is
        for (size_t i = 2; i < kept.size(); i += 2) kept[w++] = std::move(kept[i]);
        kept.resize(w);
        k *= 2;
      }
    }
    last.swap(row);
  }
  if (reader.too_long()) {
    return Status::Error("metrics.csv of run '" + run.id + "' has a line over " +
                         std::to_string(kMaxCsvRecordBytes) + " bytes");
  }
  if (n > 0 && (n - 1) % k != 0) kept.push_back(std::move(last));
  nlohmann::json metrics = nlohmann::json::object();
  for (size_t c = 0; c < columns.size(); ++c) {
    nlohmann::json column = nlohmann::json::array();
    for (const auto& r : kept) column.push_back(CsvCell(r[c]));
    metrics[columns[c]] = std::move(column);
  }
  return nlohmann::json{{"run", run.id}, {"columns", columns}, {"metrics", std::move(metrics)}};
}

std::optional<nlohmann::json> Catalog::Bench() const {
  std::string newest;
  fs::file_time_type newest_time{};
  for (const std::string& dir : Directories()) {
    const std::string path = dir + "/bench.csv";
    if (!ReadableUnderRoot(path, kMaxBenchBytes)) continue;
    std::error_code ec;
    const auto t = fs::last_write_time(path, ec);
    if (ec) continue;
    if (newest.empty() || t > newest_time) {
      newest = path;
      newest_time = t;
    }
  }
  if (newest.empty()) return std::nullopt;
  auto file = OpenUnderRoot(newest, kMaxBenchBytes);
  if (!file) return std::nullopt;
  const CsvTable t = ParseCsv(ReadAll(file->in));
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& row : t.rows) {
    nlohmann::json o = nlohmann::json::object();
    for (size_t c = 0; c < t.columns.size(); ++c) o[t.columns[c]] = CsvCell(row[c]);
    rows.push_back(std::move(o));
  }
  return nlohmann::json{{"path", fs::path(newest).lexically_relative(root_).string()},
                        {"columns", t.columns},
                        {"rows", std::move(rows)}};
}

}  // namespace mingpt::serve
