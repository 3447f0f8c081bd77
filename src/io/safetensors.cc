#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "io/crc32c.h"
#include "io/file.h"

namespace mingpt {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this code copies host bytes");

StatusOr<nlohmann::json> ParseJsonStrict(const std::string& text, const std::string& what) {
  // nlohmann takes a NUL for the end of the input: what follows it would go
  // unread.
  const size_t nul = text.find('\0');
  if (nul != std::string::npos) {
    return Status::Error(what + " has a NUL byte at offset " + std::to_string(nul));
  }
  std::vector<std::set<std::string>> open_objects;
  std::optional<std::string> duplicate;
  nlohmann::json::parser_callback_t callback = [&](int /*depth*/,
                                                   nlohmann::json::parse_event_t event,
                                                   nlohmann::json& parsed) {
    switch (event) {
      case nlohmann::json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case nlohmann::json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case nlohmann::json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string() &&
            !open_objects.back().insert(parsed.get<std::string>()).second && !duplicate) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  nlohmann::json parsed = nlohmann::json::parse(text, callback, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return Status::Error(what + " is not valid JSON");
  if (duplicate) return Status::Error(what + " has duplicate key '" + *duplicate + "'");
  return parsed;
}

namespace {

using nlohmann::json;

constexpr const char* kMetadataKey = "__metadata__";
// What a tensor's checksum key holds until its data has been written: the
// width of a real value (the header is patched in place), and not hex, so
// that a header left unpatched could never be read as valid.
constexpr const char* kCrcPlaceholder = "????????";

std::string CrcHex(uint32_t crc) {
  char hex[9];
  std::snprintf(hex, sizeof(hex), "%08x", crc);
  return hex;
}

bool StartsWithCrcPrefix(const std::string& key) {
  return key.rfind(kCrc32cMetadataPrefix, 0) == 0;
}

// Exactly 8 hex digits (either case), as WriteSafetensors writes them.
std::optional<uint32_t> ParseCrcHex(const std::string& text) {
  if (text.size() != 8) return std::nullopt;
  uint32_t v = 0;
  for (char c : text) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return std::nullopt;
    }
    v = (v << 4) | static_cast<uint32_t>(d);
  }
  return v;
}

struct DTypeEntry {
  TensorDType dtype;
  const char* name;
  int64_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {TensorDType::kF64, "F64", 8}, {TensorDType::kF32, "F32", 4},
    {TensorDType::kF16, "F16", 2}, {TensorDType::kBF16, "BF16", 2},
    {TensorDType::kI64, "I64", 8}, {TensorDType::kI32, "I32", 4},
    {TensorDType::kI16, "I16", 2}, {TensorDType::kI8, "I8", 1},
    {TensorDType::kU8, "U8", 1},   {TensorDType::kBool, "BOOL", 1},
};

// numel * DTypeSize(dtype) in bytes; nullopt on a negative dimension or
// overflow of int64.
std::optional<int64_t> CheckedNumel(const std::vector<int64_t>& shape) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(numel, d, &numel)) return std::nullopt;
  }
  return numel;
}

std::optional<int64_t> CheckedBytes(int64_t numel, TensorDType dtype) {
  int64_t bytes = 0;
  if (__builtin_mul_overflow(numel, DTypeSize(dtype), &bytes)) return std::nullopt;
  return bytes;
}

