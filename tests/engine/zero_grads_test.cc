// The gradient shards' step life, at one rank for every stage with and
// without offload: ZeroGrads leaves stages 2 and 3's shards unzeroed and the
// step's first reduced gradient replaces what the last step left, later
// micro-batches add to it, and a unit that no micro-batch gave a gradient
// counts as zero, not as last step's.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "backend/backend.h"
#include "dist/communicator.h"
#include "engine/zero_engine.h"
#include "model/layout.h"

namespace mingpt {
namespace {

ModelConfig Config() {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 24;
  c.block_size = 8;
  c.vocab_size = 11;
  return c;
}

// One micro-batch's backward as the model makes it (units last to first),
// giving unit u the gradient value(u) in every element (none where it is 0).
template <typename Value>
void Backward(ZeroEngine& engine, const ModelLayout& layout, Value value) {
  for (int u = layout.num_units() - 1; u >= 0; --u) {
    if (value(u) == 0) continue;
    float* g = engine.Grads(u);
    for (int64_t i = 0; i < layout.units()[u].numel; ++i) g[i] += value(u);
    engine.GradsReady(u);
  }
}

// The norm of value(u) in every element of every unit.
template <typename Value>
double Norm(const ModelLayout& layout, Value value) {
  double sum = 0;
  for (int u = 0; u < layout.num_units(); ++u) {
    sum += static_cast<double>(layout.units()[u].numel) * value(u) * value(u);
  }
  return std::sqrt(sum);
}

TEST(ZeroGrads, EachStepStartsFromZeroWhateverTheLastLeft) {
  auto backend = MakeCpuBackend(1);
  const ModelLayout layout(Config());
  std::unique_ptr<Communicator> comm = MakeLocalCommunicator();
  const auto first = [](int u) { return 0.5f + u; };
  const auto skip_one = [](int u) { return u == 1 ? 0.0f : 2.0f; };  // unit 1: no gradient
  for (int stage = 0; stage <= 3; ++stage) {
    for (bool offload : {false, true}) {
      if (offload && stage < 2) continue;
      SCOPED_TRACE("stage " + std::to_string(stage) + (offload ? " offload" : ""));
      ZeroEngine engine(backend.get(), layout, {comm.get(), comm.get()}, stage, "test", true,
                        offload ? backend.get() : nullptr);
      // A step of one micro-batch.
      engine.ZeroGrads();
      engine.BeginMicroBatch(true);
      Backward(engine, layout, first);
      EXPECT_NEAR(engine.GradNorm(), Norm(layout, first), 1e-6 * Norm(layout, first));
      // Two micro-batches: the first replaces the last step's, the second adds.
      engine.ZeroGrads();
      for (bool last : {false, true}) {
        engine.BeginMicroBatch(last);
        Backward(engine, layout, first);
      }
      const auto twice = [&](int u) { return 2 * first(u); };
      EXPECT_NEAR(engine.GradNorm(), Norm(layout, twice), 1e-6 * Norm(layout, twice));
      // A unit without a gradient this step is zero, not the last step's.
      engine.ZeroGrads();
      engine.BeginMicroBatch(true);
      Backward(engine, layout, skip_one);
      EXPECT_NEAR(engine.GradNorm(), Norm(layout, skip_one), 1e-6 * Norm(layout, skip_one));
    }
  }
}

}  // namespace
}  // namespace mingpt
