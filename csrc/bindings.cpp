// pybind11 bindings of autodistil._C: raw device pointers (as integers), sizes, strides in
// elements, dtype codes (0 fp32, 1 fp16, 2 bf16) and the CUDA stream handle. No torch headers.
// std::invalid_argument from a check reaches Python as ValueError, std::runtime_error as
// RuntimeError. Attention is not here: the CUDA backend runs the Triton flash kernel or SDPA
// (autodistil/ops/cuda_backend.py).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace autodistil {
bool has_cublaslt();
std::string cublaslt_soname();
int64_t cublaslt_header_version();
std::string cublaslt_load(const std::vector<std::string>&, bool);
std::string cublaslt_loaded_path();
int64_t cublaslt_runtime_version();
std::array<int64_t, 3> gemm_cache_stats();
void gemm_cache_clear();
void gemm_forward(int, uintptr_t, uintptr_t, int64_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, uintptr_t,
                  int64_t, uintptr_t);
void gemm_dx(int, uintptr_t, uintptr_t, int64_t, uintptr_t, int64_t, int64_t, int64_t, uintptr_t, int64_t, uintptr_t);
void gemm_dw(int, int, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, uintptr_t, int64_t,
             uintptr_t);
void gelu_forward(int, uintptr_t, uintptr_t, int64_t, uintptr_t);
void gelu_backward(int, uintptr_t, uintptr_t, uintptr_t, int64_t, uintptr_t);
void layernorm_forward(int, int, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t,
                       uintptr_t, int64_t, int64_t, double, uintptr_t);
int64_t layernorm_backward_rows(int64_t);
void layernorm_backward(int, int, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t,
                        uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, uintptr_t);
}  // namespace autodistil

static int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  using namespace autodistil;
  m.doc() = "autodistil CUDA kernels: cuBLASLt sliced GEMMs, exact GELU, sliced LayerNorm";
  m.def("device_count", &device_count, "CUDA devices visible to this build (0 without a GPU)");
  m.def("cuda_runtime_version", [] { int v = 0; cudaRuntimeGetVersion(&v); return v; });
  m.def("has_cublaslt", &has_cublaslt, "whether the build found cublasLt.h (the GEMMs need it)");
  m.def("build_info", [] {
    py::dict d;
    d["has_cublaslt"] = has_cublaslt();
    d["cublaslt_header_version"] = cublaslt_header_version();
    d["cublaslt_soname"] = cublaslt_soname();
    int v = 0;
    cudaRuntimeGetVersion(&v);
    d["cuda_runtime_version"] = v;
#ifdef AUTODISTIL_CUDA_ARCHS
    d["cuda_archs"] = std::string(AUTODISTIL_CUDA_ARCHS);
#endif
    return d;
  });
  m.def("cublaslt_soname", &cublaslt_soname);
  m.def("cublaslt_load", &cublaslt_load, py::arg("candidates"), py::arg("try_loaded") = true,
        "resolve cuBLASLt at run time; returns the path used, raises RuntimeError with the reasons");
  m.def("cublaslt_loaded_path", &cublaslt_loaded_path);
  m.def("cublaslt_runtime_version", &cublaslt_runtime_version);
  m.def("gemm_cache_stats", [] {
    auto s = gemm_cache_stats();
    py::dict d;
    d["plans"] = s[0];
    d["hits"] = s[1];
    d["misses"] = s[2];
    return d;
  });
  m.def("gemm_cache_clear", &gemm_cache_clear);
  m.def("gemm_forward", &gemm_forward);
  m.def("gemm_dx", &gemm_dx);
  m.def("gemm_dw", &gemm_dw);
  m.def("gelu_forward", &gelu_forward);
  m.def("gelu_backward", &gelu_backward);
  m.def("layernorm_forward", &layernorm_forward);
  m.def("layernorm_backward_rows", &layernorm_backward_rows);
  m.def("layernorm_backward", &layernorm_backward);
}
