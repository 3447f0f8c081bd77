// The safetensors format (https://github.com/huggingface/safetensors), as
// PyTorch's `safetensors.torch.save_file` writes it:
//
//   [8 bytes]  N, unsigned little-endian
//   [N bytes]  JSON object, padded with spaces to make N a multiple of 8:
//                {"<name>": {"dtype": "F32", "shape": [3, 4],
//                            "data_offsets": [begin, end]}, ...,
//                 "__metadata__": {"<key>": "<value>", ...}}   (optional)
//   [rest]     the data section; a tensor's bytes are data[begin, end),
//              row-major, little-endian.
//
// WriteSafetensors lays tensors back to back in the given order. The reader
// validates the whole header in Open(), so a corrupt or hostile file yields
// one error line naming the file, never a crash or an out-of-range read.
// Data is read with pread() straight into the caller's buffer, a whole
// tensor or (ReadF32Range) any element range of one; nothing is mapped, and
// SafetensorsFile holds only an open file descriptor.
//
// Checksums. A header can be checked but data that stays a finite number
// when a bit flips cannot, so WriteSafetensors records each tensor's CRC32C
// (io/crc32c.h) of its data bytes in __metadata__, one key per tensor:
//   "crc32c.<tensor name>": "e3069283"     (8 lowercase hex digits)
// Metadata values are strings, as the format requires, so other readers
// (PyTorch's) load the file as before and ignore the keys. The checksums
// are taken as the data goes out (a tensor given by `fill` has none before
// it is made), so the header is written with placeholders of the same width
// and overwritten in place before the file is committed. The reader takes
// the keys out of metadata() at Open() (a value that is not 8 hex digits,
// or a key naming no tensor of the file, is an Open() error) and checks the
// bytes of every whole-tensor read (ReadF32, ReadI32, ReadRaw, and
// ReadF32Range of all the elements) against them: a mismatch is an error
// naming the file and the tensor. A read of part of a tensor (ReadF32Range
// of fewer elements, as a rank reads its slice when resuming at another
// world size) cannot be checked alone; it returns its piece's CRC32C, and
// CheckPieces checks the pieces that together cover the tensor (read by
// several ranks: the CRC32Cs of pieces combine into the whole's without
// their bytes, Crc32cCombine). Files without the keys (older checkpoints,
// files written by PyTorch) read as before, unchecked.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace mingpt {

// Element types of the format. Named TensorDType (not DType) so that it never
// collides with core's compute dtype.
enum class TensorDType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

const char* DTypeName(TensorDType dtype);  // "F32", "I64", "BF16", ...
int64_t DTypeSize(TensorDType dtype);      // bytes per element
std::optional<TensorDType> ParseDType(std::string_view name);

// "[3, 4]"; "[]" for a scalar.
std::string ShapeString(const std::vector<int64_t>& shape);

// A tensor to write: `data` points at numel(shape) * DTypeSize(dtype) bytes in
// host (little-endian) order and must stay valid during the write. A 0-d
// shape {} is a scalar (one element); a shape with a 0 holds no bytes and
// `data` may be null.
struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  TensorDType dtype = TensorDType::kF32;
  const void* data = nullptr;
  // Without `data`: writes the tensor's bytes into dst (a buffer of its
  // size) when the writer reaches it, so that a file can be written from
  // state that is never whole in memory (one tensor at a time).
  std::function<void(void* dst)> fill = nullptr;
};

// Parses `text` as a JSON document more strictly than nlohmann alone: a key
// twice in one object (nlohmann keeps the last) and a NUL byte (nlohmann
// stops reading there) are errors, as is anything not valid JSON. The error
// is one line starting with `what`: "<what> is not valid JSON", "<what> has
// duplicate key 'k'", "<what> has a NUL byte at offset N". For the
// safetensors header and checkpoints' meta.json.
StatusOr<nlohmann::json> ParseJsonStrict(const std::string& text, const std::string& what);

inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;
// The __metadata__ keys of the tensors' checksums: the prefix + the name.
inline constexpr char kCrc32cMetadataPrefix[] = "crc32c.";

// Writes `tensors` (names unique, not "__metadata__") and `metadata` to
// `path`, streaming the data, via WriteFileDurably's temp-file + fsync +
// rename: after OK the file is complete on disk; a crash leaves the old file.
// Adds each tensor's checksum to the metadata; a caller's key starting with
// kCrc32cMetadataPrefix is refused.
Status WriteSafetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// A piece of a tensor as ReadF32Range read it: its elements, and the CRC32C
// of their bytes.
struct TensorPiece {
  int64_t elem_offset = 0;
  int64_t count = 0;
  uint32_t crc32c = 0;
};

