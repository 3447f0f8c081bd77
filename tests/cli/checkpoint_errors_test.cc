// Corrupt checkpoints: every command that reads one (info, evaluate, sample,
// train --ckpt_path) refuses it with one error line naming the file or the
// tensor, exit 1, and a refused resume leaves no run directory.
//
// Corruptions of meta.json and of model.safetensors's headers are seen by all
// four commands (info opens the weights' files too, without reading the
// values); damaged values, and data that fails its checksum, by those that
// read the weights.
#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/trained_checkpoint.h"
#include "engine/shard.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/layout.h"

namespace mingpt::cli_test {
namespace {

class CheckpointErrorTest : public TrainedCheckpointTest {
 protected:
  // Every command that reads `ckpt` must refuse it with exit 1 and an error
  // line holding `keywords`. `with_info`: info must refuse it too.
  void ExpectRefusedEverywhere(const std::string& ckpt, const std::vector<std::string>& keywords,
                               bool with_info) {
    if (with_info) {
      EXPECT_TRUE(FailsWith(Mingpt(InfoArgs(ckpt)), 1, keywords)) << "(info)";
    }
    EXPECT_TRUE(FailsWith(Mingpt(EvaluateArgs(ckpt)), 1, keywords)) << "(evaluate)";
    EXPECT_TRUE(FailsWith(Mingpt(SampleArgs(ckpt)), 1, keywords)) << "(sample)";
    const ProcessResult resume = Mingpt(ResumeArgs(ckpt, "resumed"));
    EXPECT_TRUE(FailsWith(resume, 1, keywords)) << "(train --ckpt_path)";
    EXPECT_FALSE(Exists(tmp_ / "resumed")) << "a refused resume left its run directory behind";
  }

  // Rewrites <ckpt>/model.safetensors from the original's tensors, passing
  // each (name, shape, dtype, bytes) through `edit`, which may drop it by
  // clearing the name.
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    TensorDType dtype;
    std::vector<char> bytes;
  };
  template <typename Edit>
  void RewriteModel(const std::string& ckpt, Edit edit) {
    const std::string path = ckpt + "/model.safetensors";
    std::vector<Tensor> tensors;
    {
      auto file = SafetensorsFile::Open(path);
      ASSERT_TRUE(file.ok()) << file.status().message();
      for (const TensorInfo& info : file->tensors()) {
        Tensor t{info.name, info.shape, info.dtype, std::vector<char>(info.byte_size())};
        ASSERT_TRUE(file->ReadRaw(info, t.bytes.data()).ok());
        edit(&t);
        if (!t.name.empty()) tensors.push_back(std::move(t));
      }
    }
    std::vector<TensorRef> refs;
    for (const Tensor& t : tensors) refs.push_back({t.name, t.shape, t.dtype, t.bytes.data()});
    std::filesystem::remove(path);
    const Status s = WriteSafetensors(path, refs);
    ASSERT_TRUE(s.ok()) << s.message();
  }

  // Flips the lowest mantissa bit of element 1 of the first F32 tensor of
  // <ckpt>/<file> (or of tensor `only`) in place, a change no check of the
  // values can see (the float stays finite, and close), and returns the
  // tensor's name.
  std::string FlipBitInData(const std::string& ckpt, const std::string& file,
                            const std::string& only = "") {
    const std::string path = ckpt + "/" + file;
    std::string bytes = ReadText(path);
    uint64_t n = 0;
    if (bytes.size() < 8) return "";
    std::memcpy(&n, bytes.data(), 8);
    if (n > bytes.size() - 8) return "";
    const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__" || entry["dtype"] != "F32") continue;
      if (!only.empty() && name != only) continue;
      const uint64_t begin = entry["data_offsets"][0].get<uint64_t>();
      if (entry["data_offsets"][1].get<uint64_t>() - begin < 8) continue;
      const size_t at = 8 + n + begin + 4;  // element 1's lowest byte (little-endian)
      float before = 0, after = 0;
      std::memcpy(&before, bytes.data() + at, 4);
      bytes[at] ^= 1;
      std::memcpy(&after, bytes.data() + at, 4);
      if (!std::isfinite(after) || after == before) return "";
      WriteText(path, bytes);
      return name;
    }
    return "";
  }

