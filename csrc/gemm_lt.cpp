// Sliced GEMMs through cuBLASLt, resolved at run time (dlopen), so importing autodistil._C never
// needs the library and a machine without it gets a clear reason instead of an import error.
//
// Row-major tensors are column-major transposes: a row-major (R, C) matrix with row stride ld is
// the column-major (C, R) matrix with leading dimension ld. With W the full (O_max, I_max) weight
// (row stride ldw = I_max) and its active slice W[:o, :i] addressed in place:
//   forward  y (N, o) = x (N, i) @ W[:o, :i]^T (+ bias[:o] by the BIAS epilogue)
//            col-major: y^T (o x N) = op_T(W^T slice (i x o, ldw)) * x^T (i x N, ld i)      "TN"
//   dx       dx (N, i) = dy (N, o) @ W[:o, :i]
//            col-major: dx^T (i x N) = W^T slice (i x o, ldw) * dy^T (o x N, ld o)         "NN"
//   dW       dst[:o, :i] += dy^T (o x N) @ x (N x i), dst row stride ldd, beta = 1
//            col-major: dst^T slice (i x o, ldd) += x^T (i x N, ld i) * op_T(dy^T (o x N))  "NT"
// Compute type CUBLAS_COMPUTE_32F with fp32 alpha/beta for every dtype: fp32 operands give plain
// fp32 GEMMs (no TF32), bf16/fp16 operands use tensor cores with fp32 accumulation, and dW can
// accumulate bf16/fp16 products into an fp32 gradient (C = D = fp32).
//
// Plans (matmul descriptor, layouts, heuristic's algorithm) are cached per (device, op, dtypes,
// shape, leading dimensions, pointer alignments, workspace size). The bias pointer is set on the
// cached descriptor at every call (its alignment is part of the key).
#include "common.cuh"

#include <dlfcn.h>

#include <array>
#include <cstdio>
#include <map>
#include <mutex>
#include <vector>

#if AUTODISTIL_HAS_CUBLASLT
#include <cublasLt.h>
#endif

