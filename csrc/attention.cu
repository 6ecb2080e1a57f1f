// Tiled, deterministic softmax attention (flash-attention-2 structure) for any head count and
// head dim d <= 128, with a key padding mask.
//
// q, k, v, o, dO, dq, dk, dv: (B, A, T, d) addressed through strides in elements (stride 1 on d;
// the model's head-split views of (B, T, A*d) tensors are read and written without copies).
// d is padded to BD = 32 / 64 / 128 inside shared memory (zero columns), never in global memory.
//
// Two implementations, same math, same launch grid shape (grid.x = B*A, grid.y = tiles of T):
//  * "mma"  (fp16 / bf16): tensor cores through mma.sync.m16n8k16 (fp32 accumulation), operands
//    fetched from shared memory with ldmatrix, K/V (or Q/dO) tiles double-buffered with cp.async
//    16-byte copies when every tensor is 16-byte aligned (else plain loads). 4 warps per block,
//    each warp owns 16 rows of the block's 64-row tile; the score tile stays in registers and
//    is reused as the A operand of the next product (the accumulator layout of m16n8 equals
//    the A-operand layout of m16n8k16).
//  * "simt" (fp32, and a selectable reference path for fp16 / bf16): CUDA cores, fp32 FMAs,
//    BD/16 threads per row, each owning 16 dims; no TF32 anywhere.
//
// Forward: online softmax in the log2 domain; O and the row LSE (fp32, log2 units:
//   lse2 = max_j(s_j * log2 e / sqrt(d)) + log2(sum_j 2^(...)) ) are written. A fully masked row
//   gets O = 0 and lse2 = +inf, so every probability recomputed from it is exactly 0.
// Probabilities (B, A, T, T): a separate light pass p = 2^(s*log2e/sqrt(d) - lse2) (no gradient).
// Backward (deterministic: no atomics, fixed reduction orders):
//   delta = rowsum(dO * O) (one warp per row), then a dK/dV kernel (one block per 64 keys,
//   looping over query tiles) and a dQ kernel (one block per 64 queries, looping over key tiles).
// Limits: T <= kMaxSeqLen (= 65536, forward and backward alike); B*A <= 2^31 - 1 (grid x);
// every offset that can pass 2^31 (B*A*T*d, B*A*T*T) is computed in 64 bits.
#include "common.cuh"

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace autodistil {

constexpr int64_t kMaxSeqLen = 65536;
constexpr int kThreads = 128;

struct Strides { int64_t b, a, t; };

struct AttnParams {
  const void* q; const void* k; const void* v;
  const int* mask; int64_t mask_b;          // (B, T) int32, 1 = attend; nullptr = no mask
  void* o; float* lse;                      // forward outputs (lse: (B*A, T) contiguous, log2 units)
  const void* dout; float* delta;           // backward inputs / workspace (delta: (B*A, T))
  void* dq; void* dk; void* dv;             // backward outputs
  void* probs;                              // (B, A, T, T) contiguous
  Strides sq, sk, sv, so, sdo, sdq, sdk, sdv;
  int A, T, D;
  float scale;       // 1/sqrt(d)
  float scale_log2;  // log2(e)/sqrt(d)
  bool vec;          // every tile source is 16-byte aligned (cp.async path)
};

// ------------------------------------------------------------------------------------------
// small device helpers
// ------------------------------------------------------------------------------------------
__device__ __forceinline__ bool key_ok(const int* mask, int j, int T) {
  return j < T && (mask == nullptr || mask[j] != 0);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // src-size 0: the 16 bytes are zero-filled, nothing is read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
}

// D (16x8 fp32) += A (16x16, row) * B (16x8, col). Fragment layouts (g = lane/4, t = lane%4):
//  A: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//  B: b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//  C: c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// two floats -> one register of two 16-bit values (lo = first)
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

// Fragment loads from a row-major shared tile with `ld` elements per row (ld*2 bytes % 16 == 0).
// A (16x16) at (m0, k0) of a tile stored [m][k].
template <typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* s, int ld, int m0, int k0, int lane) {
  const int mi = lane >> 3, r = lane & 7;
  ldsm_x4(a, s + (m0 + (mi & 1) * 8 + r) * ld + k0 + (mi >> 1) * 8);
}
// B for the two n-tiles n0 and n0+8 (k-step k0) of a tile stored [n][k] (B = stored^T):
// b[0], b[1] -> n-tile n0; b[2], b[3] -> n-tile n0+8.
template <typename T>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const T* s, int ld, int n0, int k0, int lane) {
  const int mi = lane >> 3, r = lane & 7;
  ldsm_x4(b, s + (n0 + (mi >> 1) * 8 + r) * ld + k0 + (mi & 1) * 8);
}
// Same, from a tile stored [k][n] (B = stored), through ldmatrix.trans.
template <typename T>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const T* s, int ld, int k0, int n0, int lane) {
  const int mi = lane >> 3, r = lane & 7;
  ldsm_x4_t(b, s + (k0 + (mi & 1) * 8 + r) * ld + n0 + (mi >> 1) * 8);
}

// Copy rows [r0, r0+R) x cols [0, BD) of a (T, D) matrix (row stride st, unit column stride) into a
// shared tile with row length LD = BD + 8; rows >= T and cols >= D become 0. Vector path: cp.async
// 16-byte chunks (needs D % 8 == 0 and 16-byte aligned rows); otherwise plain element loads.
template <typename T, int R, int BD>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t st, int r0, int T_, int D, bool vec) {
  constexpr int LD = BD + 8, CPR = BD / 8;
  if (vec) {
    for (int c = threadIdx.x; c < R * CPR; c += kThreads) {
      const int r = c / CPR, col = (c % CPR) * 8;
      const bool ok = r0 + r < T_ && col < D;
      cp_async16(s + r * LD + col, ok ? g + (int64_t)(r0 + r) * st + col : g, ok);
    }
  } else {
    for (int e = threadIdx.x; e < R * BD; e += kThreads) {
      const int r = e / BD, col = e % BD;
      const bool ok = r0 + r < T_ && col < D;
      s[r * LD + col] = ok ? g[(int64_t)(r0 + r) * st + col] : from_f<T>(0.f);
    }
  }
}