  nlohmann::json ReadMeta(const std::string& ckpt) {
    return nlohmann::json::parse(ReadText(ckpt + "/meta.json"));
  }
  void WriteMeta(const std::string& ckpt, const nlohmann::json& meta) {
    WriteText(ckpt + "/meta.json", meta.dump(2));
  }
};

TEST_F(CheckpointErrorTest, IntactCopyLoads) {
  // The baseline: the copies the tests below corrupt load everywhere.
  const std::string ckpt = CopyCheckpoint("ckpt");
  EXPECT_TRUE(Succeeded(Mingpt(InfoArgs(ckpt))));
  EXPECT_TRUE(Succeeded(Mingpt(EvaluateArgs(ckpt))));
  EXPECT_TRUE(Succeeded(Mingpt(SampleArgs(ckpt))));
  const ProcessResult resume = Mingpt(ResumeArgs(ckpt, "resumed"));
  EXPECT_TRUE(Succeeded(resume));
}

TEST_F(CheckpointErrorTest, DirectoryMissing) {
  const std::string ckpt = tmp_ / "no_such_checkpoint";
  ExpectRefusedEverywhere(ckpt, {"no_such_checkpoint", "does not exist"}, true);
}

TEST_F(CheckpointErrorTest, PathIsAFile) {
  ExpectRefusedEverywhere(data_, {"input.txt", "not a directory"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonMissing) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  std::filesystem::remove(ckpt + "/meta.json");
  ExpectRefusedEverywhere(ckpt, {"meta.json"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonNotJson) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  WriteText(ckpt + "/meta.json", "{\"format_version\": 1, \"config\": {oops");
  ExpectRefusedEverywhere(ckpt, {"meta.json", "JSON"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonNotAnObject) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  WriteText(ckpt + "/meta.json", "[1, 2, 3]\n");
  ExpectRefusedEverywhere(ckpt, {"meta.json", "object"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonWithoutFormatVersion) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  nlohmann::json meta = ReadMeta(ckpt);
  meta.erase("format_version");
  WriteMeta(ckpt, meta);
  ExpectRefusedEverywhere(ckpt, {"meta.json", "format_version"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonFutureFormatVersion) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  nlohmann::json meta = ReadMeta(ckpt);
  meta["format_version"] = 999;
  WriteMeta(ckpt, meta);
  ExpectRefusedEverywhere(ckpt, {"format_version", "999"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonWithoutConfig) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  nlohmann::json meta = ReadMeta(ckpt);
  meta.erase("config");
  WriteMeta(ckpt, meta);
  ExpectRefusedEverywhere(ckpt, {"meta.json", "config"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonImpossibleConfig) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  nlohmann::json meta = ReadMeta(ckpt);
  meta["config"]["n_head"] = 3;  // n_embd 16 is not divisible by 3
  WriteMeta(ckpt, meta);
  ExpectRefusedEverywhere(ckpt, {"divisible"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonVocabDisagreesWithVocabSize) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  nlohmann::json meta = ReadMeta(ckpt);
  meta["vocab"] = meta["vocab"].get<std::string>().substr(1);
  WriteMeta(ckpt, meta);
  ExpectRefusedEverywhere(ckpt, {"vocab"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonConfigDisagreesWithWeights) {
  // meta.json says two blocks, model.safetensors holds one.
  const std::string ckpt = CopyCheckpoint("ckpt");
  nlohmann::json meta = ReadMeta(ckpt);
  meta["config"]["n_layer"] = 2;
  WriteMeta(ckpt, meta);
  ExpectRefusedEverywhere(ckpt, {"model.safetensors", "blocks.1."}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonConfigFarLargerThanWeights) {
  // A block_size no memory holds, the weights' pos_emb being 8 long: the
  // mismatch (or the size) must be refused before the model is allocated,
  // not by an abort or a sanitizer report. Any one clean line will do (the
  // shape mismatch, the memory needed, or data too short for the block), so
  // no keyword is required. (The allocation it would need exceeds any 64-bit
  // address space, so it fails at once rather than eating memory.)
  const std::string ckpt = CopyCheckpoint("ckpt");
  nlohmann::json meta = ReadMeta(ckpt);
  meta["config"]["block_size"] = 2000000000;
  WriteMeta(ckpt, meta);
  ExpectRefusedEverywhere(ckpt, {}, true);
}

TEST_F(CheckpointErrorTest, ModelSafetensorsMissing) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  std::filesystem::remove(ckpt + "/model.safetensors");
  ExpectRefusedEverywhere(ckpt, {"model.safetensors"}, true);
}

TEST_F(CheckpointErrorTest, ModelSafetensorsTruncated) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const std::string path = ckpt + "/model.safetensors";
  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size / 2);
  ExpectRefusedEverywhere(ckpt, {"model.safetensors"}, true);
}

TEST_F(CheckpointErrorTest, ModelSafetensorsHugeHeaderLength) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const std::string path = ckpt + "/model.safetensors";
  std::string bytes = ReadText(path);
  ASSERT_GT(bytes.size(), 8u);
  const uint64_t huge = 0x7fffffffffffff00ull;
  std::memcpy(bytes.data(), &huge, 8);  // little-endian machine
  WriteText(path, bytes);
  ExpectRefusedEverywhere(ckpt, {"model.safetensors", "header"}, true);
}

TEST_F(CheckpointErrorTest, ModelSafetensorsGarbageHeader) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const std::string path = ckpt + "/model.safetensors";
  std::string bytes = ReadText(path);
  uint64_t n = 0;
  ASSERT_GT(bytes.size(), 8u);
  std::memcpy(&n, bytes.data(), 8);
  ASSERT_LE(n, bytes.size() - 8);
  for (uint64_t i = 0; i < n; ++i) bytes[8 + i] = "{]x\"#"[i % 5];  // same length, not JSON
  WriteText(path, bytes);
  ExpectRefusedEverywhere(ckpt, {"model.safetensors", "JSON"}, true);
}

TEST_F(CheckpointErrorTest, TensorWithWrongShape) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  std::string changed;
  RewriteModel(ckpt, [&](Tensor* t) {
    if (changed.empty() && t->shape.size() == 2 && t->shape[0] != t->shape[1]) {
      std::swap(t->shape[0], t->shape[1]);  // same bytes, transposed shape
      changed = t->name;
    }
  });
  ASSERT_FALSE(changed.empty());
  ExpectRefusedEverywhere(ckpt, {"model.safetensors", "'" + changed + "'", "shape"}, true);
}

TEST_F(CheckpointErrorTest, TensorWithWrongDtype) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  std::string changed;
  RewriteModel(ckpt, [&](Tensor* t) {
    if (changed.empty() && t->dtype == TensorDType::kF32) {
      t->dtype = TensorDType::kF16;
      t->bytes.resize(t->bytes.size() / 2);  // 2 bytes per element
      changed = t->name;
    }
  });
  ASSERT_FALSE(changed.empty());
  ExpectRefusedEverywhere(ckpt, {"model.safetensors", "'" + changed + "'", "F16"}, true);
}

TEST_F(CheckpointErrorTest, TensorMissing) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  std::string dropped;
  RewriteModel(ckpt, [&](Tensor* t) {
    if (t->name.find("blocks.0.") == 0 && dropped.empty()) {
      dropped = t->name;
      t->name.clear();
    }
  });
  ASSERT_FALSE(dropped.empty());
  ExpectRefusedEverywhere(ckpt, {"model.safetensors", "missing", "'" + dropped + "'"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonNegativeStep) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  nlohmann::json meta = ReadMeta(ckpt);
  meta["step"] = -5;
  meta.erase("optimizer_steps");  // optional (older checkpoints): the step stands in
  WriteMeta(ckpt, meta);
  ExpectRefusedEverywhere(ckpt, {"'step'", "-5"}, true);
}

TEST_F(CheckpointErrorTest, MetaJsonIntegerOutOfRange) {
  // 2^32 + 1 would wrap to 1 layer in an int.
  const std::string ckpt = CopyCheckpoint("ckpt");
  nlohmann::json meta = ReadMeta(ckpt);
  meta["config"]["n_layer"] = 4294967297LL;
  WriteMeta(ckpt, meta);
  ExpectRefusedEverywhere(ckpt, {"'n_layer'", "4294967297", "out of range"}, true);
}

TEST_F(CheckpointErrorTest, ModelSafetensorsNotARegularFile) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const std::string path = ckpt + "/model.safetensors";
  std::filesystem::remove(path);
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);  // opening it must not wait for a writer
  ExpectRefusedEverywhere(ckpt, {"model.safetensors", "not a regular file"}, true);
}

// Two tensors over the same bytes: the file is corrupt even where every
// offset lies inside the data.
TEST_F(CheckpointErrorTest, TensorsOverlapInTheData) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const std::string path = ckpt + "/model.safetensors";
  const std::string bytes = ReadText(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  // Two tensors of one shape: the second's offsets become the first's.
  std::string first, second;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    for (const auto& [other, o] : header.items()) {
      if (other != name && other != "__metadata__" && o["shape"] == entry["shape"] && first.empty()) {
        first = name;
        second = other;
      }
    }
  }
  ASSERT_FALSE(first.empty());
  header[second]["data_offsets"] = header[first]["data_offsets"];
  const std::string text = header.dump();
  std::string rewritten(8, '\0');
  const uint64_t length = text.size();
  std::memcpy(rewritten.data(), &length, 8);
  rewritten += text + bytes.substr(8 + n);
  WriteText(path, rewritten);
  ExpectRefusedEverywhere(ckpt, {"model.safetensors", "overlap"}, true);
}

// A NaN in the weights (a flipped bit, a damaged disk) is refused where the
// values are read, not trained on or sampled from.
TEST_F(CheckpointErrorTest, TensorHoldsNaN) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  std::string changed;
  RewriteModel(ckpt, [&](Tensor* t) {
    if (changed.empty() && t->dtype == TensorDType::kF32 && t->bytes.size() >= 8) {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::memcpy(t->bytes.data() + 4, &nan, 4);
      changed = t->name;
    }
  });
  ASSERT_FALSE(changed.empty());
  ExpectRefusedEverywhere(ckpt, {"nan", "damaged"}, false);
  EXPECT_TRUE(FailsWith(Mingpt({"convert", ckpt, tmp_ / "out.safetensors"}), 1, {"nan"}));
  EXPECT_FALSE(Exists(tmp_ / "out.safetensors"));
}