namespace autodistil {

#if AUTODISTIL_HAS_CUBLASLT

namespace {

std::string soname() { return "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR); }

// Function pointers typed by the header's own declarations.
struct Api {
  void* lib = nullptr;
  std::string path;
  decltype(&cublasLtGetVersion) get_version = nullptr;
  decltype(&cublasLtGetStatusString) status_string = nullptr;
  decltype(&cublasLtCreate) create = nullptr;
  decltype(&cublasLtMatmulDescCreate) desc_create = nullptr;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy = nullptr;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set = nullptr;
  decltype(&cublasLtMatrixLayoutCreate) layout_create = nullptr;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy = nullptr;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create = nullptr;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy = nullptr;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set = nullptr;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic = nullptr;
  decltype(&cublasLtMatmul) matmul = nullptr;
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

using Key = std::array<int64_t, 20>;

std::mutex g_mu;
Api g_api;
std::map<int, cublasLtHandle_t> g_handles;  // per device
std::map<Key, Plan> g_plans;
int64_t g_hits = 0, g_misses = 0;
constexpr size_t kMaxPlans = 4096;

template <typename F>
bool sym(void* lib, const char* name, F& out) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  return out != nullptr;
}

// Fills g_api from an open library handle; on failure returns the reason (and leaves g_api empty).
std::string bind_api(void* lib, const std::string& path) {
  Api a;
  a.lib = lib;
  a.path = path;
  const char* missing = nullptr;
#define AUTODISTIL_SYM(field, name) \
  if (!missing && !sym(lib, #name, a.field)) missing = #name;
  AUTODISTIL_SYM(get_version, cublasLtGetVersion)
  AUTODISTIL_SYM(status_string, cublasLtGetStatusString)
  AUTODISTIL_SYM(create, cublasLtCreate)
  AUTODISTIL_SYM(desc_create, cublasLtMatmulDescCreate)
  AUTODISTIL_SYM(desc_destroy, cublasLtMatmulDescDestroy)
  AUTODISTIL_SYM(desc_set, cublasLtMatmulDescSetAttribute)
  AUTODISTIL_SYM(layout_create, cublasLtMatrixLayoutCreate)
  AUTODISTIL_SYM(layout_destroy, cublasLtMatrixLayoutDestroy)
  AUTODISTIL_SYM(pref_create, cublasLtMatmulPreferenceCreate)
  AUTODISTIL_SYM(pref_destroy, cublasLtMatmulPreferenceDestroy)
  AUTODISTIL_SYM(pref_set, cublasLtMatmulPreferenceSetAttribute)
  AUTODISTIL_SYM(heuristic, cublasLtMatmulAlgoGetHeuristic)
  AUTODISTIL_SYM(matmul, cublasLtMatmul)
#undef AUTODISTIL_SYM
  if (missing) return path + " lacks the symbol " + missing;
  const size_t v = a.get_version();
  if ((int64_t)(v / 10000) != CUBLAS_VER_MAJOR)
    return path + " is cuBLASLt " + std::to_string(v) + ", but autodistil._C was built against major version " +
           std::to_string(CUBLAS_VER_MAJOR);
  g_api = a;
  return "";
}

const char* status_str(cublasStatus_t s) {
  return g_api.status_string ? g_api.status_string(s) : "unknown cuBLAS status";
}

void lt_check(cublasStatus_t s, const std::string& where) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error("cuBLASLt " + where + " failed: " + status_str(s) + " (status " +
                             std::to_string((int)s) + ")");
}

void require_loaded() {
  if (!g_api.lib)
    throw std::runtime_error("cuBLASLt is not loaded: call autodistil._C.cublaslt_load first (the cuda backend "
                             "does it when it starts)");
}

cudaDataType_t cuda_type(int d) {
  switch (d) {
    case kF32: return CUDA_R_32F;
    case kF16: return CUDA_R_16F;
    case kBF16: return CUDA_R_16BF;
  }
  throw std::invalid_argument("dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
}

int64_t alignment(const void* p) {  // largest power of two dividing the address, capped at 256
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  int64_t a = 1;
  while (a < 256 && v % (uintptr_t)(2 * a) == 0) a *= 2;
  return a;
}

cublasLtHandle_t handle_for(int device) {
  auto it = g_handles.find(device);
  if (it != g_handles.end()) return it->second;
  cublasLtHandle_t h = nullptr;
  lt_check(g_api.create(&h), "cublasLtCreate");
  g_handles[device] = h;
  return h;
}

void destroy_plan(Plan& p) {
  if (p.a) g_api.layout_destroy(p.a);
  if (p.b) g_api.layout_destroy(p.b);
  if (p.d) g_api.layout_destroy(p.d);
  if (p.desc) g_api.desc_destroy(p.desc);
  p = Plan{};
}

void clear_plans_locked() {
  for (auto& kv : g_plans) destroy_plan(kv.second);
  g_plans.clear();
}

// D (m x n, ldd, type dt) = op_a(A) * op_b(B) [+ bias (m,)] + beta * D, column-major, fp32 compute.
void lt_matmul(int op, int ab_dtype, int d_dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
               const void* A, int64_t lda, const void* B, int64_t ldb, void* D, int64_t ldd, float beta,
               const void* bias, uintptr_t workspace, int64_t workspace_size, uintptr_t stream) {
  std::lock_guard<std::mutex> lock(g_mu);
  require_loaded();
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  const cudaDataType_t tab = cuda_type(ab_dtype), td = cuda_type(d_dtype);
  const Key key{device, op, ab_dtype, d_dtype, trans_a, trans_b, m, n, k, lda, ldb, ldd, bias != nullptr,
                alignment(A), alignment(B), alignment(D), bias ? alignment(bias) : 0, workspace_size,
                beta != 0.f, 0};
  auto it = g_plans.find(key);
  if (it == g_plans.end()) {
    ++g_misses;
    if (g_plans.size() >= kMaxPlans) clear_plans_locked();
    Plan p;
    try {
      lt_check(g_api.desc_create(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
      const cublasOperation_t opa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, opb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
      lt_check(g_api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)), "set TRANSA");
      lt_check(g_api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)), "set TRANSB");
      if (bias) {
        // Bias elements have D's type (cublasLt.h, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE): the caller
        // passes a bias in the output dtype.
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        lt_check(g_api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), "set EPILOGUE");
        lt_check(g_api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)), "set BIAS_POINTER");
      }
      // Stored (un-transposed) shapes of A and B, column-major.
      lt_check(g_api.layout_create(&p.a, tab, trans_a ? k : m, trans_a ? m : k, lda), "layout A");
      lt_check(g_api.layout_create(&p.b, tab, trans_b ? n : k, trans_b ? k : n, ldb), "layout B");
      lt_check(g_api.layout_create(&p.d, td, m, n, ldd), "layout C/D");
      cublasLtMatmulPreference_t pref = nullptr;
      lt_check(g_api.pref_create(&pref), "cublasLtMatmulPreferenceCreate");
      const uint64_t ws = (uint64_t)workspace_size;
      const uint32_t al_a = (uint32_t)alignment(A), al_b = (uint32_t)alignment(B), al_d = (uint32_t)alignment(D);
      cublasStatus_t st = g_api.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
      if (st == CUBLAS_STATUS_SUCCESS) st = g_api.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
      if (st == CUBLAS_STATUS_SUCCESS) st = g_api.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
      if (st == CUBLAS_STATUS_SUCCESS) st = g_api.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d));
      if (st == CUBLAS_STATUS_SUCCESS) st = g_api.pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d));
      cublasLtMatmulHeuristicResult_t res{};
      int found = 0;
      if (st == CUBLAS_STATUS_SUCCESS)
        st = g_api.heuristic(handle_for(device), p.desc, p.a, p.b, p.d, p.d, pref, 1, &res, &found);
      g_api.pref_destroy(pref);
      lt_check(st, "preference / cublasLtMatmulAlgoGetHeuristic");
      if (found < 1 || res.state != CUBLAS_STATUS_SUCCESS)
        throw std::runtime_error(
            "cuBLASLt found no algorithm for op " + std::to_string(op) + " (m=" + std::to_string(m) + ", n=" +
            std::to_string(n) + ", k=" + std::to_string(k) + ", lda=" + std::to_string(lda) + ", ldb=" +
            std::to_string(ldb) + ", ldd=" + std::to_string(ldd) + ", A/B " + dtype_name(ab_dtype) + ", D " +
            dtype_name(d_dtype) + ", bias " + (bias ? "yes" : "no") + ", alignments " + std::to_string(al_a) + "/" +
            std::to_string(al_b) + "/" + std::to_string(al_d) + ")");
      p.algo = res.algo;
      p.workspace = res.workspaceSize;
    } catch (...) {
      destroy_plan(p);
      throw;
    }
    it = g_plans.emplace(key, p).first;
  } else {
    ++g_hits;
    if (bias)
      lt_check(g_api.desc_set(it->second.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)),
               "set BIAS_POINTER");
  }
  const Plan& p = it->second;
  const float alpha = 1.f;
  lt_check(g_api.matmul(handle_for(device), p.desc, &alpha, A, p.a, B, p.b, &beta, D, p.d, D, p.d, &p.algo,
                        reinterpret_cast<void*>(workspace), (size_t)workspace_size, (cudaStream_t)stream),
           "cublasLtMatmul");
}

