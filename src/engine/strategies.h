// The strategy names mingpt accepts (Lightning's), and how to build one.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "core/status.h"
#include "dist/communicator.h"
#include "engine/strategy.h"
#include "model/layout.h"

namespace mingpt {

// Checks a --strategy name: auto, single_device, ddp, deepspeed_stage_1/2/3.
// Offload strategies are named with a pointer to what is missing.
Status ValidateStrategyName(const std::string& name);

// The ZeRO stage a strategy name means (ddp and single_device: 0). "auto"
// must have been resolved by the planner before.
int ZeroStageOf(const std::string& name);

// The strategy for this rank; with training false, for inference only
// (parameters alone).
std::unique_ptr<Strategy> MakeStrategy(const std::string& name, Backend* backend,
                                       const ModelLayout& layout, Communicator* comm,
                                       bool training = true);

}  // namespace mingpt
