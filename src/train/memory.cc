#include "train/memory.h"

#include <unistd.h>

#include <cstdio>

#include "model/gpt.h"
#include "model/layout.h"

namespace mingpt {

Status CheckMemoryFits(const ModelConfig& c, int batch, bool training,
                       bool activation_checkpointing, const std::function<double()>& state_bytes) {
  const double physical = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  // A generous bound in double precision first, so that absurd sizes never
  // reach the exact (64-bit) count.
  const double B = batch, T = c.block_size, C = c.n_embd, NH = c.n_head, L = c.n_layer;
  const double V = c.vocab_size;
  const double activation_bound = 4.0 * B * T * (L * (32 * C + NH * T + 4) + 16 * C + 2 * V + 8);
  const double state_bound =
      16.0 * (L * (12 * C * C + 16 * C) + 2 * V * C + T * C + 64 * (L + 2));
  // A strategy that says what it keeps (NVMe offload: little) is asked;
  // model sizes are capped (ModelConfig), so its exact count cannot overflow.
  const double bound = activation_bound + (state_bytes ? 0.0 : state_bound);
  double activations = 0, state = 0;
  if (bound <= physical) {
    activations = static_cast<double>(GPT::ActivationBytes(c, batch, activation_checkpointing));
    state = state_bytes ? state_bytes()
                        : (training ? 16.0 : 4.0) * static_cast<double>(ModelLayout(c).total_numel());
    if (activations + state <= physical) return Status::Ok();
  } else {
    activations = state = bound / 2;
  }
  char msg[320];
  std::snprintf(msg, sizeof(msg),
                "this model needs about %.1f GiB (activations %.1f GiB for batch %d, %s %.1f GiB) "
                "but the machine has %.1f GiB; use a smaller --batch_size, --block_size or model",
                (activations + state) / 1073741824.0, activations / 1073741824.0, batch,
                training ? "parameters/gradients/AdamW" : "parameters", state / 1073741824.0,
                physical / 1073741824.0);
  return Status::Error(msg);
}

int64_t PeakRssBytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  long long kb = 0;
  while (std::fgets(line, sizeof(line), f)) {
    if (std::sscanf(line, "VmHWM: %lld kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb * 1024;
}

}  // namespace mingpt