__device__ __forceinline__ void load_key_ok(int* s, const int* mask, int n0, int T_, int N) {
  for (int j = threadIdx.x; j < N; j += kThreads) s[j] = key_ok(mask, n0 + j, T_) ? 1 : 0;
}

// per-row lse / delta of a query tile; rows >= T get lse = +inf (p = 0) and delta = 0
__device__ __forceinline__ void load_rows(float* sl, float* sd, const float* lse, const float* delta, int m0,
                                          int T_, int N) {
  for (int i = threadIdx.x; i < N; i += kThreads) {
    const bool ok = m0 + i < T_;
    sl[i] = ok ? lse[m0 + i] : INFINITY;
    sd[i] = ok ? delta[m0 + i] : 0.f;
  }
}

// ------------------------------------------------------------------------------------------
// tensor-core kernels (fp16 / bf16)
// ------------------------------------------------------------------------------------------
constexpr int kBM = 64;  // query rows per block (4 warps x 16)
constexpr int kBN = 64;  // keys per tile / per dK-dV block

template <int BD>
constexpr size_t fwd_smem_bytes() { return (size_t)(kBM + 4 * kBN) * (BD + 8) * 2 + 2 * kBN * sizeof(int); }
template <int BD>
constexpr size_t dq_smem_bytes() { return (size_t)(2 * kBM + 4 * kBN) * (BD + 8) * 2 + 2 * kBN * sizeof(int); }
template <int BD, int BMI>
constexpr size_t dkdv_smem_bytes() { return (size_t)(2 * kBN + 4 * BMI) * (BD + 8) * 2 + 4 * BMI * sizeof(float); }

template <typename T, int BD>
__global__ void __launch_bounds__(kThreads) attn_fwd_mma(const AttnParams p) {
  constexpr int LD = BD + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);            // (BM, LD)
  T* sK = sQ + kBM * LD;                         // 2 x (BN, LD)
  T* sV = sK + 2 * kBN * LD;                     // 2 x (BN, LD)
  int* sOk = reinterpret_cast<int*>(sV + 2 * kBN * LD);  // 2 x BN

  const int bh = blockIdx.x, b = bh / p.A, a = bh % p.A, m_blk = blockIdx.y * kBM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const T* q = static_cast<const T*>(p.q) + b * p.sq.b + a * p.sq.a;
  const T* k = static_cast<const T*>(p.k) + b * p.sk.b + a * p.sk.a;
  const T* v = static_cast<const T*>(p.v) + b * p.sv.b + a * p.sv.a;
  const int* mask = p.mask ? p.mask + b * p.mask_b : nullptr;
  const int T_ = p.T, D = p.D, nt = (T_ + kBN - 1) / kBN;

  load_tile<T, kBM, BD>(sQ, q, p.sq.t, m_blk, T_, D, p.vec);
  load_tile<T, kBN, BD>(sK, k, p.sk.t, 0, T_, D, p.vec);
  load_tile<T, kBN, BD>(sV, v, p.sv.t, 0, T_, D, p.vec);
  load_key_ok(sOk, mask, 0, T_, kBN);
  cp_async_commit();

  float o[BD / 8][4];
#pragma unroll
  for (int i = 0; i < BD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};

  for (int j = 0; j < nt; ++j) {
    const int buf = j & 1;
    if (j + 1 < nt) {  // prefetch the next K/V tile into the other buffer (freed by the last barrier)
      const int nb = buf ^ 1;
      load_tile<T, kBN, BD>(sK + nb * kBN * LD, k, p.sk.t, (j + 1) * kBN, T_, D, p.vec);
      load_tile<T, kBN, BD>(sV + nb * kBN * LD, v, p.sv.t, (j + 1) * kBN, T_, D, p.vec);
      load_key_ok(sOk + nb * kBN, mask, (j + 1) * kBN, T_, kBN);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* cK = sK + buf * kBN * LD;
    const T* cV = sV + buf * kBN * LD;
    const int* cOk = sOk + buf * kBN;

    float s[kBN / 8][4];
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < BD / 16; ++kk) {
      uint32_t af[4];
      load_a(af, sQ, LD, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < kBN / 16; ++np) {
        uint32_t bf[4];
        load_b_nk(bf, cK, LD, np * 16, kk * 16, lane);
        mma16816<T>(s[2 * np], af, bf[0], bf[1]);
        mma16816<T>(s[2 * np + 1], af, bf[2], bf[3]);
      }
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kBN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = cOk[n * 8 + 2 * t4 + (e & 1)] ? s[n][e] * p.scale_log2 : -INFINITY;
        s[n][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    float msafe[2], alpha[2], lsum[2] = {0.f, 0.f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(mrow[r], mx[r]);
      msafe[r] = mn == -INFINITY ? 0.f : mn;
      alpha[r] = exp2f(mrow[r] - msafe[r]);  // mrow = -inf -> 0
      mrow[r] = mn;
    }
#pragma unroll
    for (int n = 0; n < kBN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pe = exp2f(s[n][e] - msafe[e >> 1]);
        s[n][e] = pe;
        lsum[e >> 1] += pe;
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) lrow[r] = lrow[r] * alpha[r] + lsum[r];  // per-thread partial row sums
#pragma unroll
    for (int i = 0; i < BD / 8; ++i) {
      o[i][0] *= alpha[0]; o[i][1] *= alpha[0];
      o[i][2] *= alpha[1]; o[i][3] *= alpha[1];
    }
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {  // O += P V
      const uint32_t af[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < BD / 16; ++dp) {
        uint32_t bf[4];
        load_b_kn(bf, cV, LD, kk * 16, dp * 16, lane);
        mma16816<T>(o[2 * dp], af, bf[0], bf[1]);
        mma16816<T>(o[2 * dp + 1], af, bf[2], bf[3]);
      }
    }
    __syncthreads();  // this buffer is refilled by the prefetch of iteration j + 1
  }

  T* out = static_cast<T*>(p.o) + b * p.so.b + a * p.so.a;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = lrow[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int row = m_blk + warp * 16 + g + 8 * r;
    if (row < T_) {
#pragma unroll
      for (int dn = 0; dn < BD / 8; ++dn)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = dn * 8 + 2 * t4 + e;
          if (col < D) out[(int64_t)row * p.so.t + col] = from_f<T>(o[dn][2 * r + e] * inv);
        }
      if (t4 == 0) p.lse[(int64_t)bh * T_ + row] = l > 0.f ? mrow[r] + log2f(l) : INFINITY;
    }
  }
}

