// Tests of io/safetensors.h: round trips, the exact byte layout, a file in
// the form other writers produce, and every kind of corrupt file, each of
// which must give one error naming the file and the problem, never a crash.
#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/scoped_temp_dir.h"
#include "io/crc32c.h"
#include "io/file.h"

namespace mingpt {
namespace {

namespace fs = std::filesystem;


void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good());
}

std::string U64Le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file from a raw header string and `data_bytes` zero bytes.
std::string FileBytes(const std::string& header, size_t data_bytes) {
  return U64Le(header.size()) + header + std::string(data_bytes, '\0');
}

uint64_t ReadU64Le(const std::string& s) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[i]);
  return v;
}

// The checksum of `n` bytes as the header records it.
std::string CrcHex(const void* data, size_t n) {
  char hex[9];
  std::snprintf(hex, sizeof(hex), "%08x", Crc32c(data, n));
  return hex;
}

// The parsed header of a safetensors file.
nlohmann::json ReadHeader(const std::string& path) {
  const std::string bytes = ReadFile(path).value();
  return nlohmann::json::parse(bytes.substr(8, ReadU64Le(bytes)), nullptr, false);
}

// Flips bit `bit` of byte `offset` of tensor `name`'s data in the file.
void FlipDataBit(const std::string& path, const std::string& name, uint64_t offset, int bit) {
  std::string bytes = ReadFile(path).value();
  const uint64_t n = ReadU64Le(bytes);
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  const uint64_t begin = header[name]["data_offsets"][0].get<uint64_t>();
  bytes[8 + n + begin + offset] ^= static_cast<char>(1 << bit);
  WriteBytes(path, bytes);
}

// Open must fail with a message naming the file and containing `problem`.
void ExpectOpenFails(const std::string& path, const std::string& problem) {
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok()) << "expected an error about: " << problem;
  const std::string msg = f.status().message();
  EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
  EXPECT_NE(msg.find(problem), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  // Writes `header` (+ zero data) to a file and expects Open to fail.
  void ExpectHeaderFails(const std::string& header, size_t data_bytes,
                         const std::string& problem) {
    const std::string path = tmp_.Join("bad.safetensors");
    WriteBytes(path, FileBytes(header, data_bytes));
    ExpectOpenFails(path, problem);
  }
  // Writes a file with one tensor entry and expects Open to fail.
  void ExpectEntryFails(const std::string& entry, size_t data_bytes, const std::string& problem) {
    ExpectHeaderFails("{\"x\":" + entry + "}", data_bytes, problem);
  }

  ScopedTempDir tmp_;
};

TEST_F(SafetensorsTest, RoundTripAllKinds) {
  std::vector<float> matrix(2 * 3);
  for (size_t i = 0; i < matrix.size(); ++i) matrix[i] = 0.5f * static_cast<float>(i) - 1.0f;
  const float scalar = 3.25f;
  std::vector<float> vec = {1e-30f, -0.0f, 7.0f, 1e30f, -2.5f, 0.125f, 42.0f};
  std::vector<int32_t> ids32 = {0, -1, 2147483647, -2147483647 - 1};
  std::vector<int64_t> ids64 = {1, -2, 3, 1LL << 40};
  const std::vector<TensorRef> tensors = {
      {"blocks.0.attn.key.weight", {2, 3}, TensorDType::kF32, matrix.data()},
      {"scalar", {}, TensorDType::kF32, &scalar},
      {"empty", {0, 5}, TensorDType::kF32, nullptr},
      {"vec", {7}, TensorDType::kF32, vec.data()},
      {"ids32", {4}, TensorDType::kI32, ids32.data()},
      {"ids64", {2, 2}, TensorDType::kI64, ids64.data()},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "12"}};
  const std::string path = tmp_.Join("a.safetensors");
  Status s = WriteSafetensors(path, tensors, metadata);
  ASSERT_TRUE(s.ok()) << s.message();

  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->metadata(), metadata);
  // names() in write order, which is data-offset order ("empty" occupies
  // [28, 28), before "vec" at [28, 56)).
  EXPECT_EQ(f->names(), (std::vector<std::string>{"blocks.0.attn.key.weight", "scalar", "empty",
                                                  "vec", "ids32", "ids64"}));
  const TensorInfo* info = f->Find("ids64");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dtype, TensorDType::kI64);
  EXPECT_EQ(info->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(info->numel, 4);
  EXPECT_EQ(info->byte_size(), 32u);
  EXPECT_EQ(f->Find("nope"), nullptr);
  EXPECT_EQ(f->Find("scalar")->numel, 1);
  EXPECT_EQ(f->Find("empty")->numel, 0);

  std::vector<float> m2(6, -99.0f);
  ASSERT_TRUE(f->ReadF32("blocks.0.attn.key.weight", {2, 3}, m2.data()).ok());
  EXPECT_EQ(m2, matrix);
  float scalar2 = 0;
  ASSERT_TRUE(f->ReadF32("scalar", {}, &scalar2).ok());
  EXPECT_EQ(scalar2, scalar);
  ASSERT_TRUE(f->ReadF32("empty", {0, 5}, nullptr).ok());
  std::vector<float> v2(7);
  ASSERT_TRUE(f->ReadF32("vec", {7}, v2.data()).ok());
  EXPECT_EQ(std::memcmp(v2.data(), vec.data(), 7 * sizeof(float)), 0);  // bitwise, incl. -0
  std::vector<int32_t> i2(4);
  ASSERT_TRUE(f->ReadI32("ids32", {4}, i2.data()).ok());
  EXPECT_EQ(i2, ids32);
  std::vector<int64_t> i3(4);
  ASSERT_TRUE(f->ReadRaw(*info, i3.data()).ok());
  EXPECT_EQ(i3, ids64);
  // Every tensor carries its checksum (metadata() above holds only ours).
  EXPECT_EQ(f->Find("vec")->crc32c, Crc32c(vec.data(), vec.size() * 4));
  EXPECT_EQ(f->Find("ids64")->crc32c, Crc32c(ids64.data(), ids64.size() * 8));
  EXPECT_EQ(f->Find("empty")->crc32c, 0u);
}

