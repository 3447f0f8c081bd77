// The ZeRO memory arithmetic, measured from each rank's allocations: with Ψ
// parameters and N ranks in fp32 (4 bytes of parameters, 4 of gradients, 8
// of AdamW moments per parameter), a rank holds
//   ddp 16Ψ;  stage 1 8Ψ + 8Ψ/N;  stage 2 4Ψ + 12Ψ/N;  stage 3 16Ψ/N
// within 5% plus the padding, and, as working memory, at most two gathered
// units of parameters (stage 3) and two units of gradient staging (2, 3).
#include <gtest/gtest.h>

#include <cstdlib>

#include "backend/backend.h"
#include "engine/zero_engine.h"
#include "model/layout.h"

namespace mingpt {
namespace {

ModelConfig Config() {
  ModelConfig c;
  c.n_layer = 4;
  c.n_head = 4;
  c.n_embd = 136;  // not a multiple of 16 * N for most N: padding happens
  c.block_size = 64;
  c.vocab_size = 65;
  return c;
}

TEST(ZeroMemory, EachStageHoldsItsShareOfTheState) {
  auto backend = MakeCpuBackend(1);
  const ModelLayout layout(Config());
  const double psi = static_cast<double>(layout.num_parameters());
  int64_t max_unit = 0;
  for (const Unit& u : layout.units()) max_unit = std::max(max_unit, u.numel);
  for (int world : {1, 2, 3, 4, 8}) {
    for (int rank : {0, world - 1}) {
      // Building and measuring an engine communicates nothing.
      std::unique_ptr<Communicator> comm_ptr = MakeSizeOnlyCommunicator(rank, world);
      Communicator& comm = *comm_ptr;
      const double N = world;
      const double expected[4] = {16 * psi, 8 * psi + 8 * psi / N, 4 * psi + 12 * psi / N,
                                  16 * psi / N};
      for (int stage = 0; stage <= 3; ++stage) {
        ZeroEngine engine(backend.get(), layout, {&comm, &comm}, stage, "test");
        const MemoryAccount m = engine.memory();
        // Padding: tensors aligned inside units, units padded to N equal shards.
        double padded = 0;
        for (int u = 0; u < layout.num_units(); ++u) padded += engine.shard(u).padded;
        const double padding_bytes = 16 * (padded - psi);
        const double held = static_cast<double>(m.params + m.grads + m.optimizer);
        SCOPED_TRACE("stage " + std::to_string(stage) + " rank " + std::to_string(rank) + "/" +
                     std::to_string(world));
        EXPECT_LE(held, expected[stage] * 1.05 + padding_bytes);
        EXPECT_GE(held, expected[stage] * 0.95);
        // Working memory: two gathered parameter units (stage 3) and two
        // units of gradient staging plus their reduced shards (stages 2, 3).
        const double unit_bytes = 4.0 * (max_unit + world * 16);
        const double working_cap = (stage == 3 ? 2 : 0) * unit_bytes +
                                   (stage >= 2 ? 2 * unit_bytes * (1 + 1.0 / world) : 0);
        EXPECT_LE(static_cast<double>(m.working), working_cap);
        if (stage < 2) {
          EXPECT_EQ(m.working, 0u);
        }
        // The planner's count without allocating equals the allocations.
        const MemoryAccount a = ZeroEngine::Account(layout, rank, world, stage);
        EXPECT_EQ(a.params, m.params);
        EXPECT_EQ(a.grads, m.grads);
        EXPECT_EQ(a.optimizer, m.optimizer);
        EXPECT_EQ(a.working, m.working);
      }
    }
  }
}

// Offload moves the optimizer's state to host memory: per rank the device
// keeps stage 2's whole parameters (4Ψ) or, under stage 3, only the working
// buffers; the host holds the fp32 parameter shard, the gradient shard and
// the moments (16Ψ/N) and one unit's reduced gradient shard.
TEST(ZeroMemory, OffloadKeepsTheOptimizerStateInHostMemory) {
  auto backend = MakeCpuBackend(1);
  const ModelLayout layout(Config());
  const double psi = static_cast<double>(layout.num_parameters());
  for (int world : {1, 2, 3, 4, 8}) {
    for (int rank : {0, world - 1}) {
      std::unique_ptr<Communicator> comm = MakeSizeOnlyCommunicator(rank, world);
      for (int stage : {2, 3}) {
        SCOPED_TRACE("stage " + std::to_string(stage) + " offload, rank " +
                     std::to_string(rank) + "/" + std::to_string(world));
        ZeroEngine engine(backend.get(), layout, {comm.get(), comm.get()}, stage, "test", true,
                          backend.get());
        const ZeroEngine plain(backend.get(), layout, {comm.get(), comm.get()}, stage, "test");
        const MemoryAccount m = engine.memory();
        double padded = 0, max_shard = 0;
        for (int u = 0; u < layout.num_units(); ++u) {
          padded += engine.shard(u).padded;
          max_shard = std::max(max_shard, static_cast<double>(engine.shard(u).shard));
        }
        const double padding_bytes = 16 * (padded - psi) / world;
        const double host_state = static_cast<double>(m.host) - 4 * max_shard;
        EXPECT_GE(host_state, 16 * psi / world * 0.95);
        EXPECT_LE(host_state, 16 * psi / world * 1.05 + padding_bytes);
        const double device = static_cast<double>(m.total() - m.host);
        const MemoryAccount p = plain.memory();
        if (stage == 2) {  // whole parameters and the gradient staging
          EXPECT_EQ(device, static_cast<double>(p.params + p.working));
        } else {  // the gather slots and the gradient staging
          EXPECT_EQ(device, static_cast<double>(p.working));
        }
        const MemoryAccount a = ZeroEngine::Account(layout, rank, world, stage, true);
        EXPECT_EQ(a.params, m.params);
        EXPECT_EQ(a.grads, m.grads);
        EXPECT_EQ(a.optimizer, m.optimizer);
        EXPECT_EQ(a.working, m.working);
        EXPECT_EQ(a.host, m.host);
      }
    }
  }
}

}  // namespace
}  // namespace mingpt