template <typename T, int BD>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq_mma(const AttnParams p) {
  constexpr int LD = BD + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);            // (BM, LD)
  T* sdO = sQ + kBM * LD;                        // (BM, LD)
  T* sK = sdO + kBM * LD;                        // 2 x (BN, LD)
  T* sV = sK + 2 * kBN * LD;                     // 2 x (BN, LD)
  int* sOk = reinterpret_cast<int*>(sV + 2 * kBN * LD);  // 2 x BN

  const int bh = blockIdx.x, b = bh / p.A, a = bh % p.A, m_blk = blockIdx.y * kBM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const T* q = static_cast<const T*>(p.q) + b * p.sq.b + a * p.sq.a;
  const T* k = static_cast<const T*>(p.k) + b * p.sk.b + a * p.sk.a;
  const T* v = static_cast<const T*>(p.v) + b * p.sv.b + a * p.sv.a;
  const T* dout = static_cast<const T*>(p.dout) + b * p.sdo.b + a * p.sdo.a;
  const int* mask = p.mask ? p.mask + b * p.mask_b : nullptr;
  const int T_ = p.T, D = p.D, nt = (T_ + kBN - 1) / kBN;

  load_tile<T, kBM, BD>(sQ, q, p.sq.t, m_blk, T_, D, p.vec);
  load_tile<T, kBM, BD>(sdO, dout, p.sdo.t, m_blk, T_, D, p.vec);
  load_tile<T, kBN, BD>(sK, k, p.sk.t, 0, T_, D, p.vec);
  load_tile<T, kBN, BD>(sV, v, p.sv.t, 0, T_, D, p.vec);
  load_key_ok(sOk, mask, 0, T_, kBN);
  cp_async_commit();

  float lse_r[2], delta_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m_blk + warp * 16 + g + 8 * r;
    lse_r[r] = row < T_ ? p.lse[(int64_t)bh * T_ + row] : INFINITY;
    delta_r[r] = row < T_ ? p.delta[(int64_t)bh * T_ + row] : 0.f;
  }
  float dq[BD / 8][4];
