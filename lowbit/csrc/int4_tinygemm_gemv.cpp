// Small-batch (M = 1 .. ~64) int4 x float GEMV over weights packed by ATen's
// `_convert_weight_to_int4pack_for_cpu` (lowbit/packing/int4.py describes the layout).
//
// Why: ATen's `_weight_int4pack_mm_for_cpu` works on 4-row activation blocks and spends
// the same time at M = 1 as at M = 4 (measured ~1.3 ms for 4096x4096 g128 on a 2-core
// AVX2 Zen3, ~6 GB/s of weights), which is barely faster than the bf16 GEMV. This kernel
// streams the 4-bit weights once and factors the group's affine map out of the inner loop:
//     y[n] = sum_g ( s[g,n] * sum_{k in g} x[k] q[n,k]  +  (z[g,n] - 8 s[g,n]) * sum_{k in g} x[k] )
// so the inner loop is only nibble -> float conversion and one FMA per weight (and row).
//
// Speed (2-core Zen3, 4096x4096 g128, cold weights, op alone): M = 1 0.70 ms at 1 thread,
// 0.37-0.38 ms at 2 threads (22 GB/s of the ~30 GB/s measured read bandwidth). What limits
// it: the vector pipes, not memory. The loop issues 24 vector uops per 32 weight bytes
// (4 widen, 4 and, 8 int->float converts, 8 FMA) and runs ~2.8 of them per cycle; the
// prefetch distance (1-4 KiB) changes nothing measurable. Two processes each running it
// on one core get the same per-core time, so memory is not yet shared-limiting.
//
// Inner loops (the `isa` argument; ops/cpu_paths.py INT4_GEMV_LOOP picks one per CPU class):
//   avx2        32- and 64-row blocks, fp32 FMA on 256-bit registers (the scheme above);
//   avx512      64-row blocks, the same scheme on 512-bit registers (Sapphire Rapids: ~3 ns
//               per 64 weight bytes at M = 1 on one core with the weights in L2, vs 6.7 for avx2);
//   avx512_bf16 64-row blocks, nibbles turned into bf16 with one bitwise op and `vdpbf16ps`
//               (2 MACs per lane), x rounded to bf16; meant for Zen4/Zen5, where that
//               instruction issues like an FMA (on Sapphire Rapids it is 2x slower per MAC);
//   scalar      any CPU, and the short tail block of every call.
//
// Layouts served: "avx2" (32-row blocks) and "avx512" (64-row blocks). In both, a full
// block of B rows is a [K, B/2] byte matrix where byte c holds row c in its low nibble and
// row c + B/2 in its high nibble. Short tail blocks (nb < B rows) are [K, nb/2] bytes of
// adjacent row pairs (2c low, 2c+1 high). Built into lowbit's extension by ops/_ext.py.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LOWBIT_X86 1
#endif

namespace lowbit_int4_gemv {

// Software prefetch distance into the packed weight stream (bytes ahead of the loads) of
// the AVX512-BF16 loop, which is meant to be bound by DRAM reads.
constexpr int64_t kPrefetchBytes = 2048;

// Inner loops, selectable for tests and `lowbit tune` (-1 picks the best this CPU runs).
enum Isa : int64_t { kAuto = -1, kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

static inline float bf16_to_float(c10::BFloat16 v) { return static_cast<float>(v); }

// Scalar kernel for rows [r0, r0 + nb) of one block. `lo_row(c)` / `hi_row(c)` map byte
// column c to the block rows its nibbles belong to.
static void block_scalar(const float* x, const float* xsum, const uint8_t* q, const c10::BFloat16* sz,
                         float* y, int64_t K, int64_t gs, int64_t Np, int64_t r0, int64_t nb, bool pairs) {
  const int64_t half = nb / 2;
  std::vector<float> acc(nb);
  for (int64_t g0 = 0; g0 < K; g0 += gs) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t k = g0; k < g0 + gs; ++k) {
      const uint8_t* b = q + k * half;
      for (int64_t c = 0; c < half; ++c) {
        const int64_t lo = pairs ? 2 * c : c, hi = pairs ? 2 * c + 1 : c + half;
        acc[lo] += x[k] * static_cast<float>(b[c] & 0x0F);
        acc[hi] += x[k] * static_cast<float>(b[c] >> 4);
      }
    }
    const c10::BFloat16* g = sz + (g0 / gs) * Np * 2;
    for (int64_t r = 0; r < nb; ++r) {
      const float s = bf16_to_float(g[(r0 + r) * 2]), z = bf16_to_float(g[(r0 + r) * 2 + 1]);
      y[r0 + r] += s * acc[r] + (z - 8.f * s) * xsum[g0 / gs];
    }
  }
}

