// Shared checks and helpers for autodistil's CUDA kernels. The host part (checks, dtype codes,
// device guard) also compiles with the plain C++ compiler (csrc/*.cpp); the device helpers are
// only seen by nvcc.
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace autodistil {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

inline const char* dtype_name(int d) {
  return d == kF32 ? "fp32" : d == kF16 ? "fp16" : d == kBF16 ? "bf16" : "unknown";
}

// std::invalid_argument reaches Python as ValueError (pybind11's translation).
inline void check(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

inline void check_dtype(int d, const char* name) {
  check(d == kF32 || d == kF16 || d == kBF16, std::string(name) + ": dtype code " + std::to_string(d) +
        " is not allowed: 0 (fp32), 1 (fp16) or 2 (bf16)");
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

inline bool aligned16(uintptr_t p) { return p % 16 == 0; }

#if defined(__CUDACC__)
template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Exact (erf) GELU as BERT defines it, and its derivative; accurate libm calls (no fast math).
__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_grad_f(float x) {
  float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
  float pdf = expf(-0.5f * x * x) * 0.3989422804014327f;
  return cdf + x * pdf;
}

// P consecutive elements of T <-> floats, with 16-byte accesses when P * sizeof(T) is a multiple
// of 16 (the caller guarantees the address is 16-byte aligned then), scalar accesses otherwise.
template <typename T, int P>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float* out) {
  if constexpr (P * sizeof(T) % 16 == 0) {
    constexpr int E = 16 / sizeof(T);
#pragma unroll
    for (int k = 0; k < P / E; ++k) {
      alignas(16) T e[E];
      *reinterpret_cast<uint4*>(e) = __ldg(reinterpret_cast<const uint4*>(p) + k);
#pragma unroll
      for (int j = 0; j < E; ++j) out[k * E + j] = to_f(e[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < P; ++j) out[j] = to_f(p[j]);
  }
}

template <typename T, int P>
__device__ __forceinline__ void store_vec(T* p, const float* in) {
  if constexpr (P * sizeof(T) % 16 == 0) {
    constexpr int E = 16 / sizeof(T);
#pragma unroll
    for (int k = 0; k < P / E; ++k) {
      alignas(16) T e[E];
#pragma unroll
      for (int j = 0; j < E; ++j) e[j] = from_f<T>(in[k * E + j]);
      reinterpret_cast<uint4*>(p)[k] = *reinterpret_cast<const uint4*>(e);
    }
  } else {
#pragma unroll
    for (int j = 0; j < P; ++j) p[j] = from_f<T>(in[j]);
  }
}
#endif  // __CUDACC__

#define AUTODISTIL_DISPATCH(dtype, ...)                                           \
  switch (dtype) {                                                                \
    case kF32: { using scalar_t = float; __VA_ARGS__; break; }                    \
    case kF16: { using scalar_t = __half; __VA_ARGS__; break; }                   \
    case kBF16: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; }           \
    default: throw std::invalid_argument("dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)"); \
  }

// Parameters (LayerNorm gamma/beta) may be fp32 masters while activations are bf16/fp16 (the
// mixed-precision contract): weight_t is float, or scalar_t itself.
#define AUTODISTIL_DISPATCH_PARAM(wdtype, dtype, name, ...)                                        \
  if ((wdtype) == kF32) { using weight_t = float; __VA_ARGS__; }                                   \
  else if ((wdtype) == (dtype)) { using weight_t = scalar_t; __VA_ARGS__; }                        \
  else throw std::invalid_argument(std::string(name) + ": dtype " + dtype_name(wdtype) +           \
                                   " is not allowed with " + dtype_name(dtype) +                   \
                                   " activations: use fp32 or the activation dtype");

}  // namespace autodistil