// One validated header entry. Offsets are relative to the data section.
struct TensorInfo {
  std::string name;
  TensorDType dtype = TensorDType::kF32;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  uint64_t begin = 0;
  uint64_t end = 0;
  // The CRC32C of the data bytes the file records ("crc32c.<name>"); none in
  // files written by other programs.
  std::optional<uint32_t> crc32c;
  uint64_t byte_size() const { return end - begin; }
};

// An open, fully validated safetensors file. Move-only (owns a descriptor).
// Reads are const and safe to issue from several threads at once.
class SafetensorsFile {
 public:
  // Validates: size >= 8; header length <= kMaxSafetensorsHeaderBytes and
  // <= size - 8; header is a JSON object without duplicate keys; each entry
  // has a known dtype, a shape of integers >= 0 whose byte size does not
  // overflow, data_offsets with begin <= end <= data section size and
  // end - begin == numel * dtype size; "__metadata__" maps strings to strings;
  // each "crc32c.<name>" in it holds 8 hex digits and names a tensor here.
  static StatusOr<SafetensorsFile> Open(const std::string& path);
  // Open of `name` relative to the open directory `dir_fd` (openat(2));
  // errors and path() name `path`, the file as the user knows it.
  // `open_flags` are added to openat's (O_NOFOLLOW: a symlink is refused).
  static StatusOr<SafetensorsFile> OpenAt(int dir_fd, const std::string& name,
                                          const std::string& path, int open_flags = 0);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  // Tensors in data-offset order (the write order for files we wrote).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  std::vector<std::string> names() const;
  const TensorInfo* Find(const std::string& name) const;  // null if absent
  // The writer's metadata, without the checksums (those are in TensorInfo).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Every read of a whole tensor below also fails, naming the file and the
  // tensor, if the file records a checksum for it that the bytes read do
  // not match ("... fails its checksum ...: the file is damaged").

  // Reads tensor `name` into dst (numel floats). Errors, each naming the file:
  // missing tensor, shape differs from expected_shape, dtype is not F32,
  // short read (file truncated after Open), checksum mismatch.
  Status ReadF32(const std::string& name, const std::vector<int64_t>& expected_shape,
                 float* dst) const;
  // Reads elements [elem_offset, elem_offset + count) of tensor `name`, in
  // its row-major order, into dst (count floats); count 0 reads nothing.
  // Errors, each naming the file: missing tensor, dtype is not F32, the
  // range is negative or does not lie inside the tensor's numel elements,
  // short read (file truncated after Open), and a checksum mismatch when the
  // range is the whole tensor; a smaller range is not checked here, but
  // `crc`, when not null, receives the CRC32C of the bytes read, for
  // CheckPieces.
  Status ReadF32Range(const std::string& name, int64_t elem_offset, int64_t count, float* dst,
                      uint32_t* crc = nullptr) const;
  // Checks pieces of F32 tensor `name`, read apart (by ReadF32Range, in
  // other processes too), against the tensor's checksum: pieces that cover
  // the tensor once, in any order, combine into its checksum, and a
  // mismatch is the error a whole read gives. Pieces that leave a gap or
  // overlap, and a file without checksums, check nothing (Ok).
  Status CheckPieces(const std::string& name, std::vector<TensorPiece> pieces) const;
  // As ReadF32 for token ids: accepts I32 storage, or I64 storage whose
  // values all fit in int32 (PyTorch's default integer dtype is int64). A
  // checksum mismatch is reported before a value that does not fit.
  Status ReadI32(const std::string& name, const std::vector<int64_t>& expected_shape,
                 int32_t* dst) const;
  // Reads the raw bytes of a tensor of any dtype (info.byte_size() bytes),
  // checked against the checksum of this file's tensor of info's name and
  // offsets.
  Status ReadRaw(const TensorInfo& info, void* dst) const;

 private:
  SafetensorsFile() = default;
  Status Error(const std::string& message) const;
  // The checksum this file records for its tensor of info's name and
  // offsets; none in a file without checksums.
  std::optional<uint32_t> StoredCrc(const TensorInfo& info) const;
  Status ChecksumError(const TensorInfo& info, uint32_t stored, uint32_t read) const;
  // Reads bytes [begin, begin + size) of a tensor's data into dst, checked
  // against its checksum when they are the whole tensor; `crc`, when not
  // null, receives their CRC32C.
  Status ReadBytes(const TensorInfo& info, uint64_t begin, uint64_t size, void* dst,
                   uint32_t* crc = nullptr) const;
  StatusOr<const TensorInfo*> FindChecked(const std::string& name,
                                          const std::vector<int64_t>& expected_shape) const;

  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;  // absolute file offset of the data section
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

}  // namespace mingpt