#ifdef LOWBIT_X86
// One full block of B rows (B = 32 or 64) with AVX2 + FMA. Per 8 bytes of one k (16
// weights): widen the bytes b = lo + 16 hi to 8 int32 lanes, convert b and lo = b & 15 to
// float and accumulate x*b and x*lo. The high-nibble rows' sums follow exactly as
// (sum x*b - sum x*lo) / 16 (b - lo = 16 hi per weight), which saves the shift of a
// separate hi extraction: 6 vector uops per 16 weights instead of 7 (the loop is bound by
// the 4 vector pipes of a Zen3 core, not by memory, at 1-2 threads). Two k-steps in flight
// for FMA latency. The per-group epilogue is vectorized over 8 rows.
template <int B>
__attribute__((target("avx2,fma"))) static void block_avx2(const float* x, const float* xsum, const uint8_t* q,
                                                          const c10::BFloat16* sz, float* y, int64_t K, int64_t gs,
                                                          int64_t Np, int64_t r0) {
  constexpr int H = B / 2;  // bytes per k
  constexpr int V = H / 8;  // 8-byte chunks per k
  const __m256i mask = _mm256_set1_epi32(0x0F);
  const __m256i hi16 = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256 sixteenth = _mm256_set1_ps(1.f / 16.f), eight = _mm256_set1_ps(8.f);
  for (int64_t g0 = 0; g0 < K; g0 += gs) {
    __m256 by0[V], lo0[V], by1[V], lo1[V];
    for (int v = 0; v < V; ++v) by0[v] = lo0[v] = by1[v] = lo1[v] = _mm256_setzero_ps();
    const uint8_t* ba = q + g0 * H;
    _mm_prefetch(reinterpret_cast<const char*>(ba + gs * H + 0), _MM_HINT_T0);
    for (int64_t k = g0; k < g0 + gs; k += 2, ba += 2 * H) {
      const __m256 xa = _mm256_set1_ps(x[k]), xb = _mm256_set1_ps(x[k + 1]);
      const uint8_t* bb = ba + H;
      _mm_prefetch(reinterpret_cast<const char*>(ba + 4096), _MM_HINT_T0);
      for (int v = 0; v < V; ++v) {
        const __m256i wa = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ba + 8 * v)));
        const __m256i wb = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bb + 8 * v)));
        by0[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(wa), xa, by0[v]);
        lo0[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(wa, mask)), xa, lo0[v]);
        by1[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(wb), xb, by1[v]);
        lo1[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(wb, mask)), xb, lo1[v]);
      }
    }
    const c10::BFloat16* g = sz + (g0 / gs) * Np * 2 + r0 * 2;
    const __m256 xs = _mm256_set1_ps(xsum[g0 / gs]);
    for (int v = 0; v < V; ++v) {
      const __m256 lo = _mm256_add_ps(lo0[v], lo1[v]);
      const __m256 hi = _mm256_mul_ps(_mm256_sub_ps(_mm256_add_ps(by0[v], by1[v]), lo), sixteenth);
      // 8 rows' (scale, zero) bf16 pairs = 8 dwords: scale in the low half, zero in the high.
      const __m256i pl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 2 * (8 * v)));
      const __m256i ph = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 2 * (H + 8 * v)));
      const __m256 sl = _mm256_castsi256_ps(_mm256_slli_epi32(pl, 16));
      const __m256 zl = _mm256_castsi256_ps(_mm256_and_si256(pl, hi16));
      const __m256 sh = _mm256_castsi256_ps(_mm256_slli_epi32(ph, 16));
      const __m256 zh = _mm256_castsi256_ps(_mm256_and_si256(ph, hi16));
      float* yl = y + r0 + 8 * v;
      float* yh = y + r0 + H + 8 * v;
      // y += s * acc + (z - 8 s) * xsum
      _mm256_storeu_ps(yl, _mm256_add_ps(_mm256_loadu_ps(yl),
                                         _mm256_fmadd_ps(sl, lo, _mm256_mul_ps(_mm256_fnmadd_ps(eight, sl, zl), xs))));
      _mm256_storeu_ps(yh, _mm256_add_ps(_mm256_loadu_ps(yh),
                                         _mm256_fmadd_ps(sh, hi, _mm256_mul_ps(_mm256_fnmadd_ps(eight, sh, zh), xs))));
    }
  }
}

