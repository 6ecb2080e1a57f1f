// Residual + LayerNorm over the first H features, gamma[:H] and beta[:H] read in place. Activations
// (x, residual, sum, y, dy, dx) are fp32/fp16/bf16; gamma/beta are fp32 masters or the activation
// dtype (mixed-precision contract); statistics are fp32. 64-bit row offsets, 16-byte accesses when
// H is a multiple of the pack and every pointer is 16-byte aligned.
// Forward: one block per row; the row (x + residual, rounded to the activation dtype as it is
//   stored for the backward) is cached in shared memory, so global memory is read once.
// Backward: each block owns `rows` consecutive rows and fixed columns per thread: dx per row, and
//   per-block partial dgamma/dbeta in shared memory; a second kernel sums the partials over the
//   blocks in a fixed order. No atomics: the result is bit-identical from run to run.
#include "common.cuh"

namespace autodistil {

// Dynamic shared memory plus the 32-float static `sh` of block_sum must stay within the 48 KiB a
// block gets without opting in: 4 H + 128 <= 49152 bytes (forward), 8 H + 128 (backward).
constexpr int kMaxFwdWidth = 12288 - 32;  // H floats of dynamic shared memory
constexpr int kMaxBwdWidth = 6144 - 16;   // 2 H floats of dynamic shared memory

__device__ __forceinline__ float block_sum(float v, float* sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) / 32;
  v = (threadIdx.x < nw) ? sh[threadIdx.x] : 0.f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  if (threadIdx.x == 0) sh[0] = v;
  __syncthreads();
  const float r = sh[0];
  __syncthreads();
  return r;
}

template <typename T, typename W, int P>
__global__ void ln_fwd(const T* __restrict__ x, const T* __restrict__ res, T* __restrict__ sum_out, T* __restrict__ y,
                       const W* __restrict__ w, const W* __restrict__ b, float* __restrict__ mean_out,
                       float* __restrict__ rstd_out, int H, float eps) {
  extern __shared__ float row[];  // (H,) the normalised input of this row
  __shared__ float sh[32];
  const int64_t off = (int64_t)blockIdx.x * H;
  float s = 0.f;
  for (int c = threadIdx.x * P; c < H; c += blockDim.x * P) {
    float v[P];
    load_vec<T, P>(x + off + c, v);
    if (res) {
      float r[P];
      load_vec<T, P>(res + off + c, r);
#pragma unroll
      for (int j = 0; j < P; ++j) v[j] = to_f(from_f<T>(v[j] + r[j]));  // as stored in sum_out
      store_vec<T, P>(sum_out + off + c, v);
    }
#pragma unroll
    for (int j = 0; j < P; ++j) {
      row[c + j] = v[j];
      s += v[j];
    }
  }
  const float mean = block_sum(s, sh) / H;
  float q = 0.f;
  for (int c = threadIdx.x * P; c < H; c += blockDim.x * P)
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const float d = row[c + j] - mean;
      q += d * d;
    }
  const float rstd = rsqrtf(block_sum(q, sh) / H + eps);
  for (int c = threadIdx.x * P; c < H; c += blockDim.x * P) {
    float g[P], bb[P], v[P];
    load_vec<W, P>(w + c, g);
    load_vec<W, P>(b + c, bb);
#pragma unroll
    for (int j = 0; j < P; ++j) v[j] = (row[c + j] - mean) * rstd * g[j] + bb[j];
    store_vec<T, P>(y + off + c, v);
  }
  if (threadIdx.x == 0) {
    mean_out[blockIdx.x] = mean;
    rstd_out[blockIdx.x] = rstd;
  }
}

