// The cuBLASLt functions the backend calls, for the emulator: the documented
// column-major product
//   D[m,n] = alpha op(A)[m,k] op(B)[k,n] + beta C[m,n] (+ bias[m], epilogue BIAS)
// summed in double and rounded once, C not read when beta is 0. The
// descriptors keep what the backend sets; an attribute, type or epilogue
// outside what is emulated is CUBLAS_STATUS_NOT_SUPPORTED, and a layout
// that does not fit the product (dimensions, leading dimension below the
// rows, a pointer less aligned than the heuristic was promised) is
// CUBLAS_STATUS_INVALID_VALUE, so that a wrong descriptor fails here as it
// would on a GPU instead of computing something else.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "backend/cuda/emulation/runtime_state.h"

struct cublasLtContext {
  int unused;
};

namespace {

struct Desc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  int32_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
};

struct Layout {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};

struct Pref {
  uint64_t max_workspace = 0;
  uint32_t min_align[4] = {256, 256, 256, 256};  // A, B, C, D
};

// What the heuristic's "algorithm" records: the alignments it was promised.
struct Algo {
  uint32_t min_align[4];
};
static_assert(sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t));

Desc* D(cublasLtMatmulDesc_t d) { return reinterpret_cast<Desc*>(d); }
Layout* L(cublasLtMatrixLayout_t l) { return reinterpret_cast<Layout*>(l); }
Pref* P(cublasLtMatmulPreference_t p) { return reinterpret_cast<Pref*>(p); }

template <typename T>
bool Read(T* out, const void* buf, size_t bytes) {
  if (buf == nullptr || bytes != sizeof(T)) return false;
  std::memcpy(out, buf, sizeof(T));
  return true;
}

bool Operand(cudaDataType_t t) { return t == CUDA_R_32F || t == CUDA_R_16BF || t == CUDA_R_16F; }

double Load(const void* base, cudaDataType_t t, int64_t i) {
  switch (t) {
    case CUDA_R_16BF:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    case CUDA_R_16F:
      return __half2float(static_cast<const __half*>(base)[i]);
    default:
      return static_cast<const float*>(base)[i];
  }
}

struct Shape {
  int64_t m, n, k;
};