// MR (2..4) activation rows against one full block: the weight conversion (widen, mask,
// 2 converts per 8 bytes) is shared by the MR rows, each row adds 2 FMAs. Loops over the
// block's 8-byte columns outside the group's k so the accumulators (2 MR, plus KU-fold
// unroll for FMA latency at small MR) stay in registers. x: MR rows of stride K; xsum:
// MR rows of stride K/gs; y: MR rows of stride Np.
template <int B, int MR, int KU>
__attribute__((target("avx2,fma"))) static void block_avx2_mr(const float* x, const float* xsum, const uint8_t* q,
                                                             const c10::BFloat16* sz, float* y, int64_t K,
                                                             int64_t gs, int64_t Np, int64_t r0) {
  constexpr int H = B / 2, V = H / 8;
  const __m256i mask = _mm256_set1_epi32(0x0F);
  const __m256i hi16 = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256 sixteenth = _mm256_set1_ps(1.f / 16.f), eight = _mm256_set1_ps(8.f);
  const int64_t ng = K / gs;
  for (int64_t g0 = 0; g0 < K; g0 += gs) {
    const c10::BFloat16* g = sz + (g0 / gs) * Np * 2 + r0 * 2;
    for (int v = 0; v < V; ++v) {
      __m256 by[KU][MR], lo[KU][MR];
      for (int u = 0; u < KU; ++u)
        for (int m = 0; m < MR; ++m) by[u][m] = lo[u][m] = _mm256_setzero_ps();
      const uint8_t* ba = q + g0 * H + 8 * v;
      for (int64_t k = g0; k < g0 + gs; k += KU, ba += KU * H) {
        for (int u = 0; u < KU; ++u) {
          const __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ba + u * H)));
          const __m256 fb = _mm256_cvtepi32_ps(w), fl = _mm256_cvtepi32_ps(_mm256_and_si256(w, mask));
          for (int m = 0; m < MR; ++m) {
            const __m256 xv = _mm256_broadcast_ss(x + m * K + k + u);
            by[u][m] = _mm256_fmadd_ps(fb, xv, by[u][m]);
            lo[u][m] = _mm256_fmadd_ps(fl, xv, lo[u][m]);
          }
        }
      }
      const __m256i pl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 2 * (8 * v)));
      const __m256i ph = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 2 * (H + 8 * v)));
      const __m256 sl = _mm256_castsi256_ps(_mm256_slli_epi32(pl, 16));
      const __m256 sh = _mm256_castsi256_ps(_mm256_slli_epi32(ph, 16));
      const __m256 cl = _mm256_fnmadd_ps(eight, sl, _mm256_castsi256_ps(_mm256_and_si256(pl, hi16)));
      const __m256 ch = _mm256_fnmadd_ps(eight, sh, _mm256_castsi256_ps(_mm256_and_si256(ph, hi16)));
      for (int m = 0; m < MR; ++m) {
        __m256 l = lo[0][m], b = by[0][m];
        for (int u = 1; u < KU; ++u) l = _mm256_add_ps(l, lo[u][m]), b = _mm256_add_ps(b, by[u][m]);
        const __m256 h = _mm256_mul_ps(_mm256_sub_ps(b, l), sixteenth);
        const __m256 xs = _mm256_set1_ps(xsum[m * ng + g0 / gs]);
        float* yl = y + m * Np + r0 + 8 * v;
        float* yh = y + m * Np + r0 + H + 8 * v;
        _mm256_storeu_ps(yl, _mm256_add_ps(_mm256_loadu_ps(yl), _mm256_fmadd_ps(sl, l, _mm256_mul_ps(cl, xs))));
        _mm256_storeu_ps(yh, _mm256_add_ps(_mm256_loadu_ps(yh), _mm256_fmadd_ps(sh, h, _mm256_mul_ps(ch, xs))));
      }
    }
  }
}

// Rows [0, M) of x against one full block, in tiles of up to 4 rows.
template <int B>
static void block_avx2_rows(const float* x, const float* xsum, const uint8_t* q, const c10::BFloat16* sz, float* y,
                            int64_t M, int64_t K, int64_t gs, int64_t Np, int64_t r0) {
  const int64_t ng = K / gs;
  int64_t m = 0;
  if (M == 1) {
    block_avx2<B>(x, xsum, q, sz, y, K, gs, Np, r0);
    return;
  }
  for (; m + 4 <= M; m += 4) block_avx2_mr<B, 4, 1>(x + m * K, xsum + m * ng, q, sz, y + m * Np, K, gs, Np, r0);
  const int64_t r = M - m;
  if (r == 3) block_avx2_mr<B, 3, 1>(x + m * K, xsum + m * ng, q, sz, y + m * Np, K, gs, Np, r0);
  else if (r == 2) block_avx2_mr<B, 2, 2>(x + m * K, xsum + m * ng, q, sz, y + m * Np, K, gs, Np, r0);
  else if (r == 1) block_avx2_mr<B, 1, 2>(x + m * K, xsum + m * ng, q, sz, y + m * Np, K, gs, Np, r0);
}

