// Attention for any head count and head dim <= 128 (templated on BD = 32 / 64 / 128; the actual
// d is masked inside the kernel, never padded in memory), with a key padding mask.
// q, k, v: (B, A, T, d) addressed by strides (the model's head-split views are not copied).
// Forward: one block per (b, a, query row): scores, softmax (LSE kept), context, and optionally
// the probability row itself (attention-map distillation needs it: no second pass).
// Backward: recomputes P from the LSE; dQ per row, dK/dV accumulated with fp32 atomics.
#include "common.cuh"

namespace autodistil {

struct Strides { int64_t b, a, t; };

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

__device__ float block_reduce(float v, float* sh, bool is_max) {
  for (int o = 16; o > 0; o >>= 1) {
    float u = __shfl_xor_sync(0xffffffff, v, o);
    v = is_max ? fmaxf(v, u) : v + u;
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nw ? sh[lane] : (is_max ? -INFINITY : 0.f);
    for (int o = 16; o > 0; o >>= 1) {
      float u = __shfl_xor_sync(0xffffffff, v, o);
      v = is_max ? fmaxf(v, u) : v + u;
    }
    if (lane == 0) sh[0] = v;
  }
  __syncthreads();
  float r = sh[0];
  __syncthreads();
  return r;
}

// scores of query row i against all keys into s[] (masked keys -> -inf); returns nothing
template <typename T, int BD>
__device__ void row_scores(const T* q, const T* k, const int* mask, int64_t mask_b, Strides sk, int b, int a, int T_,
                           int D, float scale, float* qs, float* s) {
  for (int j = threadIdx.x; j < T_; j += blockDim.x) {
    bool ok = !mask || mask[b * mask_b + j] != 0;
    float acc = 0.f;
    if (ok) {
      const T* kj = k + b * sk.b + a * sk.a + (int64_t)j * sk.t;
#pragma unroll 8
      for (int d = 0; d < BD; ++d)
        if (d < D) acc += qs[d] * to_f(kj[d]);
    }
    s[j] = ok ? acc * scale : -INFINITY;
  }
  __syncthreads();
}

template <typename T, int BD>
__global__ void attn_fwd(const T* q, const T* k, const T* v, const int* mask, int64_t mask_b, T* o, float* lse,
                         T* probs, int A, int T_, int D, float scale, Strides sq, Strides sk, Strides sv) {
  extern __shared__ float s[];   // T_ scores
  __shared__ float qs[BD];
  __shared__ float sh[32];
  const int i = blockIdx.x, bh = blockIdx.y, b = bh / A, a = bh % A;
  const T* qi = q + b * sq.b + a * sq.a + (int64_t)i * sq.t;
  for (int d = threadIdx.x; d < BD; d += blockDim.x) qs[d] = d < D ? to_f(qi[d]) : 0.f;
  __syncthreads();
  row_scores<T, BD>(q, k, mask, mask_b, sk, b, a, T_, D, scale, qs, s);
  float m = -INFINITY;
  for (int j = threadIdx.x; j < T_; j += blockDim.x) m = fmaxf(m, s[j]);
  m = block_reduce(m, sh, true);
  const float msafe = m == -INFINITY ? 0.f : m;
  float l = 0.f;
  for (int j = threadIdx.x; j < T_; j += blockDim.x) {
    float p = __expf(s[j] - msafe);
    s[j] = p;
    l += p;
  }
  l = block_reduce(l, sh, false);
  const float inv = l > 0.f ? 1.f / l : 0.f;
  for (int j = threadIdx.x; j < T_; j += blockDim.x) {
    s[j] *= inv;
    if (probs) probs[((int64_t)bh * T_ + i) * T_ + j] = from_f<T>(s[j]);
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < T_; ++j) acc += s[j] * to_f(v[b * sv.b + a * sv.a + (int64_t)j * sv.t + d]);
    o[((int64_t)bh * T_ + i) * D + d] = from_f<T>(acc);
  }
  if (threadIdx.x == 0) lse[(int64_t)bh * T_ + i] = msafe + logf(l > 0.f ? l : 1.f);
}