TEST_F(SafetensorsTest, ReadI32AcceptsI64ThatFits) {
  std::vector<int64_t> ids(200000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i % 65) - 3;
  const std::string path = tmp_.Join("ids.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"ids", {400, 500}, TensorDType::kI64, ids.data()}}).ok());
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  std::vector<int32_t> out(ids.size());
  ASSERT_TRUE(f->ReadI32("ids", {400, 500}, out.data()).ok());
  for (size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(out[i], ids[i]) << i;
}

TEST_F(SafetensorsTest, ReadI32RejectsI64OutOfRange) {
  const std::vector<int64_t> ids = {1, 2, 1LL << 31};
  const std::string path = tmp_.Join("ids.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"ids", {3}, TensorDType::kI64, ids.data()}}).ok());
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  std::vector<int32_t> out(3);
  Status s = f->ReadI32("ids", {3}, out.data());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(),
            path + ": tensor 'ids' element 2 = 2147483648 does not fit in int32");
}

TEST_F(SafetensorsTest, ByteLayout) {
  std::vector<float> a(5, 1.5f);
  std::vector<int32_t> b = {7, 8, 9};
  const float c = -4.0f;
  const std::string path = tmp_.Join("layout.safetensors");
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"z_first", {5}, TensorDType::kF32, a.data()},
                                {"a_second", {3, 1}, TensorDType::kI32, b.data()},
                                {"m_third", {}, TensorDType::kF32, &c}},
                               {{"k", "v"}})
                  .ok());
  const std::string bytes = ReadFile(path).value();
  ASSERT_GE(bytes.size(), 8u);
  const uint64_t n = ReadU64Le(bytes);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_LE(8 + n, bytes.size());
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  const size_t last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - last - 1, 8u);  // padding only to the next multiple of 8
  nlohmann::json j = nlohmann::json::parse(header, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  // The caller's metadata, then one fixed-width checksum per tensor.
  EXPECT_EQ(j["__metadata__"], nlohmann::json({{"k", "v"},
                                               {"crc32c.z_first", CrcHex(a.data(), 20)},
                                               {"crc32c.a_second", CrcHex(b.data(), 12)},
                                               {"crc32c.m_third", CrcHex(&c, 4)}}));
  EXPECT_EQ(j["__metadata__"]["crc32c.m_third"], "702997fa");  // -4.0f: 00 00 80 c0
  // Back to back in write order, from 0 to the end of the file.
  EXPECT_EQ(j["z_first"]["data_offsets"], nlohmann::json({0, 20}));
  EXPECT_EQ(j["a_second"]["data_offsets"], nlohmann::json({20, 32}));
  EXPECT_EQ(j["m_third"]["data_offsets"], nlohmann::json({32, 36}));
  EXPECT_EQ(j["a_second"]["dtype"], "I32");
  EXPECT_EQ(j["a_second"]["shape"], nlohmann::json({3, 1}));
  EXPECT_EQ(j["m_third"]["shape"], nlohmann::json::array());
  EXPECT_EQ(bytes.size(), 8 + n + 36);
  const char* data = bytes.data() + 8 + n;
  EXPECT_EQ(std::memcmp(data, a.data(), 20), 0);
  EXPECT_EQ(std::memcmp(data + 20, b.data(), 12), 0);
  EXPECT_EQ(std::memcmp(data + 32, &c, 4), 0);
}

// A file as another writer may produce it: unpadded header, keys in any
// order, metadata last, explicit little-endian bytes.
TEST_F(SafetensorsTest, ReadsHandMadeFile) {
  const std::string header =
      R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("w":{"dtype":"F32","shape":[1],"data_offsets":[16,20]},"__metadata__":{"foo":"bar"}})";
  std::string data;
  for (int v : {1, 2, 3, -4}) {
    const uint32_t u = static_cast<uint32_t>(v);
    for (int i = 0; i < 4; ++i) data += static_cast<char>((u >> (8 * i)) & 0xff);
  }
  data += std::string("\x00\x00\xc0\x3f", 4);  // 1.5f
  const std::string path = tmp_.Join("hand.safetensors");
  WriteBytes(path, U64Le(header.size()) + header + data);
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ(f->metadata().at("foo"), "bar");
  std::vector<int32_t> ids(4);
  ASSERT_TRUE(f->ReadI32("test", {2, 2}, ids.data()).ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 2, 3, -4}));
  float w = 0;
  ASSERT_TRUE(f->ReadF32("w", {1}, &w).ok());
  EXPECT_EQ(w, 1.5f);
}