void check_workspace(uintptr_t ws, int64_t size, const char* who) {
  check(size >= 0 && (size == 0 || ws), std::string(who) + ": workspace must be a non-null buffer of >= 0 bytes");
  check(ws % 256 == 0, std::string(who) + ": workspace must be 256-byte aligned");
}

}  // namespace

bool has_cublaslt() { return true; }
std::string cublaslt_soname() { return soname(); }
int64_t cublaslt_header_version() { return CUBLAS_VERSION; }

// Resolves cuBLASLt: first a copy already loaded in the process (torch's CUDA build loads it), then
// each candidate path in order (the caller passes the nvidia wheel's lib folder, an override, and
// the plain soname last). Returns the path used; throws RuntimeError with every reason otherwise.
std::string cublaslt_load(const std::vector<std::string>& candidates, bool try_loaded) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_api.lib) return g_api.path;
  std::string why;
  if (try_loaded) {
    if (void* h = dlopen(soname().c_str(), RTLD_NOW | RTLD_NOLOAD)) {
      const std::string r = bind_api(h, soname() + " (already loaded)");
      if (r.empty()) return g_api.path;
      why += "\n  " + r;
    }
  }
  for (const auto& c : candidates) {
    dlerror();
    void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      why += "\n  " + c + ": " + (e ? e : "not found");
      continue;
    }
    const std::string r = bind_api(h, c);
    if (r.empty()) return g_api.path;
    why += "\n  " + r;
  }
  throw std::runtime_error(soname() + " not found or unusable: pip install nvidia-cublas (major version " +
                           std::to_string(CUBLAS_VER_MAJOR) + "), or set AUTODISTIL_CUBLAS_ROOT to a folder with lib/" +
                           soname() + ". Tried:" + why);
}

std::string cublaslt_loaded_path() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_api.path;
}

int64_t cublaslt_runtime_version() {
  std::lock_guard<std::mutex> lock(g_mu);
  require_loaded();
  return (int64_t)g_api.get_version();
}

std::array<int64_t, 3> gemm_cache_stats() {
  std::lock_guard<std::mutex> lock(g_mu);
  return {(int64_t)g_plans.size(), g_hits, g_misses};
}

void gemm_cache_clear() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_api.lib) clear_plans_locked();
  g_hits = g_misses = 0;
}

