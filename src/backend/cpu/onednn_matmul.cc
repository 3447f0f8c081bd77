#include "backend/cpu/onednn_matmul.h"

#include <algorithm>
#include <cstring>

#include "backend/cpu/low_precision.h"
#include "core/check.h"

namespace mingpt::cpu {

using dnnl::memory;

struct OnednnMatmul::Entry {
  dnnl::matmul prim;
  memory a, b, bias, dst, scratchpad;
  size_t scratchpad_bytes = 0;
  dnnl_exec_arg_t args[5];  // C API arguments: no per-call std containers
  int num_args = 0;
  // PackB: B as given, the reorder into the primitive's format (b), and the
  // bytes that takes in packed_b_.
  memory b_given;
  dnnl::reorder pack;
  size_t packed_bytes = 0;
};

// oneDNN 2.6's fp32 matmul is slower on a row-major B (columns contiguous)
// than on the same B packed into the primitive's own format: 2-3x on a B much
// wider than deep (the MLP's output layer backward at n_embd 768, B 768 x
// 3072, W for dinp and inp for dW: ~100 GFLOP/s where the forward runs at
// ~280), 5-20% on the weight as dinp's B at every shape measured (K x N from
// 384 x 384 to 3072 x 768). Packing costs a copy of B: small beside dinp's
// product, which reads W once per row block, but not always beside dW's,
// whose B is the input (dW with a B no wider than twice its depth loses up
// to 20% when packed). In bf16 packing gains little or loses. The choice
// depends on the shape only, so results are the same run to run.
bool OnednnMatmul::PackB(const Key& key) {
  if (key.bf16 || key.b_trans) return false;
  const bool dinp_product = !key.a_trans;  // B = W; dW's product reads A = dout^T
  return dinp_product || key.Ncol >= 2 * key.K;
}

OnednnMatmul::OnednnMatmul()
    : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}

OnednnMatmul::~OnednnMatmul() = default;