template <typename T, typename W, int P>
__global__ void ln_bwd(const T* __restrict__ dy, const T* __restrict__ s, const W* __restrict__ w,
                       const float* __restrict__ mean, const float* __restrict__ rstd, T* __restrict__ dx,
                       float* __restrict__ dw_part, float* __restrict__ db_part, int64_t N, int H, int rows) {
  extern __shared__ float acc[];  // (2, H): this block's partial dgamma, dbeta; each column has one owner thread
  __shared__ float sh[32];
  for (int c = threadIdx.x; c < 2 * H; c += blockDim.x) acc[c] = 0.f;
  __syncthreads();
  for (int r = 0; r < rows; ++r) {
    const int64_t row = (int64_t)blockIdx.x * rows + r;
    if (row >= N) break;
    const int64_t off = row * H;
    const float m = mean[row], rs = rstd[row];
    float c1 = 0.f, c2 = 0.f;
    for (int c = threadIdx.x * P; c < H; c += blockDim.x * P) {
      float g[P], v[P], ww[P];
      load_vec<T, P>(dy + off + c, g);
      load_vec<T, P>(s + off + c, v);
      load_vec<W, P>(w + c, ww);
#pragma unroll
      for (int j = 0; j < P; ++j) {
        const float xh = (v[j] - m) * rs, wdy = ww[j] * g[j];
        c1 += xh * wdy;
        c2 += wdy;
        acc[c + j] += g[j] * xh;
        acc[H + c + j] += g[j];
      }
    }
    c1 = block_sum(c1, sh) / H;
    c2 = block_sum(c2, sh) / H;
    for (int c = threadIdx.x * P; c < H; c += blockDim.x * P) {
      float g[P], v[P], ww[P], o[P];
      load_vec<T, P>(dy + off + c, g);
      load_vec<T, P>(s + off + c, v);
      load_vec<W, P>(w + c, ww);
#pragma unroll
      for (int j = 0; j < P; ++j) {
        const float xh = (v[j] - m) * rs;
        o[j] = (ww[j] * g[j] - (xh * c1 + c2)) * rs;
      }
      store_vec<T, P>(dx + off + c, o);
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < H; c += blockDim.x) {
    dw_part[(int64_t)blockIdx.x * H + c] = acc[c];
    db_part[(int64_t)blockIdx.x * H + c] = acc[H + c];
  }
}

// dgamma[c] = sum over blocks of dw_part[blk, c], in block order (deterministic).
__global__ void ln_reduce(const float* __restrict__ dw_part, const float* __restrict__ db_part, float* __restrict__ dw,
                          float* __restrict__ db, int64_t blocks, int H) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= H) return;
  float a = 0.f, z = 0.f;
  for (int64_t k = 0; k < blocks; ++k) {
    a += dw_part[k * H + c];
    z += db_part[k * H + c];
  }
  dw[c] = a;
  db[c] = z;
}

static int threads_for(int64_t H, int P) {
  int64_t t = ((H + P - 1) / P + 31) / 32 * 32;
  return (int)(t < 32 ? 32 : (t > 256 ? 256 : t));
}

void layernorm_forward(int dtype, int wdtype, uintptr_t x, uintptr_t res, uintptr_t sum_out, uintptr_t y, uintptr_t w,
                       uintptr_t b, uintptr_t mean, uintptr_t rstd, int64_t N, int64_t H, double eps,
                       uintptr_t stream) {
  check_dtype(dtype, "layernorm_forward: x");
  check_dtype(wdtype, "layernorm_forward: weight");
  check(N >= 0 && H > 0, "layernorm_forward: rows must be >= 0 and width > 0, got N=" + std::to_string(N) +
        ", H=" + std::to_string(H));
  check(H <= kMaxFwdWidth, "layernorm_forward: width " + std::to_string(H) + " exceeds the maximum " +
        std::to_string(kMaxFwdWidth));
  check(N < (int64_t)1 << 31, "layernorm_forward: more than 2^31 - 1 rows");
  check(x && y && w && b && mean && rstd, "layernorm_forward: x, y, weight, bias, mean and rstd must be non-null");
  check(!res || sum_out, "layernorm_forward: a residual needs a sum_out buffer");
  if (N == 0) return;
  const bool vec = aligned16(x) && aligned16(res) && aligned16(sum_out) && aligned16(y) && aligned16(w) &&
                   aligned16(b);
  const size_t smem = H * sizeof(float);
  AUTODISTIL_DISPATCH(dtype, AUTODISTIL_DISPATCH_PARAM(wdtype, dtype, "layernorm_forward: weight", {
    constexpr int P = 16 / sizeof(scalar_t);
    if (vec && H % P == 0)
      ln_fwd<scalar_t, weight_t, P><<<(unsigned)N, threads_for(H, P), smem, (cudaStream_t)stream>>>(
          (const scalar_t*)x, (const scalar_t*)res, (scalar_t*)sum_out, (scalar_t*)y, (const weight_t*)w,
          (const weight_t*)b, (float*)mean, (float*)rstd, (int)H, (float)eps);
    else
      ln_fwd<scalar_t, weight_t, 1><<<(unsigned)N, threads_for(H, 1), smem, (cudaStream_t)stream>>>(
          (const scalar_t*)x, (const scalar_t*)res, (scalar_t*)sum_out, (scalar_t*)y, (const weight_t*)w,
          (const weight_t*)b, (float*)mean, (float*)rstd, (int)H, (float)eps);
  }));
  check_cuda(cudaGetLastError(), "layernorm_forward launch");
}