#pragma unroll
  for (int i = 0; i < BD / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  for (int j = 0; j < nt; ++j) {
    const int buf = j & 1;
    if (j + 1 < nt) {
      const int nb = buf ^ 1;
      load_tile<T, kBN, BD>(sK + nb * kBN * LD, k, p.sk.t, (j + 1) * kBN, T_, D, p.vec);
      load_tile<T, kBN, BD>(sV + nb * kBN * LD, v, p.sv.t, (j + 1) * kBN, T_, D, p.vec);
      load_key_ok(sOk + nb * kBN, mask, (j + 1) * kBN, T_, kBN);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* cK = sK + buf * kBN * LD;
    const T* cV = sV + buf * kBN * LD;
    const int* cOk = sOk + buf * kBN;

    float s[kBN / 8][4], dp[kBN / 8][4];
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < BD / 16; ++kk) {
      uint32_t aq[4], ado[4];
      load_a(aq, sQ, LD, warp * 16, kk * 16, lane);
      load_a(ado, sdO, LD, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < kBN / 16; ++np) {
        uint32_t bk[4], bv[4];
        load_b_nk(bk, cK, LD, np * 16, kk * 16, lane);   // S  = Q K^T
        mma16816<T>(s[2 * np], aq, bk[0], bk[1]);
        mma16816<T>(s[2 * np + 1], aq, bk[2], bk[3]);
        load_b_nk(bv, cV, LD, np * 16, kk * 16, lane);   // dP = dO V^T
        mma16816<T>(dp[2 * np], ado, bv[0], bv[1]);
        mma16816<T>(dp[2 * np + 1], ado, bv[2], bv[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < kBN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const float pe = cOk[n * 8 + 2 * t4 + (e & 1)] ? exp2f(s[n][e] * p.scale_log2 - lse_r[r]) : 0.f;
        s[n][e] = pe * (dp[n][e] - delta_r[r]);  // dS (unscaled)
      }
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {  // dQ += dS K
      const uint32_t af[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dd = 0; dd < BD / 16; ++dd) {
        uint32_t bf[4];
        load_b_kn(bf, cK, LD, kk * 16, dd * 16, lane);
        mma16816<T>(dq[2 * dd], af, bf[0], bf[1]);
        mma16816<T>(dq[2 * dd + 1], af, bf[2], bf[3]);
      }
    }
    __syncthreads();
  }

  T* out = static_cast<T*>(p.dq) + b * p.sdq.b + a * p.sdq.a;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m_blk + warp * 16 + g + 8 * r;
    if (row >= T_) continue;
#pragma unroll
    for (int dn = 0; dn < BD / 8; ++dn)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = dn * 8 + 2 * t4 + e;
        if (col < D) out[(int64_t)row * p.sdq.t + col] = from_f<T>(dq[dn][2 * r + e] * p.scale);
      }
  }
}

// One block per 64 keys (4 warps x 16 keys), looping over query tiles of BMI rows. Each warp
// computes the transposed products S^T = K Q^T and dP^T = V dO^T, so P^T and dS^T sit in the
// accumulator layout that is the A operand of dV += P^T dO and dK += dS^T Q.
template <typename T, int BD, int BMI>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkdv_mma(const AttnParams p) {
  constexpr int LD = BD + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);            // (BN, LD)
  T* sV = sK + kBN * LD;                         // (BN, LD)
  T* sQ = sV + kBN * LD;                         // 2 x (BMI, LD)
  T* sdO = sQ + 2 * BMI * LD;                    // 2 x (BMI, LD)
  float* sL = reinterpret_cast<float*>(sdO + 2 * BMI * LD);  // 2 x BMI
  float* sDl = sL + 2 * BMI;                                   // 2 x BMI

  const int bh = blockIdx.x, b = bh / p.A, a = bh % p.A, n_blk = blockIdx.y * kBN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const T* q = static_cast<const T*>(p.q) + b * p.sq.b + a * p.sq.a;
  const T* k = static_cast<const T*>(p.k) + b * p.sk.b + a * p.sk.a;
  const T* v = static_cast<const T*>(p.v) + b * p.sv.b + a * p.sv.a;
  const T* dout = static_cast<const T*>(p.dout) + b * p.sdo.b + a * p.sdo.a;
  const int* mask = p.mask ? p.mask + b * p.mask_b : nullptr;
  const float* lse = p.lse + (int64_t)bh * p.T;
  const float* delta = p.delta + (int64_t)bh * p.T;
  const int T_ = p.T, D = p.D, nt = (T_ + BMI - 1) / BMI;

  load_tile<T, kBN, BD>(sK, k, p.sk.t, n_blk, T_, D, p.vec);
  load_tile<T, kBN, BD>(sV, v, p.sv.t, n_blk, T_, D, p.vec);
  load_tile<T, BMI, BD>(sQ, q, p.sq.t, 0, T_, D, p.vec);
  load_tile<T, BMI, BD>(sdO, dout, p.sdo.t, 0, T_, D, p.vec);
  load_rows(sL, sDl, lse, delta, 0, T_, BMI);
  cp_async_commit();

  bool kok[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) kok[r] = key_ok(mask, n_blk + warp * 16 + g + 8 * r, T_);
  float dk[BD / 8][4], dv[BD / 8][4];
#pragma unroll
  for (int i = 0; i < BD / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;

  for (int j = 0; j < nt; ++j) {
    const int buf = j & 1;
    if (j + 1 < nt) {
      const int nb = buf ^ 1, m0 = (j + 1) * BMI;
      load_tile<T, BMI, BD>(sQ + nb * BMI * LD, q, p.sq.t, m0, T_, D, p.vec);
      load_tile<T, BMI, BD>(sdO + nb * BMI * LD, dout, p.sdo.t, m0, T_, D, p.vec);
      load_rows(sL + nb * BMI, sDl + nb * BMI, lse, delta, m0, T_, BMI);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* cQ = sQ + buf * BMI * LD;
    const T* cdO = sdO + buf * BMI * LD;
    const float* cL = sL + buf * BMI;
    const float* cDl = sDl + buf * BMI;

    float st[BMI / 8][4];
#pragma unroll
    for (int i = 0; i < BMI / 8; ++i) st[i][0] = st[i][1] = st[i][2] = st[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < BD / 16; ++kk) {  // S^T = K Q^T
      uint32_t af[4];
      load_a(af, sK, LD, warp * 16, kk * 16, lane);
#pragma unroll
      for (int mp = 0; mp < BMI / 16; ++mp) {
        uint32_t bf[4];
        load_b_nk(bf, cQ, LD, mp * 16, kk * 16, lane);
        mma16816<T>(st[2 * mp], af, bf[0], bf[1]);
        mma16816<T>(st[2 * mp + 1], af, bf[2], bf[3]);
      }
    }
#pragma unroll
    for (int m = 0; m < BMI / 8; ++m)
#pragma unroll
      for (int e = 0; e < 4; ++e)  // P^T; query rows out of range or fully masked have lse = +inf
        st[m][e] = kok[e >> 1] ? exp2f(st[m][e] * p.scale_log2 - cL[m * 8 + 2 * t4 + (e & 1)]) : 0.f;
#pragma unroll
    for (int kk = 0; kk < BMI / 16; ++kk) {  // dV += P^T dO
      const uint32_t af[4] = {pack2<T>(st[2 * kk][0], st[2 * kk][1]), pack2<T>(st[2 * kk][2], st[2 * kk][3]),
                              pack2<T>(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                              pack2<T>(st[2 * kk + 1][2], st[2 * kk + 1][3])};
#pragma unroll
      for (int dd = 0; dd < BD / 16; ++dd) {
        uint32_t bf[4];
        load_b_kn(bf, cdO, LD, kk * 16, dd * 16, lane);
        mma16816<T>(dv[2 * dd], af, bf[0], bf[1]);
        mma16816<T>(dv[2 * dd + 1], af, bf[2], bf[3]);
      }
    }
    float dpt[BMI / 8][4];
#pragma unroll
    for (int i = 0; i < BMI / 8; ++i) dpt[i][0] = dpt[i][1] = dpt[i][2] = dpt[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < BD / 16; ++kk) {  // dP^T = V dO^T
      uint32_t af[4];
      load_a(af, sV, LD, warp * 16, kk * 16, lane);
#pragma unroll
      for (int mp = 0; mp < BMI / 16; ++mp) {
        uint32_t bf[4];
        load_b_nk(bf, cdO, LD, mp * 16, kk * 16, lane);
        mma16816<T>(dpt[2 * mp], af, bf[0], bf[1]);
        mma16816<T>(dpt[2 * mp + 1], af, bf[2], bf[3]);
      }
    }
#pragma unroll
    for (int m = 0; m < BMI / 8; ++m)
#pragma unroll
      for (int e = 0; e < 4; ++e) dpt[m][e] = st[m][e] * (dpt[m][e] - cDl[m * 8 + 2 * t4 + (e & 1)]);  // dS^T
#pragma unroll
    for (int kk = 0; kk < BMI / 16; ++kk) {  // dK += dS^T Q
      const uint32_t af[4] = {pack2<T>(dpt[2 * kk][0], dpt[2 * kk][1]), pack2<T>(dpt[2 * kk][2], dpt[2 * kk][3]),
                              pack2<T>(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                              pack2<T>(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
#pragma unroll
      for (int dd = 0; dd < BD / 16; ++dd) {
        uint32_t bf[4];
        load_b_kn(bf, cQ, LD, kk * 16, dd * 16, lane);
        mma16816<T>(dk[2 * dd], af, bf[0], bf[1]);
        mma16816<T>(dk[2 * dd + 1], af, bf[2], bf[3]);
      }
    }
    __syncthreads();
  }

  T* odk = static_cast<T*>(p.dk) + b * p.sdk.b + a * p.sdk.a;
  T* odv = static_cast<T*>(p.dv) + b * p.sdv.b + a * p.sdv.a;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = n_blk + warp * 16 + g + 8 * r;
    if (key >= T_) continue;
#pragma unroll
    for (int dn = 0; dn < BD / 8; ++dn)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = dn * 8 + 2 * t4 + e;
        if (col < D) {
          odk[(int64_t)key * p.sdk.t + col] = from_f<T>(dk[dn][2 * r + e] * p.scale);
          odv[(int64_t)key * p.sdv.t + col] = from_f<T>(dv[dn][2 * r + e]);
        }
      }
  }
}

// ------------------------------------------------------------------------------------------
// SIMT kernels (fp32; selectable reference path for fp16 / bf16). TPR = BD/16 threads per row,
// each holding dims d = t + TPR*i (i < 16); dot products reduced with xor shuffles inside the
// row's lane group (every lane ends with the bit-identical sum).
// ------------------------------------------------------------------------------------------
constexpr int kSimtTile = 32;  // keys (forward, dQ, probs) or queries (dK/dV) per shared tile

template <int TPR>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int off = TPR / 2; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

template <typename T, int BD>
__device__ __forceinline__ void load_row_regs(float (&r)[16], const T* base, int64_t st, int row, int T_, int D,
                                              int t) {
  constexpr int TPR = BD / 16;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const int d = t + TPR * i;
    r[i] = (row < T_ && d < D) ? to_f(base[(int64_t)row * st + d]) : 0.f;
  }
}

template <typename T, int BD>
__device__ __forceinline__ void load_tile_f32(float* s, const T* g, int64_t st, int r0, int T_, int D) {
  for (int e = threadIdx.x; e < kSimtTile * BD; e += kThreads) {
    const int r = e / BD, d = e % BD;
    s[e] = (r0 + r < T_ && d < D) ? to_f(g[(int64_t)(r0 + r) * st + d]) : 0.f;
  }
}

template <int BD>
__device__ __forceinline__ float dot16(const float (&x)[16], const float* srow, int t) {
  constexpr int TPR = BD / 16;
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < 16; ++i) acc = fmaf(x[i], srow[t + TPR * i], acc);
  return group_sum<TPR>(acc);
}

template <typename T, int BD>
__global__ void __launch_bounds__(kThreads) attn_fwd_simt(const AttnParams p) {
  constexpr int TPR = BD / 16, RB = kThreads / TPR;
  __shared__ float sK[kSimtTile * BD], sV[kSimtTile * BD];
  __shared__ int sOk[kSimtTile];
  const int bh = blockIdx.x, b = bh / p.A, a = bh % p.A;
  const int t = threadIdx.x % TPR, row = blockIdx.y * RB + threadIdx.x / TPR;
  const T* q = static_cast<const T*>(p.q) + b * p.sq.b + a * p.sq.a;
  const T* k = static_cast<const T*>(p.k) + b * p.sk.b + a * p.sk.a;
  const T* v = static_cast<const T*>(p.v) + b * p.sv.b + a * p.sv.a;
  const int* mask = p.mask ? p.mask + b * p.mask_b : nullptr;
  const int T_ = p.T, D = p.D;

  float qr[16], o[16];
  load_row_regs<T, BD>(qr, q, p.sq.t, row, T_, D, t);
#pragma unroll
  for (int i = 0; i < 16; ++i) o[i] = 0.f;
  float m = -INFINITY, l = 0.f;
  for (int n0 = 0; n0 < T_; n0 += kSimtTile) {
    __syncthreads();
    load_tile_f32<T, BD>(sK, k, p.sk.t, n0, T_, D);
    load_tile_f32<T, BD>(sV, v, p.sv.t, n0, T_, D);
    load_key_ok(sOk, mask, n0, T_, kSimtTile);
    __syncthreads();
    float s[kSimtTile];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kSimtTile; ++j) {
      const float x = dot16<BD>(qr, sK + j * BD, t);
      s[j] = sOk[j] ? x * p.scale_log2 : -INFINITY;
      mx = fmaxf(mx, s[j]);
    }
    const float mn = fmaxf(m, mx), ms = mn == -INFINITY ? 0.f : mn, alpha = exp2f(m - ms);
    m = mn;
    l *= alpha;
#pragma unroll
    for (int i = 0; i < 16; ++i) o[i] *= alpha;
#pragma unroll
    for (int j = 0; j < kSimtTile; ++j) {
      const float pj = exp2f(s[j] - ms);
      l += pj;
#pragma unroll
      for (int i = 0; i < 16; ++i) o[i] = fmaf(pj, sV[j * BD + t + TPR * i], o[i]);
    }
  }
  if (row >= T_) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;
  T* out = static_cast<T*>(p.o) + b * p.so.b + a * p.so.a + (int64_t)row * p.so.t;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const int d = t + TPR * i;
    if (d < D) out[d] = from_f<T>(o[i] * inv);
  }
  if (t == 0) p.lse[(int64_t)bh * T_ + row] = l > 0.f ? m + log2f(l) : INFINITY;
}