TEST_F(SafetensorsTest, ReadErrorsAreClear) {
  std::vector<float> x(12, 1.0f);
  std::vector<uint16_t> half(4, 0x3c00);
  const std::string path = tmp_.Join("m.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", {3, 4}, TensorDType::kF32, x.data()},
                                      {"h", {4}, TensorDType::kF16, half.data()}})
                  .ok());
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  std::vector<float> dst(16);
  Status s = f->ReadF32("blocks.0.attn.key.weight", {4, 4}, dst.data());
  EXPECT_EQ(s.message(), path + ": missing tensor 'blocks.0.attn.key.weight'");
  s = f->ReadF32("x", {4, 4}, dst.data());
  EXPECT_EQ(s.message(), path + ": tensor 'x' has shape [3, 4], expected [4, 4]");
  s = f->ReadF32("x", {12}, dst.data());
  EXPECT_EQ(s.message(), path + ": tensor 'x' has shape [3, 4], expected [12]");
  s = f->ReadF32("h", {4}, dst.data());
  EXPECT_EQ(s.message(), path + ": tensor 'h' has dtype F16, expected F32");
  std::vector<int32_t> ids(12);
  s = f->ReadI32("x", {3, 4}, ids.data());
  EXPECT_EQ(s.message(), path + ": tensor 'x' has dtype F32, expected I32 or I64");
  EXPECT_TRUE(f->ReadF32("x", {3, 4}, dst.data()).ok());
}

TEST_F(SafetensorsTest, FileTruncatedAfterOpen) {
  std::vector<float> x(1000, 2.0f);
  const std::string path = tmp_.Join("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", {1000}, TensorDType::kF32, x.data()}}).ok());
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(fs::file_size(path) - 100)), 0);
  std::vector<float> dst(1000);
  Status s = f->ReadF32("x", {1000}, dst.data());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), path + ": tensor 'x': unexpected end of file (truncated?)");
}

// ReadF32Range reads any element range of a tensor, in row-major order.
TEST_F(SafetensorsTest, ReadF32RangeReadsEveryRange) {
  std::vector<float> before(5, -1.0f), x(3 * 7);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.25f * static_cast<float>(i) + 1.0f;
  const std::string path = tmp_.Join("r.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"before", {5}, TensorDType::kF32, before.data()},
                                      {"x", {3, 7}, TensorDType::kF32, x.data()}})
                  .ok());
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  const int64_t n = static_cast<int64_t>(x.size());
  for (int64_t begin = 0; begin <= n; ++begin) {
    for (int64_t count = 0; begin + count <= n; ++count) {
      std::vector<float> dst(static_cast<size_t>(count) + 1, 42.0f);  // +1: a guard element
      const Status s = f->ReadF32Range("x", begin, count, dst.data());
      ASSERT_TRUE(s.ok()) << s.message();
      for (int64_t i = 0; i < count; ++i) {
        ASSERT_EQ(dst[static_cast<size_t>(i)], x[static_cast<size_t>(begin + i)])
            << "range [" << begin << ", +" << count << ") element " << i;
      }
      ASSERT_EQ(dst.back(), 42.0f) << "wrote past the range [" << begin << ", +" << count << ")";
    }
  }
}

TEST_F(SafetensorsTest, ReadF32RangeErrorsAreClear) {
  std::vector<float> x(12, 1.0f);
  std::vector<uint16_t> half(4, 0x3c00);
  const std::string path = tmp_.Join("re.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", {3, 4}, TensorDType::kF32, x.data()},
                                      {"h", {4}, TensorDType::kF16, half.data()},
                                      {"empty", {0}, TensorDType::kF32, nullptr}})
                  .ok());
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  std::vector<float> dst(16);
  auto error = [&](const std::string& name, int64_t offset, int64_t count) {
    const Status s = f->ReadF32Range(name, offset, count, dst.data());
    return s.ok() ? std::string("OK") : s.message();
  };
  EXPECT_EQ(error("nope", 0, 1), path + ": missing tensor 'nope'");
  EXPECT_EQ(error("h", 0, 1), path + ": tensor 'h' has dtype F16, expected F32");
  EXPECT_EQ(error("x", 0, 13), path + ": tensor 'x': elements [0, +13) lie outside its 12");
  EXPECT_EQ(error("x", 12, 1), path + ": tensor 'x': elements [12, +1) lie outside its 12");
  EXPECT_EQ(error("x", 13, 0), path + ": tensor 'x': elements [13, +0) lie outside its 12");
  EXPECT_EQ(error("x", -1, 2), path + ": tensor 'x': elements [-1, +2) lie outside its 12");
  EXPECT_EQ(error("x", 2, -1), path + ": tensor 'x': elements [2, +-1) lie outside its 12");
  const int64_t big = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(error("x", 5, big), path + ": tensor 'x': elements [5, +" + std::to_string(big) +
                                    ") lie outside its 12");
  EXPECT_EQ(error("x", big, big), path + ": tensor 'x': elements [" + std::to_string(big) +
                                      ", +" + std::to_string(big) + ") lie outside its 12");
  EXPECT_EQ(error("x", 12, 0), "OK");
  EXPECT_EQ(error("empty", 0, 0), "OK");
  EXPECT_EQ(error("empty", 0, 1), path + ": tensor 'empty': elements [0, +1) lie outside its 0");
}

