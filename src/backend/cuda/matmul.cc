// cuBLASLt matrix products of the CUDA backend (see matmul.h).
#include "backend/cuda/matmul.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "core/check.h"

#define MINGPT_CUBLAS_CHECK(expr)                                                       \
  do {                                                                                  \
    const cublasStatus_t mingpt_cublas_status_ = (expr);                                \
    if (mingpt_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                               \
      std::fprintf(stderr, "%s:%d: cuBLASLt error %d: %s (in %s)\n", __FILE__, __LINE__, \
                   static_cast<int>(mingpt_cublas_status_),                             \
                   cublasLtGetStatusString(mingpt_cublas_status_), #expr);              \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

namespace mingpt::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLAS's advice for Hopper

cudaDataType_t OperandType(MatmulPrecision p) {
  switch (p) {
    case MatmulPrecision::kBf16:
      return CUDA_R_16BF;
    case MatmulPrecision::kFp16:
      return CUDA_R_16F;
    case MatmulPrecision::kFp32:
      break;
  }
  return CUDA_R_32F;
}

// The largest power of two (up to 256) dividing the address: what the
// heuristic may assume of it.
unsigned Alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return 256;
  unsigned align = 1;
  while (align < 256 && a % (2 * align) == 0) align *= 2;
  return align;
}

template <typename T>
void SetDescAttr(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  MINGPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

template <typename T>
void SetPrefAttr(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
                 const T& value) {
  MINGPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

}  // namespace

// The descriptors and chosen algorithm of one cached product.
struct LtMatmul::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

LtMatmul::LtMatmul(cudaStream_t stream) : stream_(stream) {
  MINGPT_CUBLAS_CHECK(cublasLtCreate(&handle_));
  workspace_.Reserve(kWorkspaceBytes);
}

LtMatmul::~LtMatmul() {
  plans_.clear();
  if (handle_) cublasLtDestroy(handle_);
}

LtMatmul::Plan& LtMatmul::GetPlan(const Key& key, const float* bias) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;
  const Gemm& g = key.g;
  auto plan = std::make_unique<Plan>();
  const cudaDataType_t type = OperandType(key.precision);
  MINGPT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = g.a_trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = g.b_trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  SetDescAttr(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, ta);
  SetDescAttr(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, tb);
  if (g.bias) {  // bias[m] in fp32, the type of D (the default bias type)
    SetDescAttr(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    // The heuristic takes the bias's alignment from this pointer (a null one
    // reads as fully aligned): a kernel it picks may rely on it.
    SetDescAttr(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  }
  MINGPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, type, g.a_trans ? g.k : g.m,
                                                 g.a_trans ? g.m : g.k, g.lda));
  MINGPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, type, g.b_trans ? g.n : g.k,
                                                 g.b_trans ? g.k : g.n, g.ldb));
  MINGPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->d, CUDA_R_32F, g.m, g.n, g.ldd));

  cublasLtMatmulPreference_t pref = nullptr;
  MINGPT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  SetPrefAttr(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t{kWorkspaceBytes});
  // No in-place split-K reduction: it may add the parts in any order.
  SetPrefAttr(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
              uint32_t{CUBLASLT_REDUCTION_SCHEME_MASK & ~CUBLASLT_REDUCTION_SCHEME_INPLACE});
  SetPrefAttr(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t{key.align_a});
  SetPrefAttr(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, uint32_t{key.align_b});
  SetPrefAttr(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, uint32_t{key.align_d});
  SetPrefAttr(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, uint32_t{key.align_d});
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  // No algorithm is CUBLAS_STATUS_NOT_SUPPORTED (or none found): say for
  // which product, which the status alone does not.
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle_, plan->desc, plan->a, plan->b, plan->d, plan->d, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) {
    std::fprintf(stderr,
                 "%s:%d: cuBLASLt has no algorithm (%s) for m=%d n=%d k=%d op(A)=%c op(B)=%c "
                 "lda=%d ldb=%d ldd=%d precision %d bias %d; alignments A %u B %u D %u bias %u\n",
                 __FILE__, __LINE__, cublasLtGetStatusString(status), g.m, g.n, g.k,
                 g.a_trans ? 'T' : 'N', g.b_trans ? 'T' : 'N', g.lda, g.ldb, g.ldd,
                 static_cast<int>(key.precision), g.bias ? 1 : 0, key.align_a, key.align_b,
                 key.align_d, key.align_bias);
    std::abort();
  }
  plan->algo = result.algo;
  return *plans_.emplace(key, std::move(plan)).first->second;
}