template <typename T, int BD>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq_simt(const AttnParams p) {
  constexpr int TPR = BD / 16, RB = kThreads / TPR;
  __shared__ float sK[kSimtTile * BD], sV[kSimtTile * BD];
  __shared__ int sOk[kSimtTile];
  const int bh = blockIdx.x, b = bh / p.A, a = bh % p.A;
  const int t = threadIdx.x % TPR, row = blockIdx.y * RB + threadIdx.x / TPR;
  const T* q = static_cast<const T*>(p.q) + b * p.sq.b + a * p.sq.a;
  const T* k = static_cast<const T*>(p.k) + b * p.sk.b + a * p.sk.a;
  const T* v = static_cast<const T*>(p.v) + b * p.sv.b + a * p.sv.a;
  const T* dout = static_cast<const T*>(p.dout) + b * p.sdo.b + a * p.sdo.a;
  const int* mask = p.mask ? p.mask + b * p.mask_b : nullptr;
  const int T_ = p.T, D = p.D;

  float qr[16], dor[16], dq[16];
  load_row_regs<T, BD>(qr, q, p.sq.t, row, T_, D, t);
  load_row_regs<T, BD>(dor, dout, p.sdo.t, row, T_, D, t);
#pragma unroll
  for (int i = 0; i < 16; ++i) dq[i] = 0.f;
  const float lse = row < T_ ? p.lse[(int64_t)bh * T_ + row] : INFINITY;
  const float delta = row < T_ ? p.delta[(int64_t)bh * T_ + row] : 0.f;
  for (int n0 = 0; n0 < T_; n0 += kSimtTile) {
    __syncthreads();
    load_tile_f32<T, BD>(sK, k, p.sk.t, n0, T_, D);
    load_tile_f32<T, BD>(sV, v, p.sv.t, n0, T_, D);
    load_key_ok(sOk, mask, n0, T_, kSimtTile);
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kSimtTile; ++j) {
      const float s = dot16<BD>(qr, sK + j * BD, t);
      const float dp = dot16<BD>(dor, sV + j * BD, t);
      const float pj = sOk[j] ? exp2f(s * p.scale_log2 - lse) : 0.f;
      const float ds = pj * (dp - delta);
#pragma unroll
      for (int i = 0; i < 16; ++i) dq[i] = fmaf(ds, sK[j * BD + t + TPR * i], dq[i]);
    }
  }
  if (row >= T_) return;
  T* out = static_cast<T*>(p.dq) + b * p.sdq.b + a * p.sdq.a + (int64_t)row * p.sdq.t;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const int d = t + TPR * i;
    if (d < D) out[d] = from_f<T>(dq[i] * p.scale);
  }
}

