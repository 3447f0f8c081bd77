// The kernel emulator (emulator.h): blocks in turn, a block's threads as
// fibers on the launching thread, barriers and warp shuffles as points where
// a fiber hands control back to the block's scheduler.
#include "backend/cuda/emulation/emulator.h"

#include <sys/mman.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__x86_64__)
#include <xmmintrin.h>
#else
#include <ucontext.h>
#endif

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "backend/cuda/emulation/runtime_state.h"

#if defined(__x86_64__)
// Fiber switches on x86-64 without ucontext's signal-mask system call (half
// the emulator's time): save the callee-saved registers, MXCSR and the x87
// control word on the current stack, store the stack pointer in *save, load
// `load` and restore the same from it. A new fiber's stack is made to look
// like a switched-out one whose return address is its entry (Start below).
extern "C" void mingpt_emu_switch_context(void** save, void* load);
asm(R"(
  .pushsection .text
  .p2align 4
  .globl mingpt_emu_switch_context
  .hidden mingpt_emu_switch_context
  .type mingpt_emu_switch_context, @function
mingpt_emu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mingpt_emu_switch_context, .-mingpt_emu_switch_context
  .popsection
)");
#endif

namespace mingpt::cuda::emu {
namespace {

// A context's stack, for AddressSanitizer's fiber switches: its lowest
// address and size, and ASan's fake stack while switched out.
struct FiberStack {
  const void* bottom = nullptr;
  size_t size = 0;
  void* fake = nullptr;
};

#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;
  FiberStack stack;
};

// A context that, switched to, calls entry() on `stack` (entry must never
// return), with the caller's floating-point control state.
void Start(Context* c, void* stack, size_t bytes, void (*entry)()) {
  auto* p = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack) + bytes) &
                                        ~uintptr_t{15});
  *--p = 0;                                  // entry's return address: none
  *--p = reinterpret_cast<uint64_t>(entry);  // where the switch returns to
  for (int i = 0; i < 6; ++i) *--p = 0;      // rbp, rbx, r12-r15
  --p;
  const uint32_t mxcsr = _mm_getcsr();
  uint16_t x87 = 0;
  asm volatile("fnstcw %0" : "=m"(x87));
  std::memcpy(p, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(p) + 4, &x87, 2);
  c->sp = p;
}

void RawSwitch(Context* from, Context* to) { mingpt_emu_switch_context(&from->sp, to->sp); }
#else
struct Context {
  ucontext_t uc;
  FiberStack stack;
};

void Start(Context* c, void* stack, size_t bytes, void (*entry)()) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = bytes;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, entry, 0);
}

void RawSwitch(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
#endif

// A switch between stacks, told to AddressSanitizer when it is on (its
// fiber interface): otherwise it takes a fiber's stack for a corrupted
// thread stack. `for_good`: `from` is never resumed.
void Switch(Context* from, Context* to, bool for_good = false) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(for_good ? nullptr : &from->stack.fake, to->stack.bottom,
                                 to->stack.size);
#endif
  RawSwitch(from, to);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(from->stack.fake, nullptr, nullptr);
#endif
  (void)for_good;
}

// The first thing a new fiber does: finishes the switch that started it,
// learning the stack it came from (the scheduler's), to switch back to.
void Started(Context* scheduler) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &scheduler->stack.bottom, &scheduler->stack.size);
#endif
  (void)scheduler;
}

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = size_t{256} << 10;
constexpr int kDefaultMaxDynamicShared = 48 << 10;
constexpr int kOptInMaxDynamicShared = 227 << 10;  // Hopper's per-block maximum

enum class State { kRunnable, kAtBarrier, kAtShuffle, kDone };

struct Fiber {
  Context context;
  uint3 idx;
  int linear, warp, lane;
  State state;
  uint64_t shuffles;        // shuffles this thread has made
  std::source_location at;  // the barrier or shuffle it waits at
};