// Rows per block of the backward for N rows: at most kBwdBlocks blocks. The Python launcher sizes
// the partial buffers (blocks, H) with the same function (exposed to it).
constexpr int64_t kBwdBlocks = 512;
int64_t layernorm_backward_rows(int64_t N) { return N <= kBwdBlocks ? 1 : (N + kBwdBlocks - 1) / kBwdBlocks; }

void layernorm_backward(int dtype, int wdtype, uintptr_t dy, uintptr_t s, uintptr_t w, uintptr_t mean, uintptr_t rstd,
                        uintptr_t dx, uintptr_t dw_part, uintptr_t db_part, uintptr_t dw, uintptr_t db, int64_t N,
                        int64_t H, int64_t rows, uintptr_t stream) {
  check_dtype(dtype, "layernorm_backward: dy");
  check_dtype(wdtype, "layernorm_backward: weight");
  check(N > 0 && H > 0, "layernorm_backward: N and H must be positive, got N=" + std::to_string(N) + ", H=" +
        std::to_string(H));
  check(H <= kMaxBwdWidth, "layernorm_backward: width " + std::to_string(H) + " exceeds the maximum " +
        std::to_string(kMaxBwdWidth));
  check(rows == layernorm_backward_rows(N), "layernorm_backward: rows must be layernorm_backward_rows(N) = " +
        std::to_string(layernorm_backward_rows(N)) + ", got " + std::to_string(rows));
  check(dy && s && w && mean && rstd && dx && dw_part && db_part && dw && db,
        "layernorm_backward: every pointer must be non-null");
  const int64_t blocks = (N + rows - 1) / rows;
  const bool vec = aligned16(dy) && aligned16(s) && aligned16(w) && aligned16(dx);
  const size_t smem = 2 * H * sizeof(float);
  AUTODISTIL_DISPATCH(dtype, AUTODISTIL_DISPATCH_PARAM(wdtype, dtype, "layernorm_backward: weight", {
    constexpr int P = 16 / sizeof(scalar_t);
    if (vec && H % P == 0)
      ln_bwd<scalar_t, weight_t, P><<<(unsigned)blocks, threads_for(H, P), smem, (cudaStream_t)stream>>>(
          (const scalar_t*)dy, (const scalar_t*)s, (const weight_t*)w, (const float*)mean, (const float*)rstd,
          (scalar_t*)dx, (float*)dw_part, (float*)db_part, N, (int)H, (int)rows);
    else
      ln_bwd<scalar_t, weight_t, 1><<<(unsigned)blocks, threads_for(H, 1), smem, (cudaStream_t)stream>>>(
          (const scalar_t*)dy, (const scalar_t*)s, (const weight_t*)w, (const float*)mean, (const float*)rstd,
          (scalar_t*)dx, (float*)dw_part, (float*)db_part, N, (int)H, (int)rows);
  }));
  check_cuda(cudaGetLastError(), "layernorm_backward launch");
  ln_reduce<<<(unsigned)((H + 127) / 128), 128, 0, (cudaStream_t)stream>>>(
      (const float*)dw_part, (const float*)db_part, (float*)dw, (float*)db, blocks, (int)H);
  check_cuda(cudaGetLastError(), "layernorm_backward reduce launch");
}

}  // namespace autodistil