// ------------------------------------------------------------------ AVX512F loop
//
// The AVX2 loop's scheme on 512-bit registers, for one full 64-row block ("avx512"
// layout) and MR (1..4) fp32 activation rows. Per k, the 32 bytes widen to two registers
// of 16 int32 lanes (bytes 0-15: rows 0-15 low / 32-47 high nibble; bytes 16-31: rows
// 16-31 / 48-63); each is converted whole (b = lo + 16 hi) and masked (lo), and the
// high-nibble rows' sums follow in the epilogue as (sum x*b - sum x*lo) / 16. Rows come
// out in order. Per k pair (64 bytes): 16 conversion uops + 8 FMA per activation row.
// On Sapphire Rapids this beats the bf16 dot-product loop below: `vdpbf16ps` zmm issues
// ~4x slower than `vfmadd231ps` zmm there (benchmarks/x86_dot_throughput.py), so its 2
// MACs per lane cost more than 2 FMAs.
#define LOWBIT_AVX512_TARGET __attribute__((target("avx512f,avx512bw")))

// Group epilogue helpers shared by the two 512-bit loops (64-row blocks).
// s, c = scale, zero - offset * scale of the block's 64 rows in group row `g`: 4 x 16 dwords
// of bf16 (scale, zero) pairs, scale in the low half, zero in the high half.
LOWBIT_AVX512_TARGET static inline void group_scales64(const c10::BFloat16* g, float offset, __m512 s[4],
                                                       __m512 c[4]) {
  const __m512i hi16 = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512 off = _mm512_set1_ps(offset);
  for (int v = 0; v < 4; ++v) {
    const __m512i p = _mm512_loadu_si512(g + 32 * v);
    s[v] = _mm512_castsi512_ps(_mm512_slli_epi32(p, 16));
    c[v] = _mm512_fnmadd_ps(off, s[v], _mm512_castsi512_ps(_mm512_and_si512(p, hi16)));
  }
}

template <int KU, int MR>
LOWBIT_AVX512_TARGET static inline void zero_acc(__m512 (&acc)[KU][MR][4]) {
  for (int u = 0; u < KU; ++u)
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < 4; ++i) acc[u][m][i] = _mm512_setzero_ps();
}

// a[i] = sum over the KU unrolled accumulators of row m.
template <int KU, int MR>
LOWBIT_AVX512_TARGET static inline void sum_unrolled(const __m512 (&acc)[KU][MR][4], int m, __m512 a[4]) {
  for (int i = 0; i < 4; ++i) {
    a[i] = acc[0][m][i];
    for (int u = 1; u < KU; ++u) a[i] = _mm512_add_ps(a[i], acc[u][m][i]);
  }
}

// yr[0, 64) += s * rows + c * xsum (rows in order).
LOWBIT_AVX512_TARGET static inline void add_group64(float* yr, const __m512 s[4], const __m512 c[4],
                                                    const __m512 rows[4], float xsum) {
  const __m512 xs = _mm512_set1_ps(xsum);
  for (int v = 0; v < 4; ++v) {
    _mm512_storeu_ps(yr + 16 * v, _mm512_add_ps(_mm512_loadu_ps(yr + 16 * v),
                                                _mm512_fmadd_ps(s[v], rows[v], _mm512_mul_ps(c[v], xs))));
  }
}