// The product's shape, if the descriptors describe one the emulator runs.
cublasStatus_t Check(const Desc& d, const Layout& a, const Layout& b, const Layout& c,
                     const Layout& dl, Shape* s) {
  if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!Operand(a.type) || a.type != b.type || c.type != CUDA_R_32F || dl.type != CUDA_R_32F) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (d.epilogue != CUBLASLT_EPILOGUE_DEFAULT && d.epilogue != CUBLASLT_EPILOGUE_BIAS) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const bool ta = d.trans_a == CUBLAS_OP_T, tb = d.trans_b == CUBLAS_OP_T;
  if ((!ta && d.trans_a != CUBLAS_OP_N) || (!tb && d.trans_b != CUBLAS_OP_N)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  s->m = static_cast<int64_t>(ta ? a.cols : a.rows);
  s->k = static_cast<int64_t>(ta ? a.rows : a.cols);
  const int64_t kb = static_cast<int64_t>(tb ? b.cols : b.rows);
  s->n = static_cast<int64_t>(tb ? b.rows : b.cols);
  if (kb != s->k || static_cast<int64_t>(dl.rows) != s->m ||
      static_cast<int64_t>(dl.cols) != s->n || c.rows != dl.rows || c.cols != dl.cols) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  for (const Layout* l : {&a, &b, &c, &dl}) {
    if (l->ld < static_cast<int64_t>(l->rows) || l->ld < 1) return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

uint32_t Alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 1;
  while (align < 256 && a % (2 * align) == 0) align *= 2;
  return a == 0 ? 256 : align;
}

// D = alpha op(A) op(B) + beta C (+ bias), for a checked shape.
void Product(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dl,
             const Shape& s, float alpha, float beta, const void* A, const void* B, const void* C,
             void* Dp) {
  const bool bias = d.epilogue == CUBLASLT_EPILOGUE_BIAS;
  const bool ta = d.trans_a == CUBLAS_OP_T, tb = d.trans_b == CUBLAS_OP_T;
  std::vector<float> out(static_cast<size_t>(s.m * s.n));
  for (int64_t j = 0; j < s.n; ++j) {
    for (int64_t i = 0; i < s.m; ++i) {
      double acc = 0;
      for (int64_t p = 0; p < s.k; ++p) {
        const double x = Load(A, a.type, ta ? p + i * a.ld : i + p * a.ld);
        const double y = Load(B, b.type, tb ? j + p * b.ld : p + j * b.ld);
        acc += x * y;
      }
      double v = alpha * acc;
      if (beta != 0.0f) v += beta * static_cast<double>(static_cast<const float*>(C)[i + j * c.ld]);
      if (bias) v += static_cast<const float*>(d.bias)[i];
      out[static_cast<size_t>(i + j * s.m)] = static_cast<float>(v);
    }
  }
  float* D_out = static_cast<float*>(Dp);
  for (int64_t j = 0; j < s.n; ++j) {
    for (int64_t i = 0; i < s.m; ++i) D_out[i + j * dl.ld] = out[static_cast<size_t>(i + j * s.m)];
  }
}

}  // namespace

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = new cublasLtContext{0};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "success";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "invalid value (emulator)";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "not supported (emulator)";
    default:
      return "error (emulator)";
  }
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  *desc = reinterpret_cast<cublasLtMatmulDesc_t>(new Desc{compute, scale});
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete D(desc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              size_t bytes) {
  Desc& d = *D(desc);
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      ok = Read(&d.trans_a, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_TRANSB:
      ok = Read(&d.trans_b, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      ok = Read(&d.epilogue, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      ok = Read(&d.bias, buf, bytes);
      break;
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  *layout = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete L(layout);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  *pref = reinterpret_cast<cublasLtMatmulPreference_t>(new Pref{});
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete P(pref);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, size_t bytes) {
  Pref& p = *P(pref);
  uint32_t ignored = 0;
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      ok = Read(&p.max_workspace, buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK:  // the emulator never splits K
      ok = Read(&ignored, buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
      ok = Read(&p.min_align[0], buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
      ok = Read(&p.min_align[1], buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
      ok = Read(&p.min_align[2], buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      ok = Read(&p.min_align[3], buf, bytes);
      break;
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* found) {
  if (handle == nullptr || requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  Shape s;
  const cublasStatus_t status = Check(*D(desc), *L(a), *L(b), *L(c), *L(d), &s);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  Algo algo;
  std::memcpy(algo.min_align, P(pref)->min_align, sizeof(algo.min_align));
  std::memcpy(&results[0].algo, &algo, sizeof(algo));
  results[0].workspaceSize = 0;
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *found = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                              const void* alpha_p, const void* A, cublasLtMatrixLayout_t a_desc,
                              const void* B, cublasLtMatrixLayout_t b_desc, const void* beta_p,
                              const void* C, cublasLtMatrixLayout_t c_desc, void* Dp,
                              cublasLtMatrixLayout_t d_desc, const cublasLtMatmulAlgo_t* algo_p,
                              void* /*workspace*/, size_t /*workspace_bytes*/,
                              cudaStream_t stream) {
  if (handle == nullptr || algo_p == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  // Copies: the descriptors may change (the bias pointer) before the product runs.
  const Desc d = *D(desc);
  const Layout a = *L(a_desc), b = *L(b_desc), c = *L(c_desc), dl = *L(d_desc);
  Shape s;
  const cublasStatus_t status = Check(d, a, b, c, dl, &s);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  Algo algo;
  std::memcpy(&algo, algo_p, sizeof(algo));
  const void* ptrs[4] = {A, B, C, Dp};
  for (int i = 0; i < 4; ++i) {
    if (Alignment(ptrs[i]) < algo.min_align[i]) return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (d.epilogue == CUBLASLT_EPILOGUE_BIAS && d.bias == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  // alpha and beta are read now (host pointers); the product runs in stream order.
  const float alpha = *static_cast<const float*>(alpha_p);
  const float beta = *static_cast<const float*>(beta_p);
  if (mingpt::cuda::emu::SkipCompute()) return CUBLAS_STATUS_SUCCESS;
  mingpt::cuda::emu::Enqueue(
      stream, [=] { Product(d, a, b, c, dl, s, alpha, beta, A, B, C, Dp); }, /*compute=*/true);
  return CUBLAS_STATUS_SUCCESS;
}
