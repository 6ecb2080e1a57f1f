// Exact (erf) GELU around the cuBLASLt GEMMs. cuBLASLt's GELU epilogues use the tanh
// approximation; BERT uses erf, and exported students must equal the supernet. So the GEMM writes
// the pre-activation (bias added by its BIAS epilogue, one rounding) and these elementwise kernels
// do the rest in fp32: forward y = gelu(pre), backward dpre = dy * gelu'(pre).
// 16-byte accesses when every pointer is 16-byte aligned and n is a multiple of the pack; a
// grid-stride loop over 64-bit indices.
#include "common.cuh"

namespace autodistil {

template <typename T, int P>
__global__ void gelu_fwd_kernel(const T* pre, T* y, int64_t packs) {  // y may be pre (in place)
  for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < packs; k += (int64_t)gridDim.x * blockDim.x) {
    float v[P];
    load_vec<T, P>(pre + k * P, v);
#pragma unroll
    for (int j = 0; j < P; ++j) v[j] = gelu_f(v[j]);
    store_vec<T, P>(y + k * P, v);
  }
}

template <typename T, int P>
__global__ void gelu_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ pre, T* __restrict__ out,
                                int64_t packs) {
  for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < packs; k += (int64_t)gridDim.x * blockDim.x) {
    float g[P], v[P];
    load_vec<T, P>(dy + k * P, g);
    load_vec<T, P>(pre + k * P, v);
#pragma unroll
    for (int j = 0; j < P; ++j) g[j] *= gelu_grad_f(v[j]);
    store_vec<T, P>(out + k * P, g);
  }
}

static unsigned grid_for(int64_t packs) {
  int64_t blocks = (packs + 255) / 256;
  return (unsigned)(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);  // the loop strides over the rest
}

void gelu_forward(int dtype, uintptr_t pre, uintptr_t y, int64_t n, uintptr_t stream) {
  check(n >= 0, "gelu_forward: n must be >= 0, got " + std::to_string(n));
  check_dtype(dtype, "gelu_forward: pre");
  if (n == 0) return;
  check(pre && y, "gelu_forward: pre and y must be non-null");
  AUTODISTIL_DISPATCH(dtype, {
    constexpr int P = 16 / sizeof(scalar_t);
    if (n % P == 0 && aligned16(pre) && aligned16(y))
      gelu_fwd_kernel<scalar_t, P><<<grid_for(n / P), 256, 0, (cudaStream_t)stream>>>(
          (const scalar_t*)pre, (scalar_t*)y, n / P);
    else
      gelu_fwd_kernel<scalar_t, 1><<<grid_for(n), 256, 0, (cudaStream_t)stream>>>(
          (const scalar_t*)pre, (scalar_t*)y, n);
  });
  check_cuda(cudaGetLastError(), "gelu_forward launch");
}

void gelu_backward(int dtype, uintptr_t dy, uintptr_t pre, uintptr_t out, int64_t n, uintptr_t stream) {
  check(n >= 0, "gelu_backward: n must be >= 0, got " + std::to_string(n));
  check_dtype(dtype, "gelu_backward: dy");
  if (n == 0) return;
  check(dy && pre && out, "gelu_backward: dy, pre and out must be non-null");
  AUTODISTIL_DISPATCH(dtype, {
    constexpr int P = 16 / sizeof(scalar_t);
    if (n % P == 0 && aligned16(dy) && aligned16(pre) && aligned16(out))
      gelu_bwd_kernel<scalar_t, P><<<grid_for(n / P), 256, 0, (cudaStream_t)stream>>>(
          (const scalar_t*)dy, (const scalar_t*)pre, (scalar_t*)out, n / P);
    else
      gelu_bwd_kernel<scalar_t, 1><<<grid_for(n), 256, 0, (cudaStream_t)stream>>>(
          (const scalar_t*)dy, (const scalar_t*)pre, (scalar_t*)out, n);
  });
  check_cuda(cudaGetLastError(), "gelu_backward launch");
}

}  // namespace autodistil