template <int MR, int KU>
LOWBIT_AVX512_TARGET static void block_avx512_mr(const float* x, const float* xsum, const uint8_t* q,
                                                 const c10::BFloat16* sz, float* y, int64_t K, int64_t gs,
                                                 int64_t Np, int64_t r0) {
  constexpr int H = 32;  // bytes per k in a 64-row block
  const __m512i mask = _mm512_set1_epi32(0x0F);
  const __m512 sixteenth = _mm512_set1_ps(1.f / 16.f);
  const int64_t ng = K / gs;
  for (int64_t g0 = 0; g0 < K; g0 += gs) {
    // acc[u][m][0/1]: x*b and x*lo for bytes 0-15; [2/3]: the same for bytes 16-31.
    __m512 acc[KU][MR][4];
    zero_acc<KU, MR>(acc);
    const uint8_t* ba = q + g0 * H;
    for (int64_t k = g0; k < g0 + gs; k += KU) {
      for (int u = 0; u < KU; ++u, ba += H) {
        if ((u & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(ba + kPrefetchBytes), _MM_HINT_T0);
        const __m512i w0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ba)));
        const __m512i w1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ba + 16)));
        const __m512 b0 = _mm512_cvtepi32_ps(w0), l0 = _mm512_cvtepi32_ps(_mm512_and_si512(w0, mask));
        const __m512 b1 = _mm512_cvtepi32_ps(w1), l1 = _mm512_cvtepi32_ps(_mm512_and_si512(w1, mask));
        for (int m = 0; m < MR; ++m) {
          const __m512 xv = _mm512_set1_ps(x[m * K + k + u]);
          acc[u][m][0] = _mm512_fmadd_ps(b0, xv, acc[u][m][0]);
          acc[u][m][1] = _mm512_fmadd_ps(l0, xv, acc[u][m][1]);
          acc[u][m][2] = _mm512_fmadd_ps(b1, xv, acc[u][m][2]);
          acc[u][m][3] = _mm512_fmadd_ps(l1, xv, acc[u][m][3]);
        }
      }
    }
    __m512 s[4], c[4];
    group_scales64(sz + (g0 / gs) * Np * 2 + r0 * 2, 8.f, s, c);  // y += s * acc + (z - 8 s) * xsum
    for (int m = 0; m < MR; ++m) {
      __m512 a[4];
      sum_unrolled<KU, MR>(acc, m, a);
      // rows 0-15, 16-31 (low nibbles), 32-47, 48-63 (high nibbles: (b - lo) / 16)
      const __m512 rows[4] = {a[1], a[3], _mm512_mul_ps(_mm512_sub_ps(a[0], a[1]), sixteenth),
                              _mm512_mul_ps(_mm512_sub_ps(a[2], a[3]), sixteenth)};
      add_group64(y + m * Np + r0, s, c, rows, xsum[m * ng + g0 / gs]);
    }
  }
}

// The AVX512F loop for an MR-row tile: two k in flight at M = 1 for the FMA latency (4
// chains per k, 2 FMA ports).
struct Avx512Loop {
  using X = float;
  template <int MR>
  static void run(const float* x, const float* xsum, const uint8_t* q, const c10::BFloat16* sz, float* y, int64_t K,
                  int64_t gs, int64_t Np, int64_t r0) {
    block_avx512_mr<MR, MR == 1 ? 2 : 1>(x, xsum, q, sz, y, K, gs, Np, r0);
  }
};

// ------------------------------------------------------------------ AVX512-BF16 loop
//
// One full 64-row block ("avx512" layout) with `vdpbf16ps`, for MR (1..4) activation rows
// rounded to bf16. A nibble q becomes an exact bf16 with one bitwise op: bits 0x4300 | q
// are the bf16 value 128 + q (exponent 2^7, mantissa unit 1). Two consecutive k of the
// same weight row go into the two bf16 halves of a 32-bit lane, so one `vdpbf16ps` does
// 2 MACs per lane (32 per instruction) with fp32 accumulation; the bf16 products are exact
// in fp32. The offset 128 * sum(x) folds into the per-group correction term:
//     y += s * acc + (z - 136 s) * xsum        (acc = sum_k x[k] (128 + q[k]))
// Per k pair (64 bytes = 128 weights): 2 loads, 2 widen + 2 word unpacks, 2 ternary-logic
// (lo nibbles), 2 shift + 2 or (hi nibbles), then 4 dot products per activation row.
//
// Lane order: with A / B the 32 bytes of k / k+1, widened to words and unpacked lo/hi
// (both in-lane ops, no cross-lane shuffles in the loop), accumulator lane 4l + j holds
//   acc0: row 8l + j,   acc1: row 8l + 4 + j,   acc2 / acc3: the same + 32 (high nibbles).
// The group epilogue puts rows back in order with two 2-source permutes per 32 rows.
#define LOWBIT_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

LOWBIT_BF16_TARGET static inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

