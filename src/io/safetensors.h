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
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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

inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Writes `tensors` (names unique, not "__metadata__") and `metadata` to
// `path`, streaming the data, via WriteFileDurably's temp-file + fsync +
// rename: after OK the file is complete on disk; a crash leaves the old file.
Status WriteSafetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// One validated header entry. Offsets are relative to the data section.
struct TensorInfo {
  std::string name;
  TensorDType dtype = TensorDType::kF32;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  uint64_t begin = 0;
  uint64_t end = 0;
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
  // end - begin == numel * dtype size; "__metadata__" maps strings to strings.
  static StatusOr<SafetensorsFile> Open(const std::string& path);

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
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Reads tensor `name` into dst (numel floats). Errors, each naming the file:
  // missing tensor, shape differs from expected_shape, dtype is not F32,
  // short read (file truncated after Open).
  Status ReadF32(const std::string& name, const std::vector<int64_t>& expected_shape,
                 float* dst) const;
  // Reads elements [elem_offset, elem_offset + count) of tensor `name`, in
  // its row-major order, into dst (count floats); count 0 reads nothing.
  // Errors, each naming the file: missing tensor, dtype is not F32, the
  // range is negative or does not lie inside the tensor's numel elements,
  // short read (file truncated after Open).
  Status ReadF32Range(const std::string& name, int64_t elem_offset, int64_t count,
                      float* dst) const;
  // As ReadF32 for token ids: accepts I32 storage, or I64 storage whose
  // values all fit in int32 (PyTorch's default integer dtype is int64).
  Status ReadI32(const std::string& name, const std::vector<int64_t>& expected_shape,
                 int32_t* dst) const;
  // Reads the raw bytes of a tensor of any dtype (info.byte_size() bytes).
  Status ReadRaw(const TensorInfo& info, void* dst) const;

 private:
  SafetensorsFile() = default;
  Status Error(const std::string& message) const;
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