TEST_F(SafetensorsTest, ReadF32RangeOfFileTruncatedAfterOpen) {
  std::vector<float> x(1000, 2.0f);
  const std::string path = tmp_.Join("rt.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", {1000}, TensorDType::kF32, x.data()}}).ok());
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(fs::file_size(path) - 100)), 0);
  std::vector<float> dst(1000);
  EXPECT_TRUE(f->ReadF32Range("x", 0, 900, dst.data()).ok());  // still on disk
  Status s = f->ReadF32Range("x", 900, 100, dst.data());
  EXPECT_EQ(s.message(), path + ": tensor 'x': unexpected end of file (truncated?)");
}

TEST_F(SafetensorsTest, MovedFileStillReads) {
  const float v = 9.0f;
  const std::string path = tmp_.Join("mv.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"v", {}, TensorDType::kF32, &v}}).ok());
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  SafetensorsFile a = std::move(f).value();
  SafetensorsFile b = std::move(a);
  float out = 0;
  ASSERT_TRUE(b.ReadF32("v", {}, &out).ok());
  EXPECT_EQ(out, 9.0f);
}

TEST_F(SafetensorsTest, WriteRejectsBadInput) {
  const float v = 1.0f;
  const std::string path = tmp_.Join("w.safetensors");
  Status s = WriteSafetensors(path, {{"a", {}, TensorDType::kF32, &v}, {"a", {}, TensorDType::kF32, &v}});
  EXPECT_EQ(s.message(), "cannot write '" + path + "': duplicate tensor name 'a'");
  s = WriteSafetensors(path, {{"__metadata__", {}, TensorDType::kF32, &v}});
  EXPECT_FALSE(s.ok());
  s = WriteSafetensors(path, {{"neg", {-1}, TensorDType::kF32, &v}});
  EXPECT_EQ(s.message(), "cannot write '" + path + "': tensor 'neg' has invalid shape [-1]");
  s = WriteSafetensors(path, {{"huge", {1LL << 40, 1LL << 40}, TensorDType::kF32, &v}});
  EXPECT_FALSE(s.ok());
  s = WriteSafetensors(path, {{"null", {2}, TensorDType::kF32, nullptr}});
  EXPECT_EQ(s.message(), "cannot write '" + path + "': tensor 'null' has no data");
  EXPECT_FALSE(fs::exists(path));
  s = WriteSafetensors(tmp_.Join("no/dir/x.safetensors"), {{"v", {}, TensorDType::kF32, &v}});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(tmp_.Join("no/dir/x.safetensors")), std::string::npos) << s.message();
}

TEST_F(SafetensorsTest, OpenMissingOrDirectory) {
  ExpectOpenFails(tmp_.Join("missing.safetensors"), "file does not exist");
  fs::create_directory(tmp_.Join("d"));
  ExpectOpenFails(tmp_.Join("d"), "is a directory");
}

TEST_F(SafetensorsTest, FileShorterThan8Bytes) {
  const std::string path = tmp_.Join("short.safetensors");
  WriteBytes(path, "");
  ExpectOpenFails(path, "file is 0 bytes, too short");
  WriteBytes(path, std::string("\x05\x00\x00\x00\x00", 5));
  ExpectOpenFails(path, "file is 5 bytes, too short");
}

TEST_F(SafetensorsTest, HeaderLengthLargerThanFile) {
  const std::string path = tmp_.Join("h.safetensors");
  WriteBytes(path, U64Le(100) + "{}");
  ExpectOpenFails(path, "header length 100 exceeds the file size (10 bytes");
  WriteBytes(path, U64Le(1ULL << 63) + "{}");
  ExpectOpenFails(path, "header length 9223372036854775808 exceeds the limit");
  WriteBytes(path, U64Le(~0ULL) + "{}");
  ExpectOpenFails(path, "header length 18446744073709551615 exceeds the limit");
  WriteBytes(path, U64Le(kMaxSafetensorsHeaderBytes + 1) + "{}");
  ExpectOpenFails(path, "exceeds the limit of 100000000 bytes");
}

TEST_F(SafetensorsTest, HeaderNotJsonObject) {
  ExpectHeaderFails("{not json", 0, "header is not valid JSON");
  ExpectHeaderFails("", 0, "header is not valid JSON");
  ExpectHeaderFails("{\"a\":1} trailing", 0, "header is not valid JSON");
  ExpectHeaderFails(std::string("{\"a\xff\":{}}"), 0, "header is not valid JSON");  // bad UTF-8
  ExpectHeaderFails("[1, 2]", 0, "header is not a JSON object");
  ExpectHeaderFails("\"str\"  ", 0, "header is not a JSON object");
  ExpectHeaderFails("{\"__metadata__\": [1]}", 0, "__metadata__ is not a JSON object");
  ExpectHeaderFails("{\"__metadata__\": {\"k\": 1}}", 0,
                    "__metadata__ value for 'k' is not a string");
}