template <int MR, int KU>
LOWBIT_BF16_TARGET static void block_bf16_mr(const c10::BFloat16* x, const float* xsum, const uint8_t* q,
                                             const c10::BFloat16* sz, float* y, int64_t K, int64_t gs,
                                             int64_t Np, int64_t r0) {
  constexpr int H = 32;  // bytes per k in a 64-row block
  const __m512i mask = _mm512_set1_epi16(0x000F);
  const __m512i bias = _mm512_set1_epi16(0x4300);  // bf16 128.0
  // Rows 0..15 of a 32-row half = lanes 0-3 of acc0, 0-3 of acc1, 4-7 of acc0, 4-7 of acc1.
  const __m512i idx_a = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i idx_b = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  const int64_t ng = K / gs;
  for (int64_t g0 = 0; g0 < K; g0 += gs) {
    __m512 acc[KU][MR][4];
    zero_acc<KU, MR>(acc);
    const uint8_t* ba = q + g0 * H;
    for (int64_t k = g0; k < g0 + gs; k += 2 * KU) {
      for (int u = 0; u < KU; ++u, ba += 2 * H) {
        _mm_prefetch(reinterpret_cast<const char*>(ba + kPrefetchBytes), _MM_HINT_T0);
        const __m512i wa = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ba)));
        const __m512i wb = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ba + H)));
        const __m512i p0 = _mm512_unpacklo_epi16(wa, wb), p1 = _mm512_unpackhi_epi16(wa, wb);
        // (p & 0xF) | 0x4300: ternary-logic truth table 0xEA = (A & B) | C.
        const __m512bh w0 = as_bh(_mm512_ternarylogic_epi32(p0, mask, bias, 0xEA));
        const __m512bh w1 = as_bh(_mm512_ternarylogic_epi32(p1, mask, bias, 0xEA));
        const __m512bh w2 = as_bh(_mm512_or_si512(_mm512_srli_epi16(p0, 4), bias));
        const __m512bh w3 = as_bh(_mm512_or_si512(_mm512_srli_epi16(p1, 4), bias));
        const int64_t kk = k + 2 * u;
        for (int m = 0; m < MR; ++m) {
          int32_t pair;
          std::memcpy(&pair, x + m * K + kk, sizeof(pair));  // bf16 x[kk], x[kk + 1]
          const __m512bh xv = as_bh(_mm512_set1_epi32(pair));
          acc[u][m][0] = _mm512_dpbf16_ps(acc[u][m][0], w0, xv);
          acc[u][m][1] = _mm512_dpbf16_ps(acc[u][m][1], w1, xv);
          acc[u][m][2] = _mm512_dpbf16_ps(acc[u][m][2], w2, xv);
          acc[u][m][3] = _mm512_dpbf16_ps(acc[u][m][3], w3, xv);
        }
      }
    }
    __m512 s[4], c[4];
    group_scales64(sz + (g0 / gs) * Np * 2 + r0 * 2, 136.f, s, c);  // y += s * acc + (z - 136 s) * xsum
    for (int m = 0; m < MR; ++m) {
      __m512 a[4];
      sum_unrolled<KU, MR>(acc, m, a);
      const __m512 rows[4] = {_mm512_permutex2var_ps(a[0], idx_a, a[1]), _mm512_permutex2var_ps(a[0], idx_b, a[1]),
                              _mm512_permutex2var_ps(a[2], idx_a, a[3]), _mm512_permutex2var_ps(a[2], idx_b, a[3])};
      add_group64(y + m * Np + r0, s, c, rows, xsum[m * ng + g0 / gs]);
    }
  }
}

// The AVX512-BF16 loop for an MR-row tile: two k pairs in flight at M = 1 and 2 for the
// dot-product latency (when the group holds a multiple of 4 k).
struct Bf16Loop {
  using X = c10::BFloat16;
  template <int MR>
  static void run(const c10::BFloat16* x, const float* xsum, const uint8_t* q, const c10::BFloat16* sz, float* y,
                  int64_t K, int64_t gs, int64_t Np, int64_t r0) {
    if (MR <= 2 && gs % 4 == 0) block_bf16_mr<MR, 2>(x, xsum, q, sz, y, K, gs, Np, r0);
    else block_bf16_mr<MR, 1>(x, xsum, q, sz, y, K, gs, Np, r0);
  }
};

