// convert: consolidates a checkpoint of either format (single, or sharded by
// any number of ranks) into one fp32 safetensors file holding the weights
// under the seed's PyTorch names, exactly the tensors of a single-format
// model.safetensors, so that PyTorch's GPT loads it with strict=True.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "model/layout.h"
#include "train/model_checkpoint.h"

namespace mingpt::cli {

Command AddConvert(CLI::App* app) {
  struct Flags {
    std::string checkpoint, output;
  };
  auto f = std::make_shared<Flags>();
  app->add_option("checkpoint", f->checkpoint, "Checkpoint directory (single or sharded)")
      ->required();
  app->add_option("output", f->output,
                  "Weights file to write (fp32 safetensors; replaced atomically if it exists)")
      ->required();
  return [f]() -> Status {
    MINGPT_ASSIGN_OR_RETURN(OpenedCheckpoint ckpt, OpenTrainingCheckpoint(f->checkpoint));
    MINGPT_RETURN_IF_ERROR(WriteConsolidatedWeights(ckpt, f->output));
    const ModelLayout layout(ckpt.config);
    std::printf("wrote %s: %lld parameters of %s, step %lld, from a %s checkpoint of %d rank%s\n",
                f->output.c_str(), static_cast<long long>(layout.num_parameters()),
                ckpt.config.ToString().c_str(), static_cast<long long>(ckpt.state.step),
                CheckpointFormatName(ckpt.format), ckpt.world_size,
                ckpt.world_size == 1 ? "" : "s");
    return Status::Ok();
  };
}

}  // namespace mingpt::cli
