#include "serve/catalog.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace mingpt::serve {
namespace fs = std::filesystem;
namespace {

constexpr int kMaxDepth = 4;            // levels below the root that are scanned
constexpr size_t kMaxEntries = 20000;   // directory entries visited per scan
constexpr size_t kMaxCsvBytes = 64 << 20;

std::optional<std::string> ReadSmallFile(const std::string& path, size_t limit) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  const auto size = fs::file_size(path, ec);
  if (ec || size > limit) return std::nullopt;
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::optional<nlohmann::json> ReadMeta(const std::string& dir) {
  auto text = ReadSmallFile(dir + "/meta.json", 16 << 20);
  if (!text) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  return j;
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

}  // namespace

bool IsSafeId(const std::string& id) {
  if (id.empty() || id.size() > 4096 || id[0] == '/') return false;
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

CsvTable ParseCsv(const std::string& text) {
  std::vector<std::vector<std::string>> records;
  std::vector<std::string> record;
  std::string cell;
  bool quoted = false, any = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        cell += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        cell += c;
      }
      continue;
    }
    if (c == '"') {
      quoted = true;
      any = true;
    } else if (c == ',') {
      record.push_back(std::move(cell));
      cell.clear();
      any = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      if (any || !cell.empty()) {
        record.push_back(std::move(cell));
        records.push_back(std::move(record));
      }
      record.clear();
      cell.clear();
      any = false;
    } else {
      cell += c;
      any = true;
    }
  }
  if (any || !cell.empty()) {
    record.push_back(std::move(cell));
    records.push_back(std::move(record));
  }
  CsvTable t;
  if (records.empty()) return t;
  t.columns = std::move(records[0]);
  for (size_t r = 1; r < records.size(); ++r) {
    records[r].resize(t.columns.size());  // a row cut short (being written) gets empty cells
    t.rows.push_back(std::move(records[r]));
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
    auto meta = ReadMeta(checkpoint);
    if (!meta) {
      return Status::Error("--checkpoint '" + checkpoint + "' holds no readable meta.json");
    }
    CheckpointEntry e = EntryFromMeta(*meta);
    e.dir = Canonical(checkpoint);
    if (!c.root_.empty() && c.UnderRoot(checkpoint)) {
      // The id the scan gives it, when the flag names it by a path in the root.
      std::string given = checkpoint;
      while (given.size() > 1 && given.back() == '/') given.pop_back();
      const std::string rel =
          fs::absolute(given).lexically_normal().lexically_proximate(c.root_).string();
      e.id = e.path = IsSafeId(rel) ? rel : "checkpoint";
    } else {
      e.id = "checkpoint";
      e.path = checkpoint;
    }
    c.extra_ = std::move(e);
  }
  return c;
}

bool Catalog::UnderRoot(const std::string& path) const {
  if (root_.empty()) return false;
  const std::string real = Canonical(path);
  if (real.empty()) return false;
  return real == root_ || (real.size() > root_.size() && real.compare(0, root_.size(), root_) == 0 &&
                           (root_.back() == '/' || real[root_.size()] == '/'));
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
      if (!fs::exists(path, ec) || !UnderRoot(path)) continue;
      auto meta = ReadMeta(path);
      if (!meta) continue;
      CheckpointEntry e = EntryFromMeta(*meta);
      e.id = e.path = fs::path(path).lexically_relative(root_).string();
      e.dir = Canonical(path);
      if (extra_ && extra_->id == e.id) continue;
      found.push_back(std::move(e));
    }
  }
  std::sort(found.begin(), found.end(),
            [](const CheckpointEntry& a, const CheckpointEntry& b) { return a.id < b.id; });
  if (extra_) found.insert(found.begin(), *extra_);
  return found;
}

std::vector<RunEntry> Catalog::Runs() const {
  std::vector<RunEntry> runs;
  for (const std::string& dir : Directories()) {
    const std::string metrics = dir + "/metrics.csv";
    std::error_code ec;
    if (!fs::is_regular_file(metrics, ec) || !UnderRoot(metrics)) continue;
    RunEntry r;
    r.dir = dir;
    r.id = dir == root_ ? fs::path(root_).filename().string()
                        : fs::path(dir).lexically_relative(root_).string();
    if (r.id.empty() || !IsSafeId(r.id)) r.id = "root";
    for (const char* which : {"last", "best"}) {
      const std::string path = dir + "/checkpoints/" + which;
      if (!UnderRoot(path)) continue;
      if (auto meta = ReadMeta(path); meta && meta->contains("config")) {
        r.config = (*meta)["config"];
        break;
      }
    }
    if (auto text = ReadSmallFile(metrics, kMaxCsvBytes)) {
      const CsvTable t = ParseCsv(*text);
      const auto col = std::find(t.columns.begin(), t.columns.end(), "step");
      if (col != t.columns.end() && !t.rows.empty()) {
        const nlohmann::json v = CsvCell(t.rows.back()[col - t.columns.begin()]);
        if (v.is_number()) r.last_step = v.get<int64_t>();
      }
    }
    runs.push_back(std::move(r));
  }
  std::sort(runs.begin(), runs.end(), [](const RunEntry& a, const RunEntry& b) { return a.id < b.id; });
  return runs;
}

StatusOr<CheckpointEntry> Catalog::FindCheckpoint(const std::string& id) const {
  std::vector<CheckpointEntry> all = Checkpoints();
  if (all.empty()) return Status::Error("no checkpoints to generate from");
  if (id.empty()) {
    if (extra_) return all.front();
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
  auto text = ReadSmallFile(run.dir + "/metrics.csv", kMaxCsvBytes);
  if (!text) return Status::Error("cannot read metrics.csv of run '" + run.id + "'");
  const CsvTable t = ParseCsv(*text);
  nlohmann::json metrics = nlohmann::json::object();
  for (size_t c = 0; c < t.columns.size(); ++c) {
    nlohmann::json column = nlohmann::json::array();
    for (const auto& row : t.rows) column.push_back(CsvCell(row[c]));
    metrics[t.columns[c]] = std::move(column);
  }
  return nlohmann::json{{"run", run.id}, {"columns", t.columns}, {"metrics", std::move(metrics)}};
}

std::optional<nlohmann::json> Catalog::Bench() const {
  std::string newest;
  fs::file_time_type newest_time{};
  for (const std::string& dir : Directories()) {
    const std::string path = dir + "/bench.csv";
    std::error_code ec;
    if (!fs::is_regular_file(path, ec) || !UnderRoot(path)) continue;
    const auto t = fs::last_write_time(path, ec);
    if (ec) continue;
    if (newest.empty() || t > newest_time) {
      newest = path;
      newest_time = t;
    }
  }
  if (newest.empty()) return std::nullopt;
  auto text = ReadSmallFile(newest, kMaxCsvBytes);
  if (!text) return std::nullopt;
  const CsvTable t = ParseCsv(*text);
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