TEST_F(SafetensorsTest, DeeplyNestedJsonDoesNotCrash) {
  const int depth = 50000;
  ExpectHeaderFails(std::string(depth, '[') + std::string(depth, ']'), 0,
                    "header is not a JSON object");
  std::string nested;
  for (int i = 0; i < depth; ++i) nested += "{\"a\":";
  nested += "1" + std::string(depth, '}');
  ExpectHeaderFails(nested, 0, "tensor 'a': missing string 'dtype'");
  ExpectEntryFails(R"({"dtype":"F32","shape":)" + std::string(depth, '[') + std::string(depth, ']') +
                       R"(,"data_offsets":[0,4]})",
                   4, "shape dimension 0 is an array, not an integer >= 0");
  ExpectEntryFails(R"({"dtype":"F32","shape":[1],"data_offsets":[)" + std::string(depth, '[') +
                       std::string(depth, ']') + ",4]}",
                   4, "data_offsets element 0 is an array, not an integer >= 0");
}

TEST_F(SafetensorsTest, DuplicateKeys) {
  ExpectHeaderFails(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                    R"( "x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                    8, "header has duplicate key 'x'");
  ExpectEntryFails(R"({"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]})", 4,
                   "header has duplicate key 'dtype'");
}

// nlohmann alone stops reading at a NUL: the rest of the header, whatever it
// says, would go unread.
TEST_F(SafetensorsTest, NulByteInHeader) {
  ExpectHeaderFails(std::string("{}\0{\"x\": 1}", 11), 0, "header has a NUL byte at offset 2");
  ExpectHeaderFails(std::string("{}  \0   ", 8), 0, "header has a NUL byte at offset 4");
}

TEST_F(SafetensorsTest, BadEntries) {
  ExpectEntryFails("[1]", 0, "tensor 'x': entry is not a JSON object");
  ExpectEntryFails(R"({"shape":[1],"data_offsets":[0,4]})", 4, "tensor 'x': missing string 'dtype'");
  ExpectEntryFails(R"({"dtype":"Q4","shape":[1],"data_offsets":[0,4]})", 4,
                   "tensor 'x': unknown dtype 'Q4'");
  ExpectEntryFails(R"({"dtype":"f32","shape":[1],"data_offsets":[0,4]})", 4,
                   "tensor 'x': unknown dtype 'f32'");
  ExpectEntryFails(R"({"dtype":"F32","data_offsets":[0,4]})", 4, "tensor 'x': missing array 'shape'");
  ExpectEntryFails(R"({"dtype":"F32","shape":[-1,2],"data_offsets":[0,4]})", 4,
                   "tensor 'x': shape dimension 0 is -1, not an integer >= 0");
  ExpectEntryFails(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,4]})", 4,
                   "shape dimension 0 is 2.5, not an integer >= 0");
  ExpectEntryFails(R"({"dtype":"F32","shape":[1,"2"],"data_offsets":[0,4]})", 4,
                   "shape dimension 1 is \"2\", not an integer >= 0");
  ExpectEntryFails(R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]})", 4,
                   "shape dimension 0 is 18446744073709551615, not an integer >= 0");
  ExpectEntryFails(R"({"dtype":"F32","shape":[1]})", 4, "tensor 'x': missing 'data_offsets'");
  ExpectEntryFails(R"({"dtype":"F32","shape":[1],"data_offsets":[0]})", 4, "missing 'data_offsets'");
  ExpectEntryFails(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})", 4,
                   "data_offsets element 0 is -4, not an integer >= 0");
}

TEST_F(SafetensorsTest, DataOffsetsOutOfRange) {
  ExpectEntryFails(R"({"dtype":"F32","shape":[250],"data_offsets":[0,1000]})", 16,
                   "tensor 'x': data_offsets [0, 1000] lie outside the data section (16 bytes");
  ExpectEntryFails(R"({"dtype":"F32","shape":[0],"data_offsets":[17,17]})", 16,
                   "data_offsets [17, 17] lie outside the data section");
  ExpectEntryFails(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})", 16,
                   "data_offsets [8, 4] lie outside the data section");
  ExpectEntryFails(R"({"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]})", 16,
                   "data_offsets element 1 is 18446744073709551615, not an integer >= 0");
}

TEST_F(SafetensorsTest, OffsetsDisagreeWithShape) {
  ExpectEntryFails(R"({"dtype":"F32","shape":[2,2],"data_offsets":[0,8]})", 16,
                   "tensor 'x': data_offsets [0, 8] span 8 bytes but shape [2, 2] of F32 needs 16");
  ExpectEntryFails(R"({"dtype":"I64","shape":[2],"data_offsets":[0,8]})", 16,
                   "span 8 bytes but shape [2] of I64 needs 16");
}