void LtMatmul::ToOperand(void* dst, const float* src, int64_t n) {
  switch (precision_) {
    case MatmulPrecision::kBf16:
      ConvertToBf16(stream_, dst, src, n);
      return;
    case MatmulPrecision::kFp16:
      ConvertToFp16(stream_, dst, src, n);
      return;
    case MatmulPrecision::kFp32:
      if (dst != src && n > 0) {
        MINGPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(float) * n, cudaMemcpyDeviceToDevice,
                                          stream_));
      }
      return;
  }
}

const void* LtMatmul::Operand(DeviceScratch& buf, MatmulOperand x, int64_t n) {
  if (x.converted || precision_ == MatmulPrecision::kFp32) return x.data;
  void* dst = buf.Reserve(operand_bytes() * static_cast<size_t>(n));
  ToOperand(dst, static_cast<const float*>(x.data), n);
  return dst;
}

void LtMatmul::Run(const Gemm& g, const void* a, const void* b, float* d, const float* bias) {
  const Key key{g, precision_, Alignment(a), Alignment(b), Alignment(d),
                g.bias ? Alignment(bias) : 0u};
  Plan& plan = GetPlan(key, bias);
  if (g.bias) SetDescAttr(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  const float alpha = 1.0f, beta = g.accumulate ? 1.0f : 0.0f;
  MINGPT_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, a, plan.a, b, plan.b, &beta, d,
                                     plan.d, d, plan.d, &plan.algo, workspace_.Reserve(0),
                                     workspace_.bytes(), stream_));
}

void LtMatmul::Forward(float* out, MatmulOperand inp, MatmulOperand W, const float* bias, int N,
                       int IC, int OC) {
  if (N == 0 || OC == 0) return;
  MINGPT_CHECK(IC > 0, "MatmulForward with IC=0");
  // out^T[OC,N] = W[OC,IC] @ inp^T[IC,N]: A = W stored [IC,OC], op T; B = inp stored [IC,N].
  const void* a = Operand(a_, W, int64_t{OC} * IC);
  const void* b = Operand(b_, inp, int64_t{N} * IC);
  Run({OC, N, IC, true, false, IC, IC, OC, false, bias != nullptr}, a, b, out, bias);
}

void LtMatmul::Backward(float* dinp, float* dW, MatmulOperand dout, MatmulOperand inp,
                        MatmulOperand W, int N, int IC, int OC, bool accumulate) {
  if (N == 0 || IC == 0) return;
  if (OC == 0) {  // empty product: dinp = 0, or unchanged when accumulating
    if (dinp && !accumulate) {
      MINGPT_CUDA_CHECK(cudaMemsetAsync(dinp, 0, sizeof(float) * N * IC, stream_));
    }
    return;
  }
  // dout is an operand of both products: converted once. Both conversions
  // of inp and W happen before dinp is written (stream order).
  const void* d = Operand(dout_, dout, int64_t{N} * OC);
  const void* x = Operand(a_, inp, int64_t{N} * IC);
  // dW^T[IC,OC] += inp^T[IC,N] @ dout[N,OC]: A = inp stored [IC,N], B = dout stored [OC,N], op T.
  Run({IC, OC, N, false, true, IC, OC, IC, true, false}, x, d, dW, nullptr);
  if (dinp == nullptr) return;
  // dinp^T[IC,N] = W^T[IC,OC] @ dout^T[OC,N]: A = W stored [IC,OC], B = dout stored [OC,N].
  const void* w = Operand(b_, W, int64_t{OC} * IC);
  Run({IC, N, OC, false, false, IC, OC, IC, accumulate, false}, w, d, dinp, nullptr);
}

}  // namespace mingpt::cuda