template <typename T, int BD>
__global__ void attn_bwd(const T* q, const T* k, const T* v, const int* mask, int64_t mask_b, const T* o,
                         const T* dout, const float* lse, T* dq, float* dk, float* dv, int A, int T_, int D,
                         float scale, Strides sq, Strides sk, Strides sv) {
  extern __shared__ float s[];   // 2 * T_: p, then ds
  float* ds = s + T_;
  __shared__ float qs[BD], dos[BD];
  __shared__ float sh[32];
  const int i = blockIdx.x, bh = blockIdx.y, b = bh / A, a = bh % A;
  const int64_t row = (int64_t)bh * T_ + i;
  const T* qi = q + b * sq.b + a * sq.a + (int64_t)i * sq.t;
  float part = 0.f;
  for (int d = threadIdx.x; d < BD; d += blockDim.x) {
    qs[d] = d < D ? to_f(qi[d]) : 0.f;
    dos[d] = d < D ? to_f(dout[row * D + d]) : 0.f;
    if (d < D) part += dos[d] * to_f(o[row * D + d]);
  }
  const float delta = block_reduce(part, sh, false);
  row_scores<T, BD>(q, k, mask, mask_b, sk, b, a, T_, D, scale, qs, s);
  const float L = lse[row];
  for (int j = threadIdx.x; j < T_; j += blockDim.x) {
    float p = s[j] == -INFINITY ? 0.f : __expf(s[j] - L);
    const T* vj = v + b * sv.b + a * sv.a + (int64_t)j * sv.t;
    float dp = 0.f;
    for (int d = 0; d < D; ++d) dp += dos[d] * to_f(vj[d]);
    s[j] = p;
    ds[j] = p * (dp - delta);
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < T_; ++j) acc += ds[j] * to_f(k[b * sk.b + a * sk.a + (int64_t)j * sk.t + d]);
    dq[row * D + d] = from_f<T>(acc * scale);
  }
  for (int e = threadIdx.x; e < T_ * D; e += blockDim.x) {
    int j = e / D, d = e % D;
    if (s[j] != 0.f) {
      atomicAdd(&dv[((int64_t)bh * T_ + j) * D + d], s[j] * dos[d]);
      atomicAdd(&dk[((int64_t)bh * T_ + j) * D + d], ds[j] * qs[d] * scale);
    }
  }
}

#define AUTODISTIL_HEAD_DIM(D, ...)                               \
  if (D <= 32) { constexpr int BD = 32; __VA_ARGS__; }            \
  else if (D <= 64) { constexpr int BD = 64; __VA_ARGS__; }       \
  else if (D <= 128) { constexpr int BD = 128; __VA_ARGS__; }     \
  else throw std::invalid_argument("attention: head dim " + std::to_string(D) + " > 128 is not supported");

void attention_forward(int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, int64_t mask_b, uintptr_t o,
                       uintptr_t lse, uintptr_t probs, int64_t B, int64_t A, int64_t T, int64_t D,
                       int64_t sqb, int64_t sqa, int64_t sqt, int64_t skb, int64_t ska, int64_t skt,
                       int64_t svb, int64_t sva, int64_t svt, uintptr_t stream) {
  check(B > 0 && A > 0 && T > 0 && D > 0, "attention_forward: B, A, T, d must be positive");
  check(T <= 8192, "attention_forward: T <= 8192 (scores of a row live in shared memory)");
  dim3 grid(T, B * A);
  float scale = 1.f / sqrtf((float)D);
  AUTODISTIL_DISPATCH(dtype, AUTODISTIL_HEAD_DIM(D, attn_fwd<scalar_t, BD><<<grid, 128, T * sizeof(float),
      (cudaStream_t)stream>>>((const scalar_t*)q, (const scalar_t*)k, (const scalar_t*)v, (const int*)mask, mask_b,
      (scalar_t*)o, (float*)lse, (scalar_t*)probs, (int)A, (int)T, (int)D, scale, Strides{sqb, sqa, sqt},
      Strides{skb, ska, skt}, Strides{svb, sva, svt})));
  check_cuda(cudaGetLastError(), "attention_forward launch");
}

void attention_backward(int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, int64_t mask_b,
                        uintptr_t o, uintptr_t dout, uintptr_t lse, uintptr_t dq, uintptr_t dk32, uintptr_t dv32,
                        int64_t B, int64_t A, int64_t T, int64_t D, int64_t sqb, int64_t sqa, int64_t sqt,
                        int64_t skb, int64_t ska, int64_t skt, int64_t svb, int64_t sva, int64_t svt,
                        uintptr_t stream) {
  check(B > 0 && A > 0 && T > 0 && D > 0, "attention_backward: B, A, T, d must be positive");
  check(T <= 4096, "attention_backward: T <= 4096");
  dim3 grid(T, B * A);
  float scale = 1.f / sqrtf((float)D);
  AUTODISTIL_DISPATCH(dtype, AUTODISTIL_HEAD_DIM(D, attn_bwd<scalar_t, BD><<<grid, 128, 2 * T * sizeof(float),
      (cudaStream_t)stream>>>((const scalar_t*)q, (const scalar_t*)k, (const scalar_t*)v, (const int*)mask, mask_b,
      (const scalar_t*)o, (const scalar_t*)dout, (const float*)lse, (scalar_t*)dq, (float*)dk32, (float*)dv32,
      (int)A, (int)T, (int)D, scale, Strides{sqb, sqa, sqt}, Strides{skb, ska, skt}, Strides{svb, sva, svt})));
  check_cuda(cudaGetLastError(), "attention_backward launch");
}

}  // namespace autodistil
