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
// Layouts served: "avx2" (32-row blocks) and "avx512" (64-row blocks). In both, a full
// block of B rows is a [K, B/2] byte matrix where byte c holds row c in its low nibble and
// row c + B/2 in its high nibble. Short tail blocks (nb < B rows) are [K, nb/2] bytes of
// adjacent row pairs (2c low, 2c+1 high). Built into lowbit's extension by ops/_ext.py.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LOWBIT_X86 1
#endif

namespace lowbit_int4_gemv {

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

static bool have_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

// x [M, K] float/bf16/fp16; qdata uint8 [Np, K/2]; scale_and_zero bf16 [K/gs, Np, 2];
// block_n: 32 ("avx2" layout) or 64 ("avx512"). Returns [M, Np] in x's dtype. Meant for
// small M (ops/cpu.py CPU_INT4_GEMV_MAX_M): the weight is streamed once, each 4-row tile
// of x re-converts the (cache-resident) block.
at::Tensor int4_tinygemm_gemv(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale_and_zero,
                              int64_t group_size, int64_t block_n) {
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

  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const float* xp = xf.data_ptr<float>();
  const int64_t ng = K / gs;
  std::vector<float> xsum(M * ng, 0.f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xsum[m * ng + k / gs] += xp[m * K + k];
  at::Tensor y = at::zeros({M, Np}, x.options().dtype(at::kFloat));
  float* yp = y.data_ptr<float>();
  const uint8_t* qp = qdata.data_ptr<uint8_t>();
  const c10::BFloat16* szp = scale_and_zero.data_ptr<c10::BFloat16>();
  const int64_t n_full = Np / block_n;

  at::parallel_for(0, n_full, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint8_t* qb = qp + b * block_n * (K / 2);
#ifdef LOWBIT_X86
      if (have_avx2_fma()) {
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
    block_scalar(xp + m * K, xsum.data() + m * ng, qp + n_full * block_n * (K / 2), szp, yp + m * Np, K, gs, Np,
                 n_full * block_n, tail, /*pairs=*/true);
  }
  return y.to(x.scalar_type());
}

}  // namespace lowbit_int4_gemv

TORCH_LIBRARY_FRAGMENT(lowbit_ext, m) {
  m.def("int4_tinygemm_gemv(Tensor x, Tensor qdata, Tensor scale_and_zero, int group_size, int block_n) -> Tensor");
}

TORCH_LIBRARY_IMPL(lowbit_ext, CPU, m) { m.impl("int4_tinygemm_gemv", &lowbit_int4_gemv::int4_tinygemm_gemv); }