struct Warp {
  int live, arrived;
  uint64_t slots[2][kWarpSize];  // by the parity of the shuffle's count
};

// The launch being run. Launches are serialised (g_launch_mutex): the
// __shared__ arrays are statics, one per kernel.
struct Launch {
  const char* name;
  const std::function<void()>* body;
  dim3 grid, block;
  uint3 block_idx;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int live = 0, at_barrier = 0;
  std::source_location barrier_at;  // where the threads at the barrier wait
  std::vector<unsigned char> smem;
  Context scheduler;
  Fiber* current = nullptr;
};

std::mutex g_launch_mutex;
Launch* g_launch = nullptr;

// Fiber stacks, kept across launches (mmap'd, so untouched pages cost nothing).
std::vector<void*>& Stacks() {
  static std::vector<void*> stacks;
  return stacks;
}

void* Stack(size_t i) {
  auto& stacks = Stacks();
  while (stacks.size() <= i) {
    void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "CUDA emulator: cannot map a fiber stack\n");
      std::abort();
    }
    stacks.push_back(p);
  }
  return stacks[i];
}

std::map<const void*, int>& MaxDynamicShared() {
  static std::map<const void*, int> limits;
  return limits;
}

Launch& Current() {
  if (g_launch == nullptr || g_launch->current == nullptr) {
    std::fprintf(stderr, "CUDA emulator: a device function was called outside a kernel\n");
    std::abort();
  }
  return *g_launch;
}

[[noreturn]] void Fail(const char* format, ...) {
  const Launch* l = g_launch;
  if (l != nullptr) {
    std::fprintf(stderr, "CUDA emulator: kernel %s, block (%u,%u,%u)", l->name, l->block_idx.x,
                 l->block_idx.y, l->block_idx.z);
    if (l->current) {
      std::fprintf(stderr, ", thread (%u,%u,%u)", l->current->idx.x, l->current->idx.y,
                   l->current->idx.z);
    }
    std::fprintf(stderr, ": ");
  } else {
    std::fprintf(stderr, "CUDA emulator: ");
  }
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::abort();
}

void Yield(Launch& l, Fiber& f) { Switch(&f.context, &l.scheduler); }

void ReleaseBarrier(Launch& l) {
  for (Fiber& f : l.fibers) {
    if (f.state == State::kAtBarrier) f.state = State::kRunnable;
  }
  l.at_barrier = 0;
}

void FiberMain() {
  Launch& l = *g_launch;
  Fiber& f = *l.current;
  Started(&l.scheduler);
  (*l.body)();
  l.current = &f;  // (the scheduler may have run others in between)
  f.state = State::kDone;
  --l.live;
  Warp& w = l.warps[f.warp];
  --w.live;
  if (w.arrived > 0)
    Fail("exited while %d lanes of its warp wait at a full-mask shuffle", w.arrived);
  if (l.at_barrier > 0 && l.at_barrier == l.live) ReleaseBarrier(l);
  Switch(&f.context, &l.scheduler, /*for_good=*/true);  // a finished fiber is not resumed
  std::abort();
}

[[noreturn]] void Deadlock(Launch& l) {
  int barrier = 0, shuffle = 0, done = 0;
  for (const Fiber& f : l.fibers) {
    barrier += f.state == State::kAtBarrier;
    shuffle += f.state == State::kAtShuffle;
    done += f.state == State::kDone;
  }
  l.current = nullptr;
  Fail(
      "deadlock: %d threads wait at __syncthreads and %d at warp shuffles that the others "
      "never reach (%d exited): a barrier or shuffle inside divergent code",
      barrier, shuffle, done);
}