template <typename T, int BD>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkdv_simt(const AttnParams p) {
  constexpr int TPR = BD / 16, RB = kThreads / TPR;
  __shared__ float sQ[kSimtTile * BD], sdO[kSimtTile * BD];
  __shared__ float sL[kSimtTile], sDl[kSimtTile];
  const int bh = blockIdx.x, b = bh / p.A, a = bh % p.A;
  const int t = threadIdx.x % TPR, key = blockIdx.y * RB + threadIdx.x / TPR;
  const T* q = static_cast<const T*>(p.q) + b * p.sq.b + a * p.sq.a;
  const T* k = static_cast<const T*>(p.k) + b * p.sk.b + a * p.sk.a;
  const T* v = static_cast<const T*>(p.v) + b * p.sv.b + a * p.sv.a;
  const T* dout = static_cast<const T*>(p.dout) + b * p.sdo.b + a * p.sdo.a;
  const int* mask = p.mask ? p.mask + b * p.mask_b : nullptr;
  const float* lse = p.lse + (int64_t)bh * p.T;
  const float* delta = p.delta + (int64_t)bh * p.T;
  const int T_ = p.T, D = p.D;
  const bool kok = key_ok(mask, key, T_);

  float kr[16], vr[16], dk[16], dv[16];
  load_row_regs<T, BD>(kr, k, p.sk.t, key, T_, D, t);
  load_row_regs<T, BD>(vr, v, p.sv.t, key, T_, D, t);
#pragma unroll
  for (int i = 0; i < 16; ++i) dk[i] = dv[i] = 0.f;
  for (int m0 = 0; m0 < T_; m0 += kSimtTile) {
    __syncthreads();
    load_tile_f32<T, BD>(sQ, q, p.sq.t, m0, T_, D);
    load_tile_f32<T, BD>(sdO, dout, p.sdo.t, m0, T_, D);
    load_rows(sL, sDl, lse, delta, m0, T_, kSimtTile);
    __syncthreads();
#pragma unroll 4
    for (int i0 = 0; i0 < kSimtTile; ++i0) {
      const float s = dot16<BD>(kr, sQ + i0 * BD, t);
      const float dp = dot16<BD>(vr, sdO + i0 * BD, t);
      const float pi = kok ? exp2f(s * p.scale_log2 - sL[i0]) : 0.f;
      const float ds = pi * (dp - sDl[i0]);
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        dv[i] = fmaf(pi, sdO[i0 * BD + t + TPR * i], dv[i]);
        dk[i] = fmaf(ds, sQ[i0 * BD + t + TPR * i], dk[i]);
      }
    }
  }
  if (key >= T_) return;
  T* odk = static_cast<T*>(p.dk) + b * p.sdk.b + a * p.sdk.a + (int64_t)key * p.sdk.t;
  T* odv = static_cast<T*>(p.dv) + b * p.sdv.b + a * p.sdv.a + (int64_t)key * p.sdv.t;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const int d = t + TPR * i;
    if (d < D) {
      odk[d] = from_f<T>(dk[i] * p.scale);
      odv[d] = from_f<T>(dv[i]);
    }
  }
}

