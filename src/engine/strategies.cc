#include "engine/strategies.h"

#include "core/check.h"
#include "engine/zero_engine.h"

namespace mingpt {

Status ValidateStrategyName(const std::string& s) {
  if (s == "auto" || s == "single_device" || s == "ddp" || s == "deepspeed_stage_1" ||
      s == "deepspeed_stage_2" || s == "deepspeed_stage_3" || IsOffloadStrategy(s)) {
    return Status::Ok();
  }
  return Status::Error("unknown --strategy '" + s +
                       "' (known: auto, single_device, ddp, deepspeed_stage_1, deepspeed_stage_2, "
                       "deepspeed_stage_3, deepspeed_stage_2_offload, deepspeed_stage_3_offload, "
                       "deepspeed_stage_3_offload_nvme)");
}

bool IsOffloadStrategy(const std::string& s) {
  return s == "deepspeed_stage_2_offload" || s == "deepspeed_stage_3_offload" || IsNvmeStrategy(s);
}

bool IsNvmeStrategy(const std::string& s) { return s == "deepspeed_stage_3_offload_nvme"; }

int ZeroStageOf(const std::string& s) {
  if (s == "deepspeed_stage_1") return 1;
  if (s == "deepspeed_stage_2" || s == "deepspeed_stage_2_offload") return 2;
  if (s == "deepspeed_stage_3" || s == "deepspeed_stage_3_offload" || IsNvmeStrategy(s)) return 3;
  MINGPT_CHECK(s == "ddp" || s == "single_device", "strategy '%s' not resolved", s.c_str());
  return 0;
}

StatusOr<std::unique_ptr<Strategy>> MakeStrategy(const std::string& name, Backend* backend,
                                                 const ModelLayout& layout, Communicators comms,
                                                 bool training, Backend* host,
                                                 const NvmeOptions& nvme) {
  Backend* offload_to = IsOffloadStrategy(name) ? (host ? host : backend) : nullptr;
  std::unique_ptr<NvmeState> files;
  if (IsNvmeStrategy(name) && training) {
    MINGPT_ASSIGN_OR_RETURN(
        files, NvmeState::Create(nvme, RankShards(layout, comms.host->rank(), comms.host->world()),
                                 comms.host->rank()));
  }
  std::unique_ptr<Strategy> s = std::make_unique<ZeroEngine>(
      backend, layout, comms, ZeroStageOf(name), name, training, offload_to, std::move(files));
  return s;
}

}  // namespace mingpt
