// Memory admission: refuse, with the numbers, a model that cannot fit in
// this machine's physical memory, instead of being killed or aborting.
#pragma once

#include "core/status.h"
#include "model/config.h"

namespace mingpt {

// Activations for `batch` sequences of block_size, plus the parameters (and,
// when training, gradients and both AdamW moments).
Status CheckMemoryFits(const ModelConfig& config, int batch, bool training);

}  // namespace mingpt
