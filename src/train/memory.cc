#include "train/memory.h"

#include <unistd.h>

#include <cstdio>

#include "model/gpt.h"
#include "model/layout.h"

namespace mingpt {

Status CheckMemoryFits(const ModelConfig& c, int batch, bool training,
                       bool activation_checkpointing, const std::function<double()>& state_bytes) {
  const double physical = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  // A generous bound on the activations in double precision first, so that
  // absurd batch and block sizes never reach the exact (64-bit) count.
  const double B = batch, T = c.block_size, C = c.n_embd, NH = c.n_head, L = c.n_layer;
  const double V = c.vocab_size;
  const double activation_bound = 4.0 * B * T * (L * (32 * C + NH * T + 4) + 16 * C + 2 * V + 8);
  // A strategy that says what it keeps (NVMe offload: little) is asked;
  // model sizes are capped (ModelConfig), so the exact count cannot overflow.
  const double state = state_bytes ? state_bytes()
                                   : (training ? 16.0 : 4.0) * static_cast<double>(ModelLayout(c).total_numel());
  // The exact count where 64 bits hold it; else the bound, far past any machine.
  const double activations =
      activation_bound < 0x1p62
          ? static_cast<double>(GPT::ActivationBytes(c, batch, activation_checkpointing))
          : activation_bound;
  if (activations + state <= physical) return Status::Ok();
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