TEST_F(SafetensorsTest, NumelOverflow) {
  ExpectEntryFails(R"({"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,4]})", 4,
                   "tensor 'x': shape [4294967296, 4294967296, 4] overflows 64-bit byte count");
  // numel fits in int64 but the byte count does not.
  ExpectEntryFails(R"({"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,4]})", 4,
                   "overflows 64-bit byte count");
  // A zero dimension makes any product 0 (no overflow, no bytes).
  const std::string path = tmp_.Join("zero.safetensors");
  WriteBytes(path, FileBytes(R"({"x":{"dtype":"F32","shape":[0,9223372036854775807],)"
                             R"("data_offsets":[0,0]}})",
                             0));
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ(f->Find("x")->numel, 0);
}

TEST_F(SafetensorsTest, TruncatedDataSection) {
  std::vector<float> a(64, 1.0f), b(64, 2.0f);
  const std::string path = tmp_.Join("trunc.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"a", {64}, TensorDType::kF32, a.data()},
                                      {"b", {8, 8}, TensorDType::kF32, b.data()}})
                  .ok());
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(fs::file_size(path) - 1)), 0);
  ExpectOpenFails(path, "tensor 'b': data_offsets [256, 512] lie outside the data section (511 bytes");
}

// Checksums of tensors given by `data` and of tensors made by `fill` (which
// the header gets only once the data is written) are the same, and correct.
TEST_F(SafetensorsTest, ChecksumsWithAndWithoutFill) {
  std::vector<float> x(1000), y(3 * 8192 + 77);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.001f * static_cast<float>(i);
  for (size_t i = 0; i < y.size(); ++i) y[i] = -0.5f * static_cast<float>(i % 97);
  std::vector<int32_t> ids = {5, 6, 7};
  auto fill_from = [](const void* src, size_t n) {
    return [src, n](void* dst) { std::memcpy(dst, src, n); };
  };
  const std::vector<TensorRef> by_data = {{"x", {10, 100}, TensorDType::kF32, x.data()},
                                          {"y", {(int64_t)y.size()}, TensorDType::kF32, y.data()},
                                          {"ids", {3}, TensorDType::kI32, ids.data()},
                                          {"none", {0}, TensorDType::kF32, nullptr}};
  std::vector<TensorRef> by_fill = by_data;
  by_fill[0] = {"x", {10, 100}, TensorDType::kF32, nullptr, fill_from(x.data(), x.size() * 4)};
  by_fill[1] = {"y", {(int64_t)y.size()}, TensorDType::kF32, nullptr,
                fill_from(y.data(), y.size() * 4)};  // ids stays by data: a mix
  const std::map<std::string, std::string> metadata = {{"step", "3"}};
  const std::string a = tmp_.Join("data.safetensors"), b = tmp_.Join("fill.safetensors");
  ASSERT_TRUE(WriteSafetensors(a, by_data, metadata).ok());
  ASSERT_TRUE(WriteSafetensors(b, by_fill, metadata).ok());
  EXPECT_EQ(ReadFile(a).value(), ReadFile(b).value());  // the same bytes, header and all
  const nlohmann::json meta = ReadHeader(b)["__metadata__"];
  EXPECT_EQ(meta, nlohmann::json({{"step", "3"},
                                  {"crc32c.x", CrcHex(x.data(), x.size() * 4)},
                                  {"crc32c.y", CrcHex(y.data(), y.size() * 4)},
                                  {"crc32c.ids", CrcHex(ids.data(), 12)},
                                  {"crc32c.none", "00000000"}}));
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(b);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ(f->metadata(), metadata);  // the checksums are the tensors', not the caller's
  EXPECT_EQ(f->Find("x")->crc32c, Crc32c(x.data(), x.size() * 4));
  std::vector<float> x2(x.size()), y2(y.size());
  ASSERT_TRUE(f->ReadF32("x", {10, 100}, x2.data()).ok());
  ASSERT_TRUE(f->ReadF32Range("y", 0, static_cast<int64_t>(y.size()), y2.data()).ok());
  EXPECT_EQ(x2, x);
  EXPECT_EQ(y2, y);
  std::vector<int32_t> ids2(3);
  ASSERT_TRUE(f->ReadI32("ids", {3}, ids2.data()).ok());
  EXPECT_EQ(ids2, ids);
  ASSERT_TRUE(f->ReadF32("none", {0}, nullptr).ok());
}