// Reads exactly `size` bytes at `offset`; a short read means the file shrank.
Status PreadAll(int fd, void* dst, uint64_t size, uint64_t offset) {
  char* p = static_cast<char*>(dst);
  while (size > 0) {
    const size_t chunk = size < (uint64_t{1} << 30) ? size : (size_t{1} << 30);
    const ssize_t n = ::pread(fd, p, chunk, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Error(std::string("read failed: ") + ::strerror(errno));
    }
    if (n == 0) return Status::Error("unexpected end of file (truncated?)");
    p += n;
    size -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

// Checksums are taken a piece at a time as the bytes are copied (written
// out, or read into the caller's buffer), while the piece is still in the
// cache: a separate pass over a large tensor would go through memory again.
constexpr size_t kCrcPiece = size_t{1} << 20;

// PreadAll that continues *crc over the bytes read; as PreadAll if crc is null.
Status PreadAllWithCrc(int fd, void* dst, uint64_t size, uint64_t offset, uint32_t* crc) {
  if (crc == nullptr) return PreadAll(fd, dst, size, offset);
  char* p = static_cast<char*>(dst);
  while (size > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size, kCrcPiece));
    MINGPT_RETURN_IF_ERROR(PreadAll(fd, p, n, offset));
    *crc = Crc32c(p, n, *crc);
    p += n;
    size -= n;
    offset += n;
  }
  return Status::Ok();
}

// A JSON integer >= 0 that fits in int64 (rejects floats, negatives, bools).
std::optional<int64_t> NonNegativeInt(const json& j) {
  if (j.is_number_unsigned()) {
    const uint64_t v = j.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v < 0) return std::nullopt;
    return v;
  }
  return std::nullopt;
}

// A short description of a JSON value that never recurses (a hostile header
// may nest arrays millions deep, and dump() would recurse that deep).
std::string Describe(const json& j) {
  if (j.is_array()) return "an array";
  if (j.is_object()) return "an object";
  std::string s = j.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

StatusOr<TensorInfo> ParseEntry(const std::string& name, const json& entry,
                                uint64_t data_size) {
  auto fail = [&](const std::string& what) {
    return Status::Error("tensor '" + name + "': " + what);
  };
  if (!entry.is_object()) return fail("entry is not a JSON object");
  TensorInfo info;
  info.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) return fail("missing string 'dtype'");
  const std::optional<TensorDType> dtype = ParseDType(dtype_it->get<std::string>());
  if (!dtype) return fail("unknown dtype '" + dtype_it->get<std::string>() + "'");
  info.dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) return fail("missing array 'shape'");
  for (size_t i = 0; i < shape_it->size(); ++i) {
    const std::optional<int64_t> dim = NonNegativeInt((*shape_it)[i]);
    if (!dim) {
      return fail("shape dimension " + std::to_string(i) + " is " + Describe((*shape_it)[i]) +
                  ", not an integer >= 0");
    }
    info.shape.push_back(*dim);
  }
  const std::optional<int64_t> numel = CheckedNumel(info.shape);
  const std::optional<int64_t> bytes = numel ? CheckedBytes(*numel, info.dtype) : std::nullopt;
  if (!bytes) return fail("shape " + ShapeString(info.shape) + " overflows 64-bit byte count");
  info.numel = *numel;

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
    return fail("missing 'data_offsets' [begin, end]");
  }
  int64_t offsets[2];
  for (size_t i = 0; i < 2; ++i) {
    const std::optional<int64_t> v = NonNegativeInt((*offsets_it)[i]);
    if (!v) {
      return fail("data_offsets element " + std::to_string(i) + " is " +
                  Describe((*offsets_it)[i]) + ", not an integer >= 0");
    }
    offsets[i] = *v;
  }
  info.begin = static_cast<uint64_t>(offsets[0]);
  info.end = static_cast<uint64_t>(offsets[1]);
  const std::string offsets_str =
      "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) + "]";
  if (info.begin > info.end || info.end > data_size) {
    return fail(offsets_str + " lie outside the data section (" + std::to_string(data_size) +
                " bytes; file truncated?)");
  }
  if (info.end - info.begin != static_cast<uint64_t>(*bytes)) {
    return fail(offsets_str + " span " + std::to_string(info.end - info.begin) +
                " bytes but shape " + ShapeString(info.shape) + " of " + DTypeName(info.dtype) +
                " needs " + std::to_string(*bytes));
  }
  return info;
}