// probabilities from the saved LSE: grid (B*A, ceil(T/RB)); a tile of RB rows x 32 keys is
// staged in shared memory so that each row segment is written with consecutive addresses.
template <typename T, int BD>
__global__ void __launch_bounds__(kThreads) attn_probs_simt(const AttnParams p) {
  constexpr int TPR = BD / 16, RB = kThreads / TPR;
  __shared__ float sK[kSimtTile * BD];
  __shared__ float sP[RB * (kSimtTile + 1)];
  __shared__ int sOk[kSimtTile];
  const int bh = blockIdx.x, b = bh / p.A, a = bh % p.A;
  const int grp = threadIdx.x / TPR, t = threadIdx.x % TPR, r0 = blockIdx.y * RB, row = r0 + grp;
  const T* q = static_cast<const T*>(p.q) + b * p.sq.b + a * p.sq.a;
  const T* k = static_cast<const T*>(p.k) + b * p.sk.b + a * p.sk.a;
  const int* mask = p.mask ? p.mask + b * p.mask_b : nullptr;
  const int T_ = p.T, D = p.D;
  T* probs = static_cast<T*>(p.probs) + (int64_t)bh * T_ * T_;

  float qr[16];
  load_row_regs<T, BD>(qr, q, p.sq.t, row, T_, D, t);
  const float lse = row < T_ ? p.lse[(int64_t)bh * T_ + row] : INFINITY;
  for (int n0 = 0; n0 < T_; n0 += kSimtTile) {
    __syncthreads();
    load_tile_f32<T, BD>(sK, k, p.sk.t, n0, T_, D);
    load_key_ok(sOk, mask, n0, T_, kSimtTile);
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kSimtTile; ++j) {
      const float s = dot16<BD>(qr, sK + j * BD, t);
      if (t == 0) sP[grp * (kSimtTile + 1) + j] = sOk[j] ? exp2f(s * p.scale_log2 - lse) : 0.f;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < RB * kSimtTile; e += kThreads) {
      const int r = e / kSimtTile, j = e % kSimtTile;
      if (r0 + r < T_ && n0 + j < T_)
        probs[(int64_t)(r0 + r) * T_ + n0 + j] = from_f<T>(sP[r * (kSimtTile + 1) + j]);
    }
  }
}

// delta[bh*T + t] = sum_d dO * O (fp32), one warp per row, grid-stride over rows
template <typename T>
__global__ void __launch_bounds__(kThreads) attn_bwd_delta(const AttnParams p, int64_t rows) {
  const int lane = threadIdx.x & 31;
  const int64_t step = (int64_t)gridDim.x * (kThreads / 32);
  for (int64_t r = (int64_t)blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5); r < rows; r += step) {
    const int64_t bh = r / p.T;
    const int tt = (int)(r - bh * p.T);
    const int b = (int)(bh / p.A), a = (int)(bh % p.A);
    const T* o = static_cast<const T*>(p.o) + b * p.so.b + a * p.so.a + (int64_t)tt * p.so.t;
    const T* dout = static_cast<const T*>(p.dout) + b * p.sdo.b + a * p.sdo.a + (int64_t)tt * p.sdo.t;
    float acc = 0.f;
    for (int d = lane; d < p.D; d += 32) acc = fmaf(to_f(o[d]), to_f(dout[d]), acc);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) p.delta[r] = acc;
  }
}

// ------------------------------------------------------------------------------------------
// host launchers
// ------------------------------------------------------------------------------------------
namespace {

enum Impl : int { kAuto = 0, kSimt = 1 };

template <typename K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes),
               "attention: cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_common(const char* fn, int dtype, int impl, int64_t B, int64_t A, int64_t T, int64_t D) {
  const std::string f(fn);
  check(dtype == kF32 || dtype == kF16 || dtype == kBF16,
        f + ": dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16), got " + std::to_string(dtype));
  check(impl == kAuto || impl == kSimt, f + ": impl must be 0 (auto) or 1 (simt), got " + std::to_string(impl));
  check(B > 0 && A > 0 && T > 0 && D > 0, f + ": B, A, T, d must be positive, got (" + std::to_string(B) + ", " +
        std::to_string(A) + ", " + std::to_string(T) + ", " + std::to_string(D) + ")");
  check(T <= kMaxSeqLen, f + ": sequence length T=" + std::to_string(T) + " exceeds the maximum " +
        std::to_string(kMaxSeqLen));
  check(D <= 128, f + ": head dim d=" + std::to_string(D) + " is not supported; allowed d <= 128 "
        "(32, 64, 128 native; smaller d is padded in shared memory)");
  check(B * A <= 2147483647LL, f + ": B*A=" + std::to_string(B * A) + " exceeds 2^31-1 (grid x)");
}

bool tile_aligned(uintptr_t ptr, Strides s) {
  return ptr % 16 == 0 && s.b % 8 == 0 && s.a % 8 == 0 && s.t % 8 == 0;
}

template <typename F>
void head_dim(int64_t D, F&& f) {
  if (D <= 32) f(std::integral_constant<int, 32>{});
  else if (D <= 64) f(std::integral_constant<int, 64>{});
  else f(std::integral_constant<int, 128>{});
}

template <typename F>
void dtype_switch(int dtype, F&& f) {
  switch (dtype) {
    case kF32: f(float{}); break;
    case kF16: f(__half{}); break;
    default: f(__nv_bfloat16{}); break;
  }
}

}  // namespace

int64_t attention_max_seq_len() { return kMaxSeqLen; }

void attention_forward(int dtype, int impl, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, int64_t mask_b,
                       uintptr_t o, uintptr_t lse, int64_t B, int64_t A, int64_t T, int64_t D,
                       int64_t sqb, int64_t sqa, int64_t sqt, int64_t skb, int64_t ska, int64_t skt,
                       int64_t svb, int64_t sva, int64_t svt, int64_t sob, int64_t soa, int64_t sot,
                       uintptr_t stream) {
  check_common("attention_forward", dtype, impl, B, A, T, D);
  AttnParams p{};
  p.q = (const void*)q; p.k = (const void*)k; p.v = (const void*)v;
  p.mask = (const int*)mask; p.mask_b = mask_b;
  p.o = (void*)o; p.lse = (float*)lse;
  p.sq = {sqb, sqa, sqt}; p.sk = {skb, ska, skt}; p.sv = {svb, sva, svt}; p.so = {sob, soa, sot};
  p.A = (int)A; p.T = (int)T; p.D = (int)D;
  p.scale = 1.f / sqrtf((float)D);
  p.scale_log2 = p.scale * 1.4426950408889634f;
  p.vec = D % 8 == 0 && tile_aligned(q, p.sq) && tile_aligned(k, p.sk) && tile_aligned(v, p.sv);
  cudaStream_t st = (cudaStream_t)stream;
  dtype_switch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    head_dim(D, [&](auto bd) {
      constexpr int BD = decltype(bd)::value;
      if constexpr (!std::is_same<T_, float>::value) {
        if (impl == kAuto) {
          const size_t smem = fwd_smem_bytes<BD>();
          allow_smem(attn_fwd_mma<T_, BD>, smem);
          attn_fwd_mma<T_, BD><<<dim3((unsigned)(B * A), (unsigned)cdiv(T, kBM)), kThreads, smem, st>>>(p);
          return;
        }
      }
      constexpr int RB = kThreads / (BD / 16);
      attn_fwd_simt<T_, BD><<<dim3((unsigned)(B * A), (unsigned)cdiv(T, RB)), kThreads, 0, st>>>(p);
    });
  });
  check_cuda(cudaGetLastError(), "attention_forward launch");
}