void RunBlock(Launch& l) {
  const int n = static_cast<int>(l.block.x * l.block.y * l.block.z);
  l.fibers.assign(n, Fiber{});
  l.warps.assign((n + kWarpSize - 1) / kWarpSize, Warp{});
  for (int i = 0; i < n; ++i) {
    Fiber& f = l.fibers[i];
    f.linear = i;
    f.idx = {static_cast<unsigned>(i) % l.block.x, (i / l.block.x) % l.block.y,
             i / (l.block.x * l.block.y)};
    f.warp = i / kWarpSize;
    f.lane = i % kWarpSize;
    f.state = State::kRunnable;
    ++l.warps[f.warp].live;
    Start(&f.context, Stack(i), kStackBytes, &FiberMain);
    f.context.stack = {Stack(i), kStackBytes, nullptr};
  }
  l.live = n;
  l.at_barrier = 0;
  if (!l.smem.empty()) std::memset(l.smem.data(), 0xFF, l.smem.size());  // NaN floats, until written
  // Warp by warp, last first; a warp runs until none of its lanes can go on
  // (they wait at a barrier, or exited), so that one warp gets far ahead of
  // the others, as a warp scheduler lets it.
  const int warps = static_cast<int>(l.warps.size());
  while (l.live > 0) {
    bool ran = false;
    for (int w = warps - 1; w >= 0; --w) {
      for (bool progress = true; progress;) {
        progress = false;
        for (int i = std::min(n, (w + 1) * kWarpSize) - 1; i >= w * kWarpSize; --i) {
          Fiber& f = l.fibers[i];
          if (f.state != State::kRunnable) continue;
          l.current = &f;
          Switch(&l.scheduler, &f.context);
          ran = progress = true;
        }
      }
    }
    if (!ran) Deadlock(l);
  }
  l.current = nullptr;
}

// Runs a checked launch: every block in turn.
void Run(const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
         const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  if (g_launch != nullptr) {
    std::fprintf(stderr, "CUDA emulator: kernel %s launched from inside kernel %s\n", name,
                 g_launch->name);
    std::abort();
  }
  Launch l;
  l.name = name;
  l.body = &body;
  l.grid = grid;
  l.block = block;
  l.smem.resize(dynamic_smem);
  g_launch = &l;
  CountLaunch();
  for (int64_t z = grid.z - 1; z >= 0; --z) {
    for (int64_t y = grid.y - 1; y >= 0; --y) {
      for (int64_t x = grid.x - 1; x >= 0; --x) {
        l.block_idx = {static_cast<unsigned>(x), static_cast<unsigned>(y),
                       static_cast<unsigned>(z)};
        RunBlock(l);
      }
    }
  }
  g_launch = nullptr;
}

}  // namespace

uint3 ThreadIdx() { return Current().current->idx; }
uint3 BlockIdx() { return Current().block_idx; }
dim3 BlockDim() { return Current().block; }
dim3 GridDim() { return Current().grid; }
int LaneId() { return Current().current->lane; }

void* DynamicShared() {
  Launch& l = Current();
  return l.smem.empty() ? nullptr : l.smem.data();
}

bool SameCall(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         std::strcmp(a.file_name(), b.file_name()) == 0;
}

void SyncThreads(const std::source_location& where) {
  Launch& l = Current();
  Fiber& f = *l.current;
  if (l.at_barrier > 0 && !SameCall(l.barrier_at, where)) {
    Fail(
        "__syncthreads at %s:%u while other threads wait at the one at %s:%u: a barrier "
        "inside divergent code",
        where.file_name(), where.line(), l.barrier_at.file_name(), l.barrier_at.line());
  }
  l.barrier_at = where;
  f.at = where;
  f.state = State::kAtBarrier;
  if (++l.at_barrier == l.live) {
    ReleaseBarrier(l);
  } else {
    Yield(l, f);
  }
  l.current = &f;
}

