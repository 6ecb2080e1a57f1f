// Residual + LayerNorm over the first h features (gamma[:h], beta[:h] read in place); backward
// writes dx per row and per-block partial sums of dgamma/dbeta (reduced by the caller into the
// grad slices). One block per row (forward) / per ROWS rows (backward), fp32 statistics.
#include "common.cuh"

namespace autodistil {

__device__ __forceinline__ float block_sum(float v, float* sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  int nw = (blockDim.x + 31) / 32;
  v = (threadIdx.x < nw) ? sh[threadIdx.x] : 0.f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  if (threadIdx.x == 0) sh[0] = v;
  __syncthreads();
  float r = sh[0];
  __syncthreads();
  return r;
}

template <typename T>
__global__ void ln_fwd(const T* x, const T* res, T* sum_out, T* y, const T* w, const T* b, float* mean_out,
                       float* rstd_out, int H, float eps) {
  __shared__ float sh[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * H;
  float s = 0.f;
  for (int c = threadIdx.x; c < H; c += blockDim.x) {
    float v = to_f(xr[c]) + (res ? to_f(res[row * H + c]) : 0.f);
    if (res) sum_out[row * H + c] = from_f<T>(v);
    s += v;
  }
  const float mean = block_sum(s, sh) / H;
  float q = 0.f;
  for (int c = threadIdx.x; c < H; c += blockDim.x) {
    float v = (res ? to_f(sum_out[row * H + c]) : to_f(xr[c])) - mean;
    q += v * v;
  }
  const float rstd = rsqrtf(block_sum(q, sh) / H + eps);
  for (int c = threadIdx.x; c < H; c += blockDim.x) {
    float v = (res ? to_f(sum_out[row * H + c]) : to_f(xr[c])) - mean;
    y[row * H + c] = from_f<T>(v * rstd * to_f(w[c]) + to_f(b[c]));
  }
  if (threadIdx.x == 0) { mean_out[row] = mean; rstd_out[row] = rstd; }
}

template <typename T>
__global__ void ln_bwd(const T* dy, const T* s, const T* w, const float* mean, const float* rstd, T* dx,
                       float* dw_part, float* db_part, int64_t N, int H, int rows) {
  extern __shared__ float acc[];  // 2 * H floats: partial dgamma, dbeta of this block
  __shared__ float sh[32];
  for (int c = threadIdx.x; c < 2 * H; c += blockDim.x) acc[c] = 0.f;
  __syncthreads();
  for (int r = 0; r < rows; ++r) {
    const int64_t row = (int64_t)blockIdx.x * rows + r;
    if (row >= N) break;
    float m = mean[row], rs = rstd[row], c1 = 0.f, c2 = 0.f;
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
      float xh = (to_f(s[row * H + c]) - m) * rs, g = to_f(dy[row * H + c]);
      float wdy = to_f(w[c]) * g;
      c1 += xh * wdy;
      c2 += wdy;
      acc[c] += g * xh;
      acc[H + c] += g;
    }
    c1 = block_sum(c1, sh) / H;
    c2 = block_sum(c2, sh) / H;
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
      float xh = (to_f(s[row * H + c]) - m) * rs;
      float wdy = to_f(w[c]) * to_f(dy[row * H + c]);
      dx[row * H + c] = from_f<T>((wdy - (xh * c1 + c2)) * rs);
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < H; c += blockDim.x) {
    dw_part[(int64_t)blockIdx.x * H + c] = acc[c];
    db_part[(int64_t)blockIdx.x * H + c] = acc[H + c];
  }
}

static int threads_for(int H) { return H >= 512 ? 256 : (H >= 128 ? 128 : 64); }

void layernorm_forward(int dtype, uintptr_t x, uintptr_t res, uintptr_t sum_out, uintptr_t y, uintptr_t w,
                       uintptr_t b, uintptr_t mean, uintptr_t rstd, int64_t N, int64_t H, double eps,
                       uintptr_t stream) {
  check(N > 0 && H > 0, "layernorm_forward: N and H must be positive");
  check(!res || sum_out, "layernorm_forward: a residual needs a sum_out buffer");
  AUTODISTIL_DISPATCH(dtype, ln_fwd<scalar_t><<<N, threads_for(H), 0, (cudaStream_t)stream>>>(
      (const scalar_t*)x, (const scalar_t*)res, (scalar_t*)sum_out, (scalar_t*)y, (const scalar_t*)w,
      (const scalar_t*)b, (float*)mean, (float*)rstd, (int)H, (float)eps));
  check_cuda(cudaGetLastError(), "layernorm_forward launch");
}

void layernorm_backward(int dtype, uintptr_t dy, uintptr_t s, uintptr_t w, uintptr_t mean, uintptr_t rstd,
                        uintptr_t dx, uintptr_t dw_part, uintptr_t db_part, int64_t N, int64_t H, int64_t rows,
                        uintptr_t stream) {
  check(N > 0 && H > 0 && rows > 0, "layernorm_backward: N, H and rows must be positive");
  int64_t blocks = (N + rows - 1) / rows;
  AUTODISTIL_DISPATCH(dtype, ln_bwd<scalar_t><<<blocks, threads_for(H), 2 * H * sizeof(float), (cudaStream_t)stream>>>(
      (const scalar_t*)dy, (const scalar_t*)s, (const scalar_t*)w, (const float*)mean, (const float*)rstd,
      (scalar_t*)dx, (float*)dw_part, (float*)db_part, N, (int)H, (int)rows));
  check_cuda(cudaGetLastError(), "layernorm_backward launch");
}

}  // namespace autodistil