struct ParsedHeader {
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

StatusOr<ParsedHeader> ParseHeader(const std::string& text, uint64_t data_size) {
  MINGPT_ASSIGN_OR_RETURN(json header, ParseJsonStrict(text, "header"));
  if (!header.is_object()) return Status::Error("header is not a JSON object");
  ParsedHeader out;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) return Status::Error("__metadata__ is not a JSON object");
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          return Status::Error("__metadata__ value for '" + mkey + "' is not a string");
        }
        out.metadata[mkey] = mvalue.get<std::string>();
      }
      continue;
    }
    MINGPT_ASSIGN_OR_RETURN(TensorInfo info, ParseEntry(key, value, data_size));
    out.tensors.push_back(std::move(info));
  }
  std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    return a.end != b.end ? a.end < b.end : a.name < b.name;
  });
  // Each byte of the data belongs to one tensor at most: two tensors over
  // the same bytes are a corrupt (or crafted) file, as the format's own
  // reader holds.
  for (size_t i = 1; i < out.tensors.size(); ++i) {
    const TensorInfo& a = out.tensors[i - 1];
    const TensorInfo& b = out.tensors[i];
    if (b.begin < a.end) {
      return Status::Error("tensors '" + a.name + "' and '" + b.name +
                           "' overlap in the data (data_offsets)");
    }
  }
  return out;
}

Status ValidateForWrite(const std::vector<TensorRef>& tensors,
                        const std::map<std::string, std::string>& metadata,
                        std::vector<int64_t>* bytes) {
  for (const auto& [key, value] : metadata) {
    if (StartsWithCrcPrefix(key)) {
      return Status::Error("metadata key '" + key + "' is reserved: keys starting with '" +
                           kCrc32cMetadataPrefix + "' hold the tensors' checksums");
    }
  }
  std::set<std::string> seen;
  for (const TensorRef& t : tensors) {
    if (t.name == kMetadataKey) return Status::Error("'__metadata__' is not a tensor name");
    if (!seen.insert(t.name).second) {
      return Status::Error("duplicate tensor name '" + t.name + "'");
    }
    const std::optional<int64_t> numel = CheckedNumel(t.shape);
    const std::optional<int64_t> size = numel ? CheckedBytes(*numel, t.dtype) : std::nullopt;
    if (!size) {
      return Status::Error("tensor '" + t.name + "' has invalid shape " + ShapeString(t.shape));
    }
    if (*size > 0 && t.data == nullptr && !t.fill) {
      return Status::Error("tensor '" + t.name + "' has no data");
    }
    bytes->push_back(*size);
  }
  return Status::Ok();
}

}  // namespace