OnednnMatmul::Entry& OnednnMatmul::Get(const Key& key) {
  auto it = cache_.find(key);
  if (it != cache_.end()) return *it->second;

  const memory::dim M = key.M, K = key.K, Ncol = key.Ncol;
  const auto f32 = memory::data_type::f32;
  const auto operand = key.bf16 ? memory::data_type::bf16 : f32;
  memory::desc a_md({M, K}, operand,
                    key.a_trans ? memory::dims{1, M} : memory::dims{K, 1});
  memory::desc b_md({K, Ncol}, operand,
                    key.b_trans ? memory::dims{1, K} : memory::dims{Ncol, 1});
  const bool pack_b = PackB(key);
  const memory::desc b_prim_md =
      pack_b ? memory::desc({K, Ncol}, operand, memory::format_tag::any) : b_md;
  memory::desc bias_md({1, Ncol}, f32, memory::dims{Ncol, 1});
  memory::desc dst_md({M, Ncol}, f32, memory::dims{Ncol, 1});

  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (key.accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
#if DNNL_VERSION_MAJOR >= 3
  auto pd = key.bias ? dnnl::matmul::primitive_desc(engine_, a_md, b_prim_md,
                                                    bias_md, dst_md, attr)
                     : dnnl::matmul::primitive_desc(engine_, a_md, b_prim_md, dst_md,
                                                    attr);
#else
  auto desc = key.bias ? dnnl::matmul::desc(a_md, b_prim_md, bias_md, dst_md)
                       : dnnl::matmul::desc(a_md, b_prim_md, dst_md);
  dnnl::matmul::primitive_desc pd(desc, attr, engine_);
#endif

  auto e = std::make_unique<Entry>();
  e->prim = dnnl::matmul(pd);
  e->a = memory(a_md, engine_, nullptr);
  if (pack_b) {
    const memory::desc packed_md = pd.weights_desc();
    e->b_given = memory(b_md, engine_, nullptr);
    e->b = memory(packed_md, engine_, nullptr);
    e->pack = dnnl::reorder(dnnl::reorder::primitive_desc(engine_, b_md, engine_, packed_md));
    e->packed_bytes = packed_md.get_size();
    packed_b_.Reserve(e->packed_bytes);
  } else {
    e->b = memory(b_md, engine_, nullptr);
  }
  e->dst = memory(dst_md, engine_, nullptr);
  e->args[e->num_args++] = {DNNL_ARG_SRC, e->a.get()};
  e->args[e->num_args++] = {DNNL_ARG_WEIGHTS, e->b.get()};
  e->args[e->num_args++] = {DNNL_ARG_DST, e->dst.get()};
  if (key.bias) {
    e->bias = memory(bias_md, engine_, nullptr);
    e->args[e->num_args++] = {DNNL_ARG_BIAS, e->bias.get()};
  }
  const memory::desc scratch_md = pd.scratchpad_desc();
  e->scratchpad_bytes = scratch_md.get_size();
  if (e->scratchpad_bytes > 0) {
    e->scratchpad = memory(scratch_md, engine_, nullptr);
    e->args[e->num_args++] = {DNNL_ARG_SCRATCHPAD, e->scratchpad.get()};
  }
  scratchpad_.Reserve(e->scratchpad_bytes);
  return *cache_.emplace(key, std::move(e)).first->second;
}

bool OnednnMatmul::CpuHasBf16Matmul() {
  // The ISA values are nested bit masks: a CPU with AMX has the bf16 bits too.
  const unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  const unsigned bf16 = static_cast<unsigned>(dnnl_cpu_isa_avx512_core_bf16);
  return (isa & bf16) == bf16;
}

void OnednnMatmul::set_native_bf16(bool on) { native_bf16_ = on && CpuHasBf16Matmul(); }

void OnednnMatmul::ToOperand(void* dst, const float* src, int64_t n) const {
  if (bf16_operands()) {
    ToBf16Array(static_cast<uint16_t*>(dst), src, n);
  } else {
    RoundArray(static_cast<float*>(dst), src, n, precision_);
  }
}

void OnednnMatmul::ToOperandSpan(void* dst, const float* src, int64_t n) const {
  if (bf16_operands()) {
    ToBf16Span(static_cast<uint16_t*>(dst), src, n);
  } else {
    RoundSpan(static_cast<float*>(dst), src, n, precision_);
  }
}

const void* OnednnMatmul::Operand(ScratchBuffer& buf, MatmulOperand x, int64_t n) {
  if (x.converted || precision_ == MatmulPrecision::kFp32) return x.data;
  void* converted = buf.Reserve(operand_bytes() * n);
  ToOperand(converted, static_cast<const float*>(x.data), n);
  return converted;
}

void OnednnMatmul::Run(Key key, const void* a, const void* b, const float* bias, float* dst) {
  key.bf16 = bf16_operands();
  Entry& e = Get(key);
  e.a.set_data_handle(const_cast<void*>(a));
  if (e.packed_bytes > 0) {
    e.b_given.set_data_handle(const_cast<void*>(b));
    e.b.set_data_handle(packed_b_.data());
    dnnl_exec_arg_t pack_args[2] = {{DNNL_ARG_FROM, e.b_given.get()}, {DNNL_ARG_TO, e.b.get()}};
    const dnnl_status_t packed =
        dnnl_primitive_execute(e.pack.get(), stream_.get(), 2, pack_args);
    MINGPT_CHECK(packed == dnnl_success, "oneDNN reorder failed (status %d)",
                 static_cast<int>(packed));
  } else {
    e.b.set_data_handle(const_cast<void*>(b));
  }
  e.dst.set_data_handle(dst);
  if (key.bias) e.bias.set_data_handle(const_cast<float*>(bias));
  if (e.scratchpad_bytes > 0) e.scratchpad.set_data_handle(scratchpad_.data());
  dnnl_status_t status =
      dnnl_primitive_execute(e.prim.get(), stream_.get(), e.num_args, e.args);
  MINGPT_CHECK(status == dnnl_success, "oneDNN matmul failed (status %d)",
               static_cast<int>(status));
  stream_.wait();
}

void OnednnMatmul::Forward(float* out, MatmulOperand inp, MatmulOperand W,
                           const float* bias, int N, int IC, int OC) {
  if (N == 0 || OC == 0) return;
  if (IC == 0) {  // empty product: out = bias (or 0)
    for (long n = 0; n < N; ++n) {
      for (int o = 0; o < OC; ++o) out[n * OC + o] = bias ? bias[o] : 0.0f;
    }
    return;
  }
  Run({N, IC, OC, false, true, false, bias != nullptr}, Operand(a_, inp, int64_t{N} * IC),
      Operand(b_, W, int64_t{OC} * IC), bias, out);
}

void OnednnMatmul::Backward(float* dinp, float* dW, MatmulOperand dout, MatmulOperand inp,
                            MatmulOperand W, int N, int IC, int OC, bool accumulate) {
  if (N == 0) return;
  // dout is an operand of both products: converted once.
  const void* d = OC > 0 ? Operand(dout_, dout, int64_t{N} * OC) : nullptr;
  // Weights first: dinp may alias inp.
  if (IC > 0 && OC > 0) {
    Run({OC, N, IC, true, false, true, false}, d, Operand(a_, inp, int64_t{N} * IC), nullptr, dW);
  }
  if (dinp == nullptr || IC == 0) return;
  if (OC == 0) {  // empty product: dinp = 0, or unchanged when accumulating
    if (!accumulate) std::memset(dinp, 0, sizeof(float) * N * IC);
    return;
  }
  Run({N, OC, IC, false, false, accumulate, false}, d, Operand(b_, W, int64_t{OC} * IC), nullptr,
      dinp);
}

}  // namespace mingpt::cpu