// One flipped bit in the weights' data that leaves a finite float (a damaged
// disk, a bad copy) passes every check of the values; the tensor's checksum
// in the file's header refuses it wherever the weights are read.
TEST_F(CheckpointErrorTest, FlippedBitInTheWeightsFailsItsChecksum) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const std::string changed = FlipBitInData(ckpt, "model.safetensors");
  ASSERT_FALSE(changed.empty());
  ExpectRefusedEverywhere(
      ckpt, {"model.safetensors", "tensor '" + changed + "' fails its checksum", "damaged"}, false);
  EXPECT_TRUE(FailsWith(Mingpt({"convert", ckpt, tmp_ / "out.safetensors"}), 1,
                        {"model.safetensors", "fails its checksum"}));
  EXPECT_FALSE(Exists(tmp_ / "out.safetensors"));
}

// The same in the optimizer's state: only a resume reads it, and refuses it.
TEST_F(CheckpointErrorTest, FlippedBitInTheOptimizerStateRefusesResume) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const std::string changed = FlipBitInData(ckpt, "optimizer.safetensors");
  ASSERT_FALSE(changed.empty());
  EXPECT_TRUE(Succeeded(Mingpt(EvaluateArgs(ckpt))));
  EXPECT_TRUE(Succeeded(Mingpt(SampleArgs(ckpt))));
  const ProcessResult resume = Mingpt(ResumeArgs(ckpt, "resumed"));
  EXPECT_TRUE(FailsWith(resume, 1,
                        {"optimizer.safetensors", "tensor '" + changed + "' fails its checksum"}));
  EXPECT_FALSE(Exists(tmp_ / "resumed")) << "a refused resume left its run directory behind";
}