void attention_probs(int dtype, uintptr_t q, uintptr_t k, uintptr_t mask, int64_t mask_b, uintptr_t lse,
                     uintptr_t probs, int64_t B, int64_t A, int64_t T, int64_t D, int64_t sqb, int64_t sqa,
                     int64_t sqt, int64_t skb, int64_t ska, int64_t skt, uintptr_t stream) {
  check_common("attention_probs", dtype, kAuto, B, A, T, D);
  AttnParams p{};
  p.q = (const void*)q; p.k = (const void*)k;
  p.mask = (const int*)mask; p.mask_b = mask_b;
  p.lse = (float*)lse; p.probs = (void*)probs;
  p.sq = {sqb, sqa, sqt}; p.sk = {skb, ska, skt};
  p.A = (int)A; p.T = (int)T; p.D = (int)D;
  p.scale = 1.f / sqrtf((float)D);
  p.scale_log2 = p.scale * 1.4426950408889634f;
  cudaStream_t st = (cudaStream_t)stream;
  dtype_switch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    head_dim(D, [&](auto bd) {
      constexpr int BD = decltype(bd)::value;
      constexpr int RB = kThreads / (BD / 16);
      attn_probs_simt<T_, BD><<<dim3((unsigned)(B * A), (unsigned)cdiv(T, RB)), kThreads, 0, st>>>(p);
    });
  });
  check_cuda(cudaGetLastError(), "attention_probs launch");
}

void attention_backward(int dtype, int impl, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, int64_t mask_b,
                        uintptr_t o, uintptr_t dout, uintptr_t lse, uintptr_t delta, uintptr_t dq, uintptr_t dk,
                        uintptr_t dv, int64_t B, int64_t A, int64_t T, int64_t D,
                        int64_t sqb, int64_t sqa, int64_t sqt, int64_t skb, int64_t ska, int64_t skt,
                        int64_t svb, int64_t sva, int64_t svt, int64_t sob, int64_t soa, int64_t sot,
                        int64_t sdob, int64_t sdoa, int64_t sdot, int64_t sdqb, int64_t sdqa, int64_t sdqt,
                        int64_t sdkb, int64_t sdka, int64_t sdkt, int64_t sdvb, int64_t sdva, int64_t sdvt,
                        uintptr_t stream) {
  check_common("attention_backward", dtype, impl, B, A, T, D);
  AttnParams p{};
  p.q = (const void*)q; p.k = (const void*)k; p.v = (const void*)v;
  p.mask = (const int*)mask; p.mask_b = mask_b;
  p.o = (void*)o; p.lse = (float*)lse; p.dout = (const void*)dout; p.delta = (float*)delta;
  p.dq = (void*)dq; p.dk = (void*)dk; p.dv = (void*)dv;
  p.sq = {sqb, sqa, sqt}; p.sk = {skb, ska, skt}; p.sv = {svb, sva, svt}; p.so = {sob, soa, sot};
  p.sdo = {sdob, sdoa, sdot}; p.sdq = {sdqb, sdqa, sdqt}; p.sdk = {sdkb, sdka, sdkt}; p.sdv = {sdvb, sdva, sdvt};
  p.A = (int)A; p.T = (int)T; p.D = (int)D;
  p.scale = 1.f / sqrtf((float)D);
  p.scale_log2 = p.scale * 1.4426950408889634f;
  p.vec = D % 8 == 0 && tile_aligned(q, p.sq) && tile_aligned(k, p.sk) && tile_aligned(v, p.sv) &&
          tile_aligned(dout, p.sdo);
  cudaStream_t st = (cudaStream_t)stream;
  const int64_t rows = B * A * T;
  dtype_switch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    const unsigned delta_blocks = (unsigned)std::min<int64_t>(cdiv(rows, kThreads / 32), 1 << 20);
    attn_bwd_delta<T_><<<delta_blocks, kThreads, 0, st>>>(p, rows);
    head_dim(D, [&](auto bd) {
      constexpr int BD = decltype(bd)::value;
      if constexpr (!std::is_same<T_, float>::value) {
        if (impl == kAuto) {
          constexpr int BMI = BD == 128 ? 32 : 64;
          const size_t s1 = dkdv_smem_bytes<BD, BMI>(), s2 = dq_smem_bytes<BD>();
          allow_smem(attn_bwd_dkdv_mma<T_, BD, BMI>, s1);
          allow_smem(attn_bwd_dq_mma<T_, BD>, s2);
          attn_bwd_dkdv_mma<T_, BD, BMI><<<dim3((unsigned)(B * A), (unsigned)cdiv(T, kBN)), kThreads, s1, st>>>(p);
          attn_bwd_dq_mma<T_, BD><<<dim3((unsigned)(B * A), (unsigned)cdiv(T, kBM)), kThreads, s2, st>>>(p);
          return;
        }
      }
      constexpr int RB = kThreads / (BD / 16);
      const dim3 grid((unsigned)(B * A), (unsigned)cdiv(T, RB));
      attn_bwd_dkdv_simt<T_, BD><<<grid, kThreads, 0, st>>>(p);
      attn_bwd_dq_simt<T_, BD><<<grid, kThreads, 0, st>>>(p);
    });
  });
  check_cuda(cudaGetLastError(), "attention_backward launch");
}

}  // namespace autodistil
