// Shared checks and helpers for autodistil's CUDA kernels.
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace autodistil {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

inline void check(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

// A tensor argument: its name (for messages), dims and strides in elements.
inline void check_slice(const char* name, int64_t rows, int64_t cols, int64_t max_rows, int64_t max_cols,
                        int64_t row_stride, int64_t col_stride) {
  check(rows > 0 && cols > 0, std::string(name) + ": slice sizes must be positive, got (" +
        std::to_string(rows) + ", " + std::to_string(cols) + ")");
  check(rows <= max_rows && cols <= max_cols, std::string(name) + ": slice (" + std::to_string(rows) + ", " +
        std::to_string(cols) + ") exceeds the full tensor (" + std::to_string(max_rows) + ", " +
        std::to_string(max_cols) + ")");
  check(row_stride >= 1 && col_stride >= 1, std::string(name) + ": strides must be positive, got (" +
        std::to_string(row_stride) + ", " + std::to_string(col_stride) + ")");
}

inline void check_cuda(cudaError_t e, const char* where) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(where) + ": " + cudaGetErrorString(e));
}

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_grad_f(float x) {
  float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
  float pdf = __expf(-0.5f * x * x) * 0.3989422804014327f;
  return cdf + x * pdf;
}

#define AUTODISTIL_DISPATCH(dtype, ...)                                           \
  switch (dtype) {                                                                \
    case kF32: { using scalar_t = float; __VA_ARGS__; break; }                    \
    case kF16: { using scalar_t = __half; __VA_ARGS__; break; }                   \
    case kBF16: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; }           \
    default: throw std::invalid_argument("dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)"); \
  }

}  // namespace autodistil