// At two ranks under ZeRO-3 each rank reads only its slice of every unit,
// so no process reads whole the tensors that straddle the border between
// the slices. Their checksums are checked from the ranks' pieces combined:
// a flipped bit in one is refused as in a tensor read whole.
TEST_F(CheckpointErrorTest, FlippedBitInATensorSplitBetweenRanksFailsItsChecksum) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  ModelConfig config;  // the shared run's (TinyTrainArgs)
  config.n_layer = 1;
  config.n_head = 2;
  config.n_embd = 16;
  config.block_size = 8;
  config.vocab_size = ReadMeta(ckpt)["config"]["vocab_size"].get<int>();
  std::string split;  // a tensor holding the first element of rank 1's slice, and earlier ones
  const ModelLayout layout(config);
  for (const Unit& u : layout.units()) {
    const int64_t border = ShardRange(u.numel, 1, 2).begin;
    for (const ParamEntry& e : u.params) {
      if (split.empty() && e.offset < border && border < e.offset + e.numel) split = e.name;
    }
  }
  ASSERT_FALSE(split.empty()) << "no tensor straddles the two ranks' slices";
  ASSERT_EQ(FlipBitInData(ckpt, "model.safetensors", split), split);
  const std::vector<std::pair<std::string, std::string>> two_ranks = {
      {"--devices", "2"}, {"--strategy", "deepspeed_stage_3"}};
  const std::vector<std::string> keywords = {"model.safetensors",
                                             "tensor '" + split + "' fails its checksum"};
  EXPECT_TRUE(FailsWith(Mingpt(ResumeArgs(ckpt, "resumed", two_ranks)), 1, keywords));
  EXPECT_FALSE(Exists(tmp_ / "resumed")) << "a refused resume left its run directory behind";
  std::vector<std::string> evaluate = EvaluateArgs(ckpt);
  evaluate.insert(evaluate.end(), {"--devices", "2", "--strategy", "deepspeed_stage_3"});
  EXPECT_TRUE(FailsWith(Mingpt(evaluate), 1, keywords));
}