// Rows [0, M) of x against one full 64-row block, in tiles of up to 4 rows (each tile
// re-converts the block's group, which is in L1 by then).
template <class Loop>
static void block_rows64(const typename Loop::X* x, const float* xsum, const uint8_t* q, const c10::BFloat16* sz,
                         float* y, int64_t M, int64_t K, int64_t gs, int64_t Np, int64_t r0) {
  const int64_t ng = K / gs;
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) Loop::template run<4>(x + m * K, xsum + m * ng, q, sz, y + m * Np, K, gs, Np, r0);
  const int64_t r = M - m;
  if (r == 3) Loop::template run<3>(x + m * K, xsum + m * ng, q, sz, y + m * Np, K, gs, Np, r0);
  else if (r == 2) Loop::template run<2>(x + m * K, xsum + m * ng, q, sz, y + m * Np, K, gs, Np, r0);
  else if (r == 1) Loop::template run<1>(x + m * K, xsum + m * ng, q, sz, y + m * Np, K, gs, Np, r0);
}
#endif

static int64_t detect_isa() {
#ifdef LOWBIT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512bf16")) {
    return kAvx512Bf16;
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kScalar;
}

static int64_t best_isa() {
  static const int64_t isa = detect_isa();
  return isa;
}

int64_t int4_gemv_best_isa() { return best_isa(); }

