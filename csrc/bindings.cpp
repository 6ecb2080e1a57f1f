// pybind11 bindings of autodistil._C: raw device pointers (as integers), sizes, strides in
// elements, dtype codes (0 fp32, 1 fp16, 2 bf16) and the CUDA stream handle.
#include <pybind11/pybind11.h>
#include <cuda_runtime.h>
#include <cstdint>
#include <string>

namespace autodistil {
void gemm(int, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, int64_t,
          int64_t, int64_t, int64_t, int64_t, int, bool, uintptr_t);
void gelu_backward(int, uintptr_t, uintptr_t, uintptr_t, int64_t, uintptr_t);
void layernorm_forward(int, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t,
                       int64_t, int64_t, double, uintptr_t);
void layernorm_backward(int, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t,
                        int64_t, int64_t, int64_t, uintptr_t);
void attention_forward(int, uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, uintptr_t, uintptr_t, uintptr_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, uintptr_t);
void attention_backward(int, uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, uintptr_t, uintptr_t, uintptr_t,
                        uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                        int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, uintptr_t);
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
  m.doc() = "autodistil CUDA kernels: sliced GEMM, GELU backward, sliced LayerNorm, attention";
  m.def("device_count", &device_count, "CUDA devices visible to this build (0 without a GPU)");
  m.def("cuda_runtime_version", [] { int v = 0; cudaRuntimeGetVersion(&v); return v; });
  m.def("gemm", &autodistil::gemm);
  m.def("gelu_backward", &autodistil::gelu_backward);
  m.def("layernorm_forward", &autodistil::layernorm_forward);
  m.def("layernorm_backward", &autodistil::layernorm_backward);
  m.def("attention_forward", &autodistil::attention_forward);
  m.def("attention_backward", &autodistil::attention_backward);
}