const char* DTypeName(TensorDType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

int64_t DTypeSize(TensorDType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

std::optional<TensorDType> ParseDType(std::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) return e.dtype;
  }
  return std::nullopt;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Status WriteSafetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<int64_t> bytes;
  MINGPT_RETURN_IF_ERROR(
      ValidateForWrite(tensors, metadata, &bytes).WithContext("cannot write '" + path + "'"));

  // The header goes out first with placeholders for the checksums, which
  // are taken as the data is written and then patched into it in place:
  // every checksum is 8 characters, so the header keeps its length. (A
  // tensor made by its fill has no checksum before it is made, and the data
  // is read once this way, not once to checksum and again to write.)
  std::vector<std::optional<uint32_t>> crcs(tensors.size());
  auto header_text = [&]() {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    for (size_t i = 0; i < tensors.size(); ++i) {
      meta[kCrc32cMetadataPrefix + tensors[i].name] = crcs[i] ? CrcHex(*crcs[i]) : kCrcPlaceholder;
    }
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!meta.empty()) header[kMetadataKey] = std::move(meta);
    uint64_t offset = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const uint64_t end = offset + static_cast<uint64_t>(bytes[i]);
      header[tensors[i].name] = {{"dtype", DTypeName(tensors[i].dtype)},
                                 {"shape", tensors[i].shape},
                                 {"data_offsets", {offset, end}}};
      offset = end;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    return text;
  };
  const std::string text = header_text();
  char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);

  MINGPT_ASSIGN_OR_RETURN(DurableFileWriter writer, DurableFileWriter::Create(path));
  MINGPT_RETURN_IF_ERROR(writer.Append(length, sizeof(length)));
  MINGPT_RETURN_IF_ERROR(writer.Append(text));
  std::vector<char> filled;  // a tensor made by its fill, one at a time
  for (size_t i = 0; i < tensors.size(); ++i) {
    const char* data = static_cast<const char*>(tensors[i].data);
    if (data == nullptr && bytes[i] > 0) {
      filled.resize(static_cast<size_t>(bytes[i]));
      tensors[i].fill(filled.data());
      data = filled.data();
    }
    uint32_t crc = 0;
    for (size_t at = 0, size = static_cast<size_t>(bytes[i]); at < size; at += kCrcPiece) {
      const size_t n = std::min(kCrcPiece, size - at);
      crc = Crc32c(data + at, n, crc);
      MINGPT_RETURN_IF_ERROR(writer.Append(data + at, n));
    }
    crcs[i] = crc;
  }
  if (!tensors.empty()) {
    // The file is still the temporary one: nobody sees the placeholders.
    const std::string patched = header_text();
    if (patched.size() != text.size()) {
      return Status::Error("cannot write '" + path + "': the header changed length (" +
                           std::to_string(text.size()) + " to " + std::to_string(patched.size()) +
                           " bytes) when its checksums were filled in");
    }
    MINGPT_RETURN_IF_ERROR(writer.WriteAt(sizeof(length), patched.data(), patched.size()));
  }
  return writer.Commit();
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      data_start_(other.data_start_),
      tensors_(std::move(other.tensors_)),
      index_(std::move(other.index_)),
      metadata_(std::move(other.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    data_start_ = other.data_start_;
    tensors_ = std::move(other.tensors_);
    index_ = std::move(other.index_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

Status SafetensorsFile::Error(const std::string& message) const {
  return Status::Error(path_ + ": " + message);
}

StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  return OpenAt(AT_FDCWD, path, path);
}

StatusOr<SafetensorsFile> SafetensorsFile::OpenAt(int dir_fd, const std::string& name,
                                                  const std::string& path, int open_flags) {
  SafetensorsFile file;
  file.path_ = path;
  // O_NONBLOCK: a FIFO must not block.
  file.fd_ = ::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | open_flags);
  if (file.fd_ < 0) {
    if (errno == ENOENT) return file.Error("file does not exist");
    if (errno == ELOOP && (open_flags & O_NOFOLLOW)) {
      return file.Error("is a symlink, which this read does not follow");
    }
    return file.Error(std::string("cannot open: ") + ::strerror(errno));
  }
  struct stat st;
  if (::fstat(file.fd_, &st) != 0) return file.Error(std::string("cannot stat: ") + ::strerror(errno));
  if (S_ISDIR(st.st_mode)) return file.Error("is a directory, not a safetensors file");
  if (!S_ISREG(st.st_mode)) return file.Error("is not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    return file.Error("file is " + std::to_string(file_size) +
                      " bytes, too short for a safetensors header (at least 8)");
  }
  unsigned char length_bytes[8];
  MINGPT_RETURN_IF_ERROR(PreadAll(file.fd_, length_bytes, 8, 0).WithContext(path));
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
  if (header_size > kMaxSafetensorsHeaderBytes) {
    return file.Error("header length " + std::to_string(header_size) + " exceeds the limit of " +
                      std::to_string(kMaxSafetensorsHeaderBytes) + " bytes (not a safetensors file?)");
  }
  if (header_size > file_size - 8) {
    return file.Error("header length " + std::to_string(header_size) + " exceeds the file size (" +
                      std::to_string(file_size) + " bytes; truncated?)");
  }
  std::string header(header_size, '\0');
  MINGPT_RETURN_IF_ERROR(PreadAll(file.fd_, header.data(), header_size, 8).WithContext(path));
  file.data_start_ = 8 + header_size;
  StatusOr<ParsedHeader> parsed = ParseHeader(header, file_size - file.data_start_);
  if (!parsed.ok()) return parsed.status().WithContext(path);
  file.tensors_ = std::move(parsed->tensors);
  file.metadata_ = std::move(parsed->metadata);
  for (size_t i = 0; i < file.tensors_.size(); ++i) file.index_[file.tensors_[i].name] = i;
  // The checksums move from the metadata to their tensors; a malformed one
  // is a damaged header, refused here rather than at some later read.
  for (auto it = file.metadata_.begin(); it != file.metadata_.end();) {
    if (!StartsWithCrcPrefix(it->first)) {
      ++it;
      continue;
    }
    const std::string name = it->first.substr(sizeof(kCrc32cMetadataPrefix) - 1);
    const std::optional<uint32_t> crc = ParseCrcHex(it->second);
    if (!crc) {
      return file.Error("__metadata__ '" + it->first + "' is " + Describe(json(it->second)) +
                        ", not a checksum of 8 hex digits");
    }
    auto index = file.index_.find(name);
    if (index == file.index_.end()) {
      return file.Error("__metadata__ '" + it->first + "' is the checksum of tensor '" + name +
                        "', which is not in the file");
    }
    file.tensors_[index->second].crc32c = *crc;
    it = file.metadata_.erase(it);
  }
  return file;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const TensorInfo& t : tensors_) out.push_back(t.name);
  return out;
}

const TensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

StatusOr<const TensorInfo*> SafetensorsFile::FindChecked(
    const std::string& name, const std::vector<int64_t>& expected_shape) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return Error("missing tensor '" + name + "'");
  if (info->shape != expected_shape) {
    return Error("tensor '" + name + "' has shape " + ShapeString(info->shape) + ", expected " +
                 ShapeString(expected_shape));
  }
  return info;
}

std::optional<uint32_t> SafetensorsFile::StoredCrc(const TensorInfo& info) const {
  // The file's own entry: the caller's TensorInfo may be a copy.
  const TensorInfo* own = Find(info.name);
  if (own == nullptr || own->begin != info.begin || own->end != info.end) return std::nullopt;
  return own->crc32c;
}

Status SafetensorsFile::ChecksumError(const TensorInfo& info, uint32_t stored,
                                      uint32_t read) const {
  return Error("tensor '" + info.name + "' fails its checksum (crc32c " + CrcHex(stored) +
               " stored, " + CrcHex(read) + " read): the file is damaged");
}

Status SafetensorsFile::ReadBytes(const TensorInfo& info, uint64_t begin, uint64_t size,
                                  void* dst, uint32_t* crc_out) const {
  if (fd_ < 0) return Error("file is not open");
  // Only a read of the whole tensor can be checked against its checksum.
  const std::optional<uint32_t> stored =
      begin == 0 && size == info.byte_size() ? StoredCrc(info) : std::nullopt;
  uint32_t crc = 0;
  Status s = PreadAllWithCrc(fd_, dst, size, data_start_ + info.begin + begin,
                             stored || crc_out ? &crc : nullptr);
  if (!s.ok()) return Error("tensor '" + info.name + "': " + s.message());
  if (stored && crc != *stored) return ChecksumError(info, *stored, crc);
  if (crc_out) *crc_out = crc;
  return Status::Ok();
}

Status SafetensorsFile::CheckPieces(const std::string& name,
                                    std::vector<TensorPiece> pieces) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return Error("missing tensor '" + name + "'");
  const std::optional<uint32_t> stored = StoredCrc(*info);
  if (!stored || info->dtype != TensorDType::kF32) return Status::Ok();
  std::sort(pieces.begin(), pieces.end(), [](const TensorPiece& a, const TensorPiece& b) {
    return a.elem_offset < b.elem_offset;
  });
  uint32_t crc = 0;  // of elements [0, covered)
  int64_t covered = 0;
  for (const TensorPiece& p : pieces) {
    if (p.count == 0) continue;
    if (p.elem_offset != covered || p.count < 0) return Status::Ok();  // a gap or an overlap
    crc = Crc32cCombine(crc, p.crc32c, static_cast<uint64_t>(p.count) * 4);
    covered += p.count;
  }
  if (covered != info->numel) return Status::Ok();
  if (crc != *stored) return ChecksumError(*info, *stored, crc);
  return Status::Ok();
}

