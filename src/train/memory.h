// Memory admission: refuse, with the numbers, a model that cannot fit in
// this machine's physical memory, instead of being killed or aborting.
#pragma once

#include <functional>

#include <cstdint>

#include "core/status.h"
#include "model/config.h"

namespace mingpt {

// Activations for `batch` sequences of block_size, plus the parameters (and,
// when training, gradients and both AdamW moments: 16 bytes per parameter,
// unless `state_bytes` says what the strategy keeps in memory; it is only
// called for models whose size is sane).
Status CheckMemoryFits(const ModelConfig& config, int batch, bool training,
                       bool activation_checkpointing = false,
                       const std::function<double()>& state_bytes = nullptr);

// This process's peak resident set size so far (VmHWM), in bytes; 0 if unknown.
int64_t PeakRssBytes();

}  // namespace mingpt