// y (N, o) = x (N, i) @ W[:o, :i]^T (+ bias[:o]); x and y contiguous rows, W row stride ldw; x, W,
// bias and y in one dtype (the launcher passes a low-precision shadow of an fp32 weight).
void gemm_forward(int dtype, uintptr_t x, uintptr_t w, int64_t ldw, uintptr_t bias, uintptr_t y, int64_t N,
                  int64_t o, int64_t i, uintptr_t ws, int64_t ws_size, uintptr_t stream) {
  check_dtype(dtype, "gemm_forward: x");
  check(N >= 0 && o > 0 && i > 0, "gemm_forward: need N >= 0, o > 0, i > 0; got N=" + std::to_string(N) + ", o=" +
        std::to_string(o) + ", i=" + std::to_string(i));
  check(ldw >= i, "gemm_forward: weight row stride " + std::to_string(ldw) + " < in_features " + std::to_string(i));
  if (N == 0) return;
  check(x && w && y, "gemm_forward: x, weight and y must be non-null");
  check_workspace(ws, ws_size, "gemm_forward");
  lt_matmul(0, dtype, dtype, true, false, o, N, i, (const void*)w, ldw, (const void*)x, i, (void*)y, o, 0.f,
            (const void*)bias, ws, ws_size, stream);
}

// dx (N, i) = dy (N, o) @ W[:o, :i].
void gemm_dx(int dtype, uintptr_t dy, uintptr_t w, int64_t ldw, uintptr_t dx, int64_t N, int64_t o, int64_t i,
             uintptr_t ws, int64_t ws_size, uintptr_t stream) {
  check_dtype(dtype, "gemm_dx: dy");
  check(N >= 0 && o > 0 && i > 0, "gemm_dx: need N >= 0, o > 0, i > 0; got N=" + std::to_string(N) + ", o=" +
        std::to_string(o) + ", i=" + std::to_string(i));
  check(ldw >= i, "gemm_dx: weight row stride " + std::to_string(ldw) + " < in_features " + std::to_string(i));
  if (N == 0) return;
  check(dy && w && dx, "gemm_dx: dy, weight and dx must be non-null");
  check_workspace(ws, ws_size, "gemm_dx");
  lt_matmul(1, dtype, dtype, false, false, i, N, o, (const void*)w, ldw, (const void*)dy, o, (void*)dx, i, 0.f,
            nullptr, ws, ws_size, stream);
}

// dst[:o, :i] += dy (N, o)^T @ x (N, i), dst row stride ldd, dst dtype dst_dtype (fp32 grads from
// bf16/fp16 activations: beta = 1 accumulation in fp32).
void gemm_dw(int dtype, int dst_dtype, uintptr_t dy, uintptr_t x, uintptr_t dst, int64_t ldd, int64_t N, int64_t o,
             int64_t i, uintptr_t ws, int64_t ws_size, uintptr_t stream) {
  check_dtype(dtype, "gemm_dw: dy");
  check_dtype(dst_dtype, "gemm_dw: dst");
  check(dst_dtype == dtype || dst_dtype == kF32, std::string("gemm_dw: dst dtype ") + dtype_name(dst_dtype) +
        " is not allowed with " + dtype_name(dtype) + " activations: use fp32 or the activation dtype");
  check(N >= 0 && o > 0 && i > 0, "gemm_dw: need N >= 0, o > 0, i > 0; got N=" + std::to_string(N) + ", o=" +
        std::to_string(o) + ", i=" + std::to_string(i));
  check(ldd >= i, "gemm_dw: dst row stride " + std::to_string(ldd) + " < in_features " + std::to_string(i));
  if (N == 0) return;
  check(dy && x && dst, "gemm_dw: dy, x and dst must be non-null");
  check_workspace(ws, ws_size, "gemm_dw");
  lt_matmul(2, dtype, dst_dtype, false, true, i, o, N, (const void*)x, i, (const void*)dy, o, (void*)dst, ldd, 1.f,
            nullptr, ws, ws_size, stream);
}

#else  // built without cublasLt.h

namespace {
[[noreturn]] void no_header() {
  throw std::runtime_error("autodistil._C was built without cublasLt.h: pip install nvidia-cublas (or set "
                           "AUTODISTIL_CUBLAS_ROOT), then reinstall autodistil");
}
}  // namespace

bool has_cublaslt() { return false; }
std::string cublaslt_soname() { return ""; }
int64_t cublaslt_header_version() { return 0; }
std::string cublaslt_load(const std::vector<std::string>&, bool) { no_header(); }
std::string cublaslt_loaded_path() { return ""; }
int64_t cublaslt_runtime_version() { no_header(); }
std::array<int64_t, 3> gemm_cache_stats() { return {0, 0, 0}; }
void gemm_cache_clear() {}
void gemm_forward(int, uintptr_t, uintptr_t, int64_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, uintptr_t,
                  int64_t, uintptr_t) { no_header(); }
void gemm_dx(int, uintptr_t, uintptr_t, int64_t, uintptr_t, int64_t, int64_t, int64_t, uintptr_t, int64_t,
             uintptr_t) { no_header(); }
void gemm_dw(int, int, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, uintptr_t, int64_t,
             uintptr_t) { no_header(); }

#endif

}  // namespace autodistil