// x [M, K] float/bf16/fp16; qdata uint8 [Np, K/2]; scale_and_zero bf16 [K/gs, Np, 2];
// block_n: 32 ("avx2" layout) or 64 ("avx512"). Returns [M, Np] in x's dtype. Meant for
// small M (ops/cpu_paths.py): the weight is streamed once, each 4-row tile of x
// re-converts the (cache-resident) group of the block. isa: Isa above; the AVX512-BF16
// loop serves the 64-row layout and rounds x to bf16 (the 32-row layout, from AVX2 ATen
// builds, takes the AVX2 loop). ops/cpu.py validates every argument before calling here.
at::Tensor int4_tinygemm_gemv(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale_and_zero,
                              int64_t group_size, int64_t block_n, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 1, "int4_tinygemm_gemv: x must be [M, K] with M >= 1, got ", x.sizes());
  TORCH_CHECK(qdata.scalar_type() == at::kByte && qdata.dim() == 2 && qdata.is_contiguous(),
              "int4_tinygemm_gemv: qdata must be contiguous uint8 [Np, K/2]");
  TORCH_CHECK(scale_and_zero.scalar_type() == at::kBFloat16 && scale_and_zero.is_contiguous(),
              "int4_tinygemm_gemv: scale_and_zero must be contiguous bf16 [K/g, Np, 2]");
  TORCH_CHECK(block_n == 32 || block_n == 64, "int4_tinygemm_gemv: block_n must be 32 or 64, got ", block_n);
  const int64_t M = x.size(0), K = x.size(1), Np = qdata.size(0), gs = group_size;
  TORCH_CHECK(gs > 0 && qdata.size(1) * 2 == K && gs % 2 == 0 && K % gs == 0, "int4_tinygemm_gemv: bad K/group_size");
  TORCH_CHECK(scale_and_zero.size(0) == K / gs && scale_and_zero.size(1) == Np && scale_and_zero.size(2) == 2,
              "int4_tinygemm_gemv: scale_and_zero shape mismatch");
  TORCH_CHECK(Np % 16 == 0, "int4_tinygemm_gemv: Np must be a multiple of 16");
  if (isa == kAuto) isa = best_isa();
  TORCH_CHECK(isa >= kScalar && isa <= best_isa(), "int4_tinygemm_gemv: isa ", isa, " cannot run here (best ",
              best_isa(), ")");
  const bool use_bf16 = isa == kAvx512Bf16 && block_n == 64;
  const bool use_avx512 = isa == kAvx512 && block_n == 64;

  // x as fp32 (all loops' xsum, the AVX2/AVX512F/scalar loops) and, for the bf16 loop, as
  // bf16: that loop reads x rounded to bf16, so its xsum is the sum of the rounded values.
  // Plain loops instead of ATen casts: a decode-size call (M = 1, K ~ 600) spent ~2 us per
  // small ATen op on the dev VM, as long as the kernel itself on a 576x576 layer.
  TORCH_CHECK(x.is_contiguous(), "int4_tinygemm_gemv: x must be contiguous");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "int4_tinygemm_gemv: x must be float32, bfloat16 or float16");
  std::vector<float> xf_own;
  std::vector<c10::BFloat16> xb_own;
  const float* xp = nullptr;
  const c10::BFloat16* xbp = nullptr;
  if (dt == at::kBFloat16) xbp = x.data_ptr<c10::BFloat16>();
  if (use_bf16 && dt != at::kBFloat16) {
    xb_own.resize(M * K);
    if (dt == at::kFloat) {
      const float* s = x.data_ptr<float>();
      for (int64_t i = 0; i < M * K; ++i) xb_own[i] = c10::BFloat16(s[i]);
    } else {
      const c10::Half* s = x.data_ptr<c10::Half>();
      for (int64_t i = 0; i < M * K; ++i) xb_own[i] = c10::BFloat16(static_cast<float>(s[i]));
    }
    xbp = xb_own.data();
  }
  if (dt == at::kFloat && !use_bf16) {
    xp = x.data_ptr<float>();
  } else {
    xf_own.resize(M * K);
    if (xbp != nullptr) {
      for (int64_t i = 0; i < M * K; ++i) xf_own[i] = static_cast<float>(xbp[i]);
    } else {
      const c10::Half* s = x.data_ptr<c10::Half>();
      for (int64_t i = 0; i < M * K; ++i) xf_own[i] = static_cast<float>(s[i]);
    }
    xp = xf_own.data();
  }
  const int64_t ng = K / gs;
  std::vector<float> xsum(M * ng, 0.f);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < ng; ++j) {
      const float* xg = xp + m * K + j * gs;
      float acc = 0.f;
      for (int64_t k = 0; k < gs; ++k) acc += xg[k];
      xsum[m * ng + j] = acc;
    }
  }
  // fp32 accumulators (every loop adds one group at a time into them), cast once at the end.
  at::Tensor y = at::empty({M, Np}, x.options());
  std::vector<float> yacc(M * Np, 0.f);
  float* yp = yacc.data();
  const uint8_t* qp = qdata.data_ptr<uint8_t>();
  const c10::BFloat16* szp = scale_and_zero.data_ptr<c10::BFloat16>();
  const int64_t n_full = Np / block_n;
  // Grain: at least ~64 KiB of weights per task, so the small layers of a 0.1-1B model
  // (a few hundred KiB, ~10-50 us) do not pay for a thread wake-up per block.
  const int64_t block_bytes = block_n * K / 2;
  const int64_t grain = std::max<int64_t>(1, (int64_t{64} << 10) / block_bytes);

  at::parallel_for(0, n_full, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint8_t* qb = qp + b * block_bytes;
#ifdef LOWBIT_X86
      if (use_bf16) {
        block_rows64<Bf16Loop>(xbp, xsum.data(), qb, szp, yp, M, K, gs, Np, b * 64);
        continue;
      }
      if (use_avx512) {
        block_rows64<Avx512Loop>(xp, xsum.data(), qb, szp, yp, M, K, gs, Np, b * 64);
        continue;
      }
      if (isa >= kAvx2) {
        if (block_n == 32) block_avx2_rows<32>(xp, xsum.data(), qb, szp, yp, M, K, gs, Np, b * 32);
        else block_avx2_rows<64>(xp, xsum.data(), qb, szp, yp, M, K, gs, Np, b * 64);
        continue;
      }
#endif
      for (int64_t m = 0; m < M; ++m)
        block_scalar(xp + m * K, xsum.data() + m * ng, qb, szp, yp + m * Np, K, gs, Np, b * block_n, block_n,
                     /*pairs=*/false);
    }
  });
  const int64_t tail = Np - n_full * block_n;
  for (int64_t m = 0; tail && m < M; ++m) {
    block_scalar(xp + m * K, xsum.data() + m * ng, qp + n_full * block_bytes, szp, yp + m * Np, K, gs, Np,
                 n_full * block_n, tail, /*pairs=*/true);
  }
  if (dt == at::kFloat) {
    std::memcpy(y.data_ptr<float>(), yp, sizeof(float) * M * Np);
  } else if (dt == at::kBFloat16) {
    c10::BFloat16* o = y.data_ptr<c10::BFloat16>();
    for (int64_t i = 0; i < M * Np; ++i) o[i] = c10::BFloat16(yp[i]);
  } else {
    c10::Half* o = y.data_ptr<c10::Half>();
    for (int64_t i = 0; i < M * Np; ++i) o[i] = c10::Half(yp[i]);
  }
  return y;
}

}  // namespace lowbit_int4_gemv

TORCH_LIBRARY_FRAGMENT(lowbit_ext, m) {
  m.def("int4_tinygemm_gemv(Tensor x, Tensor qdata, Tensor scale_and_zero, int group_size, int block_n, "
        "int isa=-1) -> Tensor");
  m.def("int4_gemv_best_isa() -> int", &lowbit_int4_gemv::int4_gemv_best_isa);
}

TORCH_LIBRARY_IMPL(lowbit_ext, CPU, m) { m.impl("int4_tinygemm_gemv", &lowbit_int4_gemv::int4_tinygemm_gemv); }