namespace {

// The meeting of the warp's 32 lanes at one call (a shuffle, __syncwarp, a
// warp matrix function): each stores its 8 bytes in the slots of the
// parity of its count of such meetings; the last to arrive checks that all
// are at the same call and count, runs op on the slots and wakes the others.
// Returns the slots, valid until the warp's meeting after next.
const uint64_t* Meet(const void* value, size_t bytes, const std::source_location& where,
                     void (*op)(const uint64_t*, void*), void* context) {
  Launch& l = Current();
  Fiber& f = *l.current;
  Warp& w = l.warps[f.warp];
  if (w.live != kWarpSize) {
    Fail("full-mask warp operation in warp %d, which has %d live lanes (32 needed)", f.warp,
         w.live);
  }
  const int parity = static_cast<int>(f.shuffles & 1);
  const uint64_t count = ++f.shuffles;
  w.slots[parity][f.lane] = 0;
  std::memcpy(&w.slots[parity][f.lane], value, bytes);
  f.at = where;
  f.state = State::kAtShuffle;
  if (++w.arrived == kWarpSize) {
    for (int lane = 0; lane < kWarpSize; ++lane) {
      Fiber& g = l.fibers[f.warp * kWarpSize + lane];
      if (g.shuffles != count || !SameCall(g.at, where)) {
        Fail(
            "lanes of warp %d meet at different shuffles or warp operations (lane %d at its "
            "#%llu, %s:%u; lane %d at #%llu, %s:%u): a warp operation inside divergent code",
            f.warp, f.lane, static_cast<unsigned long long>(count), where.file_name(), where.line(),
            lane, static_cast<unsigned long long>(g.shuffles), g.at.file_name(), g.at.line());
      }
    }
    if (op != nullptr) op(w.slots[parity], context);
    for (int lane = 0; lane < kWarpSize; ++lane) {
      l.fibers[f.warp * kWarpSize + lane].state = State::kRunnable;
    }
    w.arrived = 0;
  } else {
    Yield(l, f);
  }
  l.current = &f;
  return w.slots[parity];
}

}  // namespace

void ShuffleExchange(unsigned mask, const void* value, void* out, size_t bytes, int src,
                     const std::source_location& where) {
  if (mask != 0xFFFFFFFFu)
    Fail("shuffle with mask %#x: only full-mask shuffles are emulated", mask);
  const uint64_t* slots = Meet(value, bytes, where, nullptr, nullptr);
  std::memcpy(out, &slots[src], bytes);
}

void WarpCollective(uint64_t value, void (*op)(const uint64_t* values, void* context),
                    void* context, const std::source_location& where) {
  Meet(&value, sizeof(value), where, op, context);
}

void Fatal(const char* message) { Fail("%s", message); }

void Trap() { Fail("__trap()"); }

cudaError_t SetMaxDynamicShared(const void* kernel, int bytes) {
  if (kernel == nullptr) return Record(cudaErrorInvalidDeviceFunction);
  if (bytes < 0 || bytes > kOptInMaxDynamicShared) return Record(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  MaxDynamicShared()[kernel] = bytes;
  return cudaSuccess;
}

cudaError_t LaunchKernel(const char* name, const void* kernel, dim3 grid, dim3 block,
                         size_t dynamic_smem, cudaStream_t stream, std::function<void()> body) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 ||
      grid.x > 0x7FFFFFFFu || grid.y == 0 || grid.y > 65535 || grid.z == 0 || grid.z > 65535) {
    return Record(cudaErrorInvalidConfiguration);
  }
  {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    auto limit = MaxDynamicShared().find(kernel);
    const int max_smem =
        limit == MaxDynamicShared().end() ? kDefaultMaxDynamicShared : limit->second;
    if (dynamic_smem > static_cast<size_t>(max_smem)) return Record(cudaErrorInvalidValue);
  }
  if (!IsLiveStream(stream)) return Record(cudaErrorInvalidResourceHandle);
  if (SkipCompute()) return cudaSuccess;
  Enqueue(
      stream, [=, body = std::move(body)] { Run(name, grid, block, dynamic_smem, body); },
      /*compute=*/true);
  return cudaSuccess;
}

}  // namespace mingpt::cuda::emu