// One flipped bit in a tensor's data, the value staying finite, fails every
// read of the whole tensor, with one line naming the file and the tensor.
TEST_F(SafetensorsTest, FlippedDataBitFailsEveryWholeTensorRead) {
  std::vector<float> x(64);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 1.0f + 0.25f * static_cast<float>(i);
  std::vector<int32_t> ids32 = {1, 2, 3, 4};
  std::vector<int64_t> ids64 = {10, 20, 30};
  const std::string path = tmp_.Join("flip.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", {8, 8}, TensorDType::kF32, nullptr,
                                       [&](void* dst) { std::memcpy(dst, x.data(), 256); }},
                                      {"ids32", {4}, TensorDType::kI32, ids32.data()},
                                      {"ids64", {3}, TensorDType::kI64, ids64.data()}})
                  .ok());
  FlipDataBit(path, "x", 4 * 9, 0);        // x[9]'s lowest mantissa bit: still finite
  FlipDataBit(path, "ids32", 4 * 2, 1);    // 3 -> 1
  FlipDataBit(path, "ids64", 8 * 1 + 4, 7);  // 20 + 2^39: does not fit in int32 either
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();  // the header is intact
  auto damaged = [&](const std::string& name, const std::string& read) {
    return path + ": tensor '" + name + "' fails its checksum (crc32c " + read +
           "): the file is damaged";
  };
  std::vector<float> dst(64);
  std::vector<char> raw(256);
  std::memcpy(raw.data(), x.data(), 256);
  raw[36] ^= 1;
  const std::string x_crcs =
      CrcHex(x.data(), 256) + " stored, " + CrcHex(raw.data(), 256) + " read";
  Status s = f->ReadF32("x", {8, 8}, dst.data());
  EXPECT_EQ(s.message(), damaged("x", x_crcs));
  s = f->ReadF32Range("x", 0, 64, dst.data());
  EXPECT_EQ(s.message(), damaged("x", x_crcs));
  s = f->ReadRaw(*f->Find("x"), dst.data());
  EXPECT_EQ(s.message(), damaged("x", x_crcs));
  std::vector<int32_t> ids(4);
  s = f->ReadI32("ids32", {4}, ids.data());
  EXPECT_NE(s.message().find(path + ": tensor 'ids32' fails its checksum (crc32c "), std::string::npos)
      << s.message();
  // The damage is named, not the out-of-range value it made.
  s = f->ReadI32("ids64", {3}, ids.data());
  EXPECT_NE(s.message().find(path + ": tensor 'ids64' fails its checksum (crc32c "), std::string::npos)
      << s.message();
  s = f->ReadRaw(*f->Find("ids64"), raw.data());
  EXPECT_NE(s.message().find("tensor 'ids64' fails its checksum"), std::string::npos) << s.message();
  // A caller's copy of the TensorInfo is checked against the file's own
  // checksum, whatever the copy holds.
  TensorInfo copy = *f->Find("x");
  copy.crc32c.reset();
  EXPECT_EQ(f->ReadRaw(copy, dst.data()).message(), damaged("x", x_crcs));
}

// A read of part of a tensor (a rank's slice when resuming at another world
// size) cannot be checked alone: the damaged value comes back as it is on
// disk, with the piece's CRC32C. CheckPieces checks pieces that cover the
// tensor, in any order, as the whole read does; pieces that leave a gap or
// overlap check nothing.
TEST_F(SafetensorsTest, PartialReadsAreCheckedByTheirPiecesTogether) {
  std::vector<float> x(64, 2.0f);
  const std::string path = tmp_.Join("part.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", {64}, TensorDType::kF32, x.data()}}).ok());
  StatusOr<SafetensorsFile> intact = SafetensorsFile::Open(path);
  ASSERT_TRUE(intact.ok()) << intact.status().message();
  std::vector<float> dst(64);
  auto read = [&](const SafetensorsFile& f, int64_t begin, int64_t count) {
    TensorPiece p{begin, count, 0};
    EXPECT_TRUE(f.ReadF32Range("x", begin, count, dst.data(), &p.crc32c).ok());
    return p;
  };
  const std::vector<TensorPiece> whole = {read(*intact, 40, 24), read(*intact, 0, 13),
                                          read(*intact, 13, 0), read(*intact, 13, 27)};
  EXPECT_EQ(whole[0].crc32c, Crc32c(x.data() + 40, 24 * 4));
  EXPECT_TRUE(intact->CheckPieces("x", whole).ok());

  FlipDataBit(path, "x", 4 * 10, 0);
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  const TensorPiece damaged = read(*f, 0, 32);  // holds the flipped element: read as it is
  EXPECT_NE(dst[10], 2.0f);
  const TensorPiece rest = read(*f, 32, 32);
  const std::string mismatch = path + ": tensor 'x' fails its checksum (crc32c " +
                               CrcHex(x.data(), 256) + " stored, ";
  const Status s = f->CheckPieces("x", {rest, damaged});
  EXPECT_EQ(s.message().substr(0, mismatch.size()), mismatch) << s.message();
  EXPECT_FALSE(f->ReadF32Range("x", 0, 64, dst.data()).ok());  // as the whole tensor is
  // Not covering the tensor once: nothing to check.
  EXPECT_TRUE(f->CheckPieces("x", {damaged}).ok());
  EXPECT_TRUE(f->CheckPieces("x", {damaged, read(*f, 31, 33)}).ok());
  EXPECT_TRUE(f->CheckPieces("x", {damaged, rest, read(*f, 40, 2)}).ok());
  EXPECT_FALSE(f->CheckPieces("nope", {damaged}).ok());
}

// A file without checksum keys (an older checkpoint, PyTorch's own writer)
// reads as before, unchecked, even where its data was damaged.
TEST_F(SafetensorsTest, FileWithoutChecksumsReadsUnverified) {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string data = std::string("\x00\x00\xc0\x3f", 4) + std::string("\x01\x00\xc0\x3f", 4);
  const std::string path = tmp_.Join("old.safetensors");
  WriteBytes(path, U64Le(header.size()) + header + data);
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_FALSE(f->Find("w")->crc32c.has_value());
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  float w[2];
  ASSERT_TRUE(f->ReadF32("w", {2}, w).ok());
  EXPECT_EQ(w[0], 1.5f);
  ASSERT_TRUE(f->ReadF32Range("w", 0, 2, w).ok());
  ASSERT_TRUE(f->ReadRaw(*f->Find("w"), w).ok());
}

