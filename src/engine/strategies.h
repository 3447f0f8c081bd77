// The strategy names mingpt accepts (Lightning's), and how to build one.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "core/status.h"
#include "dist/communicator.h"
#include "engine/nvme_state.h"
#include "engine/strategy.h"
#include "model/layout.h"

namespace mingpt {

// Checks a --strategy name: auto, single_device, ddp, deepspeed_stage_1/2/3,
// deepspeed_stage_2_offload, deepspeed_stage_3_offload. NVMe offload is
// named with a pointer to what is missing.
Status ValidateStrategyName(const std::string& name);

// deepspeed_stage_2_offload, deepspeed_stage_3_offload and
// deepspeed_stage_3_offload_nvme: the optimizer state in host memory (or in
// files), stepped by the CPU (zero_engine.h).
bool IsOffloadStrategy(const std::string& name);
// deepspeed_stage_3_offload_nvme (nvme_state.h).
bool IsNvmeStrategy(const std::string& name);

// The ZeRO stage a strategy name means (ddp and single_device: 0; offload
// ones their stage). "auto"
// must have been resolved by the planner before.
int ZeroStageOf(const std::string& name);

// The strategy for this rank; with training false, for inference only
// (parameters alone; NVMe offload then keeps its parameters in host memory).
// Offload strategies step on `host` (a CPU backend), or on `backend` itself
// when host is null (the CPU backend); NVMe offload's files go where `nvme`
// says. Collectives on `backend` memory go to comms.device, those on host
// memory to comms.host (zero_engine.h). Fails only on NVMe offload's
// directory (missing, not writable, full).
StatusOr<std::unique_ptr<Strategy>> MakeStrategy(const std::string& name, Backend* backend,
                                                 const ModelLayout& layout, Communicators comms,
                                                 bool training = true, Backend* host = nullptr,
                                                 const NvmeOptions& nvme = {});

}  // namespace mingpt