// Resuming a run that already reached its last step trains nothing: one line
// says so, and no run directory is made.
TEST_F(CheckpointErrorTest, ResumeAtTheLastStepHasNothingToTrain) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const int64_t step = ReadMeta(ckpt)["step"].get<int64_t>();
  ASSERT_GT(step, 0);
  const ProcessResult r =
      Mingpt(ResumeArgs(ckpt, "again", {{"--max_steps", std::to_string(step)}}));
  EXPECT_TRUE(FailsWith(r, 1, {"at step " + std::to_string(step), "nothing to train"}));
  EXPECT_FALSE(Exists(tmp_ / "again"));
}

TEST_F(CheckpointErrorTest, OptimizerStateTruncatedRefusesResumeOnly) {
  // Inference never reads optimizer.safetensors; a resume must refuse it.
  const std::string ckpt = CopyCheckpoint("ckpt");
  const std::string path = ckpt + "/optimizer.safetensors";
  ASSERT_TRUE(Exists(path));
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  EXPECT_TRUE(Succeeded(Mingpt(EvaluateArgs(ckpt))));
  EXPECT_TRUE(Succeeded(Mingpt(SampleArgs(ckpt))));
  const ProcessResult resume = Mingpt(ResumeArgs(ckpt, "resumed"));
  EXPECT_TRUE(FailsWith(resume, 1, {"optimizer.safetensors"}));
  EXPECT_FALSE(Exists(tmp_ / "resumed")) << "a refused resume left its run directory behind";
}

}  // namespace
}  // namespace mingpt::cli_test
