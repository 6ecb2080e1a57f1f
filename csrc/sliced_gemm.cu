// Sliced GEMM: C[M, N] (+)= act(A[M, K] @ B[K, N] + bias[N]) with every operand addressed by
// strides, so W[:o, :i] is read in place through the full weight's row stride (no copy), and
// dW accumulates straight into W.grad[:o, :i] (ACCUMULATE, beta = 1). Shared-memory tiled,
// fp32 accumulation, 64x64 tiles of 4x4 per thread, epilogues: bias, bias + exact GELU (storing
// the pre-activation for the backward).
#include "common.cuh"

namespace autodistil {

constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;

template <typename T>
__global__ void __launch_bounds__(256) gemm_kernel(const T* __restrict__ A, const T* __restrict__ B, T* C,
                                                   const T* __restrict__ bias, T* pre, int M, int N, int K,
                                                   int64_t s_am, int64_t s_ak, int64_t s_bk, int64_t s_bn,
                                                   int64_t s_cm, int64_t s_cn, int act, int accumulate) {
  __shared__ float As[BK][BM + 1];
  __shared__ float Bs[BK][BN + 1];
  const int tid = threadIdx.x;
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  float acc[TM][TN] = {};
  for (int k0 = 0; k0 < K; k0 += BK) {
    for (int e = tid; e < BM * BK; e += 256) {
      int mm = e / BK, kk = e % BK;
      int gm = m0 + mm, gk = k0 + kk;
      As[kk][mm] = (gm < M && gk < K) ? to_f(A[gm * s_am + gk * s_ak]) : 0.f;
    }
    for (int e = tid; e < BK * BN; e += 256) {
      int kk = e / BN, nn = e % BN;
      int gk = k0 + kk, gn = n0 + nn;
      Bs[kk][nn] = (gk < K && gn < N) ? to_f(B[gk * s_bk + gn * s_bn]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[kk][ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[kk][tx * TN + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    int gm = m0 + ty * TM + i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      int gn = n0 + tx * TN + j;
      if (gn >= N) continue;
      float v = acc[i][j];
      if (bias) v += to_f(bias[gn]);
      if (act == 1) {
        if (pre) pre[(int64_t)gm * N + gn] = from_f<T>(v);
        v = gelu_f(v);
      }
      T* dst = C + gm * s_cm + gn * s_cn;
      if (accumulate) v += to_f(*dst);
      *dst = from_f<T>(v);
    }
  }
}

template <typename T>
__global__ void gelu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ pre, T* out, int64_t n) {
  int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = from_f<T>(to_f(dy[i]) * gelu_grad_f(to_f(pre[i])));
}

void gemm(int dtype, uintptr_t a, uintptr_t b, uintptr_t c, uintptr_t bias, uintptr_t pre, int64_t M, int64_t N,
          int64_t K, int64_t s_am, int64_t s_ak, int64_t s_bk, int64_t s_bn, int64_t s_cm, int64_t s_cn, int act,
          bool accumulate, uintptr_t stream) {
  check(M > 0 && N > 0 && K > 0, "gemm: M, N, K must be positive, got " + std::to_string(M) + ", " +
        std::to_string(N) + ", " + std::to_string(K));
  check(act == 0 || act == 1, "gemm: act must be 0 (none) or 1 (gelu)");
  check(a && b && c, "gemm: A, B and C pointers must be non-null");
  dim3 grid((N + BN - 1) / BN, (M + BM - 1) / BM);
  AUTODISTIL_DISPATCH(dtype, gemm_kernel<scalar_t><<<grid, 256, 0, (cudaStream_t)stream>>>(
      (const scalar_t*)a, (const scalar_t*)b, (scalar_t*)c, (const scalar_t*)bias, (scalar_t*)pre, (int)M, (int)N,
      (int)K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn, act, accumulate ? 1 : 0));
  check_cuda(cudaGetLastError(), "gemm launch");
}

void gelu_backward(int dtype, uintptr_t dy, uintptr_t pre, uintptr_t out, int64_t n, uintptr_t stream) {
  check(n >= 0, "gelu_backward: n must be >= 0");
  if (n == 0) return;
  AUTODISTIL_DISPATCH(dtype, gelu_backward_kernel<scalar_t><<<(n + 255) / 256, 256, 0, (cudaStream_t)stream>>>(
      (const scalar_t*)dy, (const scalar_t*)pre, (scalar_t*)out, n));
  check_cuda(cudaGetLastError(), "gelu_backward launch");
}

}  // namespace autodistil