Status SafetensorsFile::ReadRaw(const TensorInfo& info, void* dst) const {
  return ReadBytes(info, 0, info.byte_size(), dst);
}

Status SafetensorsFile::ReadF32(const std::string& name, const std::vector<int64_t>& expected_shape,
                                float* dst) const {
  MINGPT_ASSIGN_OR_RETURN(const TensorInfo* info, FindChecked(name, expected_shape));
  if (info->dtype != TensorDType::kF32) {
    return Error("tensor '" + name + "' has dtype " + DTypeName(info->dtype) + ", expected F32");
  }
  return ReadRaw(*info, dst);
}

Status SafetensorsFile::ReadF32Range(const std::string& name, int64_t elem_offset,
                                     int64_t count, float* dst, uint32_t* crc) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return Error("missing tensor '" + name + "'");
  if (info->dtype != TensorDType::kF32) {
    return Error("tensor '" + name + "' has dtype " + DTypeName(info->dtype) + ", expected F32");
  }
  if (elem_offset < 0 || count < 0 || elem_offset > info->numel ||
      count > info->numel - elem_offset) {
    return Error("tensor '" + name + "': elements [" + std::to_string(elem_offset) + ", +" +
                 std::to_string(count) + ") lie outside its " + std::to_string(info->numel));
  }
  if (crc) *crc = 0;  // of no bytes
  if (count == 0 && info->numel > 0) return Status::Ok();
  return ReadBytes(*info, static_cast<uint64_t>(elem_offset) * 4, static_cast<uint64_t>(count) * 4,
                   dst, crc);
}

Status SafetensorsFile::ReadI32(const std::string& name, const std::vector<int64_t>& expected_shape,
                                int32_t* dst) const {
  MINGPT_ASSIGN_OR_RETURN(const TensorInfo* info, FindChecked(name, expected_shape));
  if (info->dtype == TensorDType::kI32) return ReadRaw(*info, dst);
  if (info->dtype != TensorDType::kI64) {
    return Error("tensor '" + name + "' has dtype " + DTypeName(info->dtype) +
                 ", expected I32 or I64");
  }
  if (fd_ < 0) return Error("file is not open");
  // Convert in chunks so a large tensor needs no second full-size buffer.
  // The whole tensor is read even past a value that does not fit, so that a
  // damaged file is named as such rather than by the value the damage made.
  constexpr int64_t kChunk = 1 << 16;
  std::vector<int64_t> buf(static_cast<size_t>(std::min(info->numel, kChunk)));
  const std::optional<uint32_t> stored = StoredCrc(*info);
  uint32_t crc = 0;
  Status misfit = Status::Ok();
  for (int64_t start = 0; start < info->numel; start += kChunk) {
    const int64_t n = std::min(kChunk, info->numel - start);
    Status s = PreadAll(fd_, buf.data(), static_cast<uint64_t>(n) * 8,
                        data_start_ + info->begin + static_cast<uint64_t>(start) * 8);
    if (!s.ok()) return Error("tensor '" + name + "': " + s.message());
    if (stored) crc = Crc32c(buf.data(), static_cast<size_t>(n) * 8, crc);
    for (int64_t i = 0; i < n && misfit.ok(); ++i) {
      const int64_t v = buf[static_cast<size_t>(i)];
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        misfit = Error("tensor '" + name + "' element " + std::to_string(start + i) + " = " +
                       std::to_string(v) + " does not fit in int32");
      }
      dst[start + i] = static_cast<int32_t>(v);
    }
  }
  if (stored && crc != *stored) return ChecksumError(*info, *stored, crc);
  return misfit;
}

}  // namespace mingpt