TEST_F(SafetensorsTest, MalformedChecksumRefusedAtOpen) {
  const std::string x = R"("x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  auto with = [&](const std::string& meta) { return "{\"__metadata__\":{" + meta + "}," + x + "}"; };
  ExpectHeaderFails(with(R"("crc32c.x":"e306928")"), 4,
                    "__metadata__ 'crc32c.x' is \"e306928\", not a checksum of 8 hex digits");
  ExpectHeaderFails(with(R"("crc32c.x":"e30692830")"), 4, "not a checksum of 8 hex digits");
  ExpectHeaderFails(with(R"("crc32c.x":"e306928g")"), 4, "not a checksum of 8 hex digits");
  ExpectHeaderFails(with(R"("crc32c.x":" e306928")"), 4, "not a checksum of 8 hex digits");
  ExpectHeaderFails(with(R"("crc32c.x":"")"), 4, "not a checksum of 8 hex digits");
  // A header whose placeholders were never filled in (a writer cut short).
  ExpectHeaderFails(with(R"("crc32c.x":"????????")"), 4, "not a checksum of 8 hex digits");
  ExpectHeaderFails(with(R"("crc32c.x":"00000000","crc32c.y":"00000000")"), 4,
                    "__metadata__ 'crc32c.y' is the checksum of tensor 'y', which is not in the file");
  ExpectHeaderFails(with(R"("crc32c.":"00000000")"), 4,
                    "the checksum of tensor '', which is not in the file");
  // Either case of hex digits is read (the writer writes lowercase).
  const std::string path = tmp_.Join("upper.safetensors");
  WriteBytes(path, FileBytes(with(R"("crc32c.x":"0000000A")"), 4));
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ(f->Find("x")->crc32c, 10u);
  EXPECT_TRUE(f->metadata().empty());
}

TEST_F(SafetensorsTest, WriteRefusesChecksumMetadataKey) {
  const float v = 1.0f;
  const std::string path = tmp_.Join("reserved.safetensors");
  const Status s =
      WriteSafetensors(path, {{"x", {}, TensorDType::kF32, &v}}, {{"crc32c.x", "00000000"}});
  EXPECT_EQ(s.message(), "cannot write '" + path +
                             "': metadata key 'crc32c.x' is reserved: keys starting with 'crc32c.' "
                             "hold the tensors' checksums");
  EXPECT_FALSE(fs::exists(path));
  // Keys that only look alike are the caller's.
  ASSERT_TRUE(WriteSafetensors(path, {{"x", {}, TensorDType::kF32, &v}},
                               {{"crc32c", "a"}, {"crc32cx", "b"}, {"my.crc32c.x", "c"}})
                  .ok());
  StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ(f->metadata().size(), 3u);
}

// Random corruptions of a valid file: Open and reads must never crash or
// read out of bounds (run under ASan), whatever they return.
TEST_F(SafetensorsTest, RandomCorruptionNeverCrashes) {
  std::vector<float> a(33, 1.0f);
  std::vector<int64_t> ids = {1, 2, 3};
  const std::string good_path = tmp_.Join("good.safetensors");
  ASSERT_TRUE(WriteSafetensors(good_path, {{"a", {3, 11}, TensorDType::kF32, a.data()},
                                           {"ids", {3}, TensorDType::kI64, ids.data()}},
                               {{"m", "v"}})
                  .ok());
  const std::string good = ReadFile(good_path).value();
  const std::string path = tmp_.Join("fuzz.safetensors");
  std::mt19937 rng(20240601);
  int opened = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes = good;
    const int kind = iter % 3;
    if (kind == 0) {
      bytes.resize(rng() % (bytes.size() + 1));
    } else {
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int i = 0; i < flips; ++i) {
        // Mostly in the length and header, where the parsing happens.
        const size_t limit = kind == 1 ? std::min<size_t>(bytes.size(), 8 + 140) : bytes.size();
        bytes[rng() % limit] = static_cast<char>(rng() & 0xff);
      }
    }
    fs::remove(path);  // a fresh file: rewriting a truncated one makes ext4 flush it
    WriteBytes(path, bytes);
    StatusOr<SafetensorsFile> f = SafetensorsFile::Open(path);
    if (!f.ok()) {
      EXPECT_EQ(f.status().message().rfind(path + ": ", 0), 0u) << f.status().message();
      continue;
    }
    ++opened;
    for (const TensorInfo& t : f->tensors()) {
      std::vector<char> buf(t.byte_size() + 1);
      // Validated offsets are in range: the read succeeds, or the bytes read
      // fail their checksum (a flip in the data, or in a checksum).
      const Status s = f->ReadRaw(t, buf.data());
      if (!s.ok()) {
        EXPECT_EQ(s.message().rfind(path + ": tensor '" + t.name + "' fails its checksum", 0), 0u)
            << s.message();
      }
    }
  }
  EXPECT_GT(opened, 0);  // some flips only touch data bytes
}

}  // namespace
}  // namespace mingpt
