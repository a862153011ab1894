// Small-batch (M = 1 .. ~8) int8 weight-only GEMV on x86 CPUs, reading the int8 weight in
// the row-major [N, K] order lowbit's Int8Tensor stores it in (nothing repacked per call):
//
//   int8_wo_gemv(x [M, K] float/bf16/fp16, q int8 [N, K], scale fp32 [N], isa) -> [M, N]
//       y[m, n] = scale[n] * sum_k x[m, k] q[n, k]      (fp32 sums, output in x's dtype)
//
// Why: at small M the int8 weight-only linear is bound by reading its weight (N*K bytes, half
// of bf16's). ATen's `_weight_int8pack_mm` is vectorized for bf16 activations only and does
// not reach that bound: on a 2-core Zen3 (AVX2) it read a 49152x576 weight at 4.4 GB/s and ran
// a 576x576 layer at M = 1 slower than the float layer. This kernel converts each weight
// once per 4-row tile of x and keeps x in fp32 (no rounding of fp32/fp16 activations to bf16).
//
// Inner loop per 16 weights of one row (AVX512; 8 with AVX2): sign-extend the bytes to
// int32 (`vpmovsxbd`, with its load), convert to fp32 (`vcvtdq2ps`), and one FMA per
// activation row. A tile is R = 4 weight rows x MR activation rows (AVX512 MR <= 4: 16 zmm
// accumulators + 4 activation vectors + 1 weight of the 32 registers; AVX2 MR <= 2: 8 ymm
// accumulators of 16 registers), the R rows read as 4 sequential streams, the MR activation
// vectors loaded once per k step and shared by the 4 rows. Accumulator lanes hold partial
// sums over k, reduced once per tile (~1% of the work at K = 4096, ~8% at K = 576). K tails
// use masked loads (AVX512) or a scalar loop (AVX2); N tails (N % 4) run 1-row tiles.
// at::parallel_for splits N into 4-row blocks (every M tile passes over a block while it is
// in L1: 16 KiB at K = 4096), with a grain of >= 64 KiB of weights so small layers do not
// wake a thread per block.
//
// Instruction sets (`isa`; -1 = the best this CPU runs, from `__builtin_cpu_supports`):
//   2 AVX512  avx512f + avx512bw + avx512vl (masked byte loads for the K tail);
//   1 AVX2    avx2 + fma;
//   0 scalar  any CPU, and the tests' reference for the vector loops.
// The file compiles for baseline x86-64 (no -march): each vector loop carries its own
// `__attribute__((target(...)))`.
//
// lowbit/ops/cpu_int8_gemv.py validates every argument before calling here (an exception
// thrown in this library has crashed a host whose C++ runtime differed from torch's); the
// TORCH_CHECKs below are a second line, never expected to fire.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LOWBIT_X86 1
#else
#define LOWBIT_X86 0
#endif

namespace lowbit_int8_wo_gemv {

enum Isa : int64_t { kAuto = -1, kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

constexpr int64_t kBlockN = 4;  // weight rows per tile / per unit of work
// Software prefetch into the weight stream. The AVX512 loop: every row gets one prefetch
// near ahead into L1 and one far ahead into L2. Rows of at most kPfMaxK bytes (a block of
// short rows is one contiguous run that the tile reads as 4 interleaved streams): 2 KiB and
// 8 KiB ahead. Longer rows: 1 KiB ahead in the row, and the same offset of the next block's
// rows (R rows on) for L2. A row of K = 4096 bytes is one 4 KiB page, which the hardware
// prefetchers do not cross, so each of the 4 streams restarted on every block; the earlier
// form (L2 only, 4 KiB ahead) fetched mostly the next row of the same block, already being
// read. The AVX2 loop keeps the earlier forms: short rows 4 KiB ahead into L1, long rows 4 KiB
// ahead into L2. Measured on the 2-core Sapphire Rapids VM, AVX512 loop, 2 threads, weights
// rotated over 20 copies, us at M = 1 (the earlier forms):
//   no prefetch / L1 4 KiB ahead: 49152x576 2,268 / 1,385 (M=4 2,672 / 1,481), 1536x576
//   72 / 44, 2048x2048 309 / 256, 4096x4096 685-710 / 787-854 (L1, 1 KiB ahead);
//   no prefetch / L2 4 KiB ahead: 4096x4096 700-728 / 703-717, 11008x4096 1,756-1,761 /
//   1,569-1,673, 4096x11008 1,962-1,980 / 1,673-1,708.
// Earlier forms / now, M = 1, alternating rounds (benchmarks/results/int8-gemv-prefetch-2026-12-04.md):
//   2-core Zen4 VM, 2 threads: 49152x576 1,598-1,609 / 909-1,051, 1536x576 82.7 / 38-44,
//   4096x4096 724 (a second round disturbed) / 635-639, 11008x4096 1,947-1,974 / 1,645-1,669;
//   16-core AMX Xeon host, 2 threads (long rows only; the short-row form is not measured on
//   Intel): 4096x4096 1,079-1,222 / 769-946, 11008x4096 2,632-3,168 / 2,097-2,529 (16
//   threads: within the noise, 204-311 us alike).
constexpr int64_t kPfBytes = 4096;
constexpr int64_t kPfNearBytes = 1024;
constexpr int64_t kPfShortNearBytes = 2048;
constexpr int64_t kPfShortFarBytes = 8192;
constexpr int64_t kPfMaxK = 2048;

#if LOWBIT_X86
// kFar: the AVX512 loop's forms (above); false keeps the earlier ones (the AVX2 loop: no
// AVX2-only machine was at hand to measure the new ones on).
template <int R, bool kFar>
static inline void prefetch_rows(const int8_t* q, int64_t K, int64_t k) {
  // Past the last rows these point beyond the weight: prefetches never fault.
  if (!kFar) {
    const char* p = reinterpret_cast<const char*>(q + k + kPfBytes);
    if (K <= kPfMaxK) {
      for (int r = 0; r < R; ++r) _mm_prefetch(p + r * K, _MM_HINT_T0);
    } else {
      for (int r = 0; r < R; ++r) _mm_prefetch(p + r * K, _MM_HINT_T1);
    }
    return;
  }
  const bool short_rows = K <= kPfMaxK;
  const char* near = reinterpret_cast<const char*>(q + k + (short_rows ? kPfShortNearBytes : kPfNearBytes));
  const char* far = reinterpret_cast<const char*>(q + k + (short_rows ? kPfShortFarBytes : R * K));
  for (int r = 0; r < R; ++r) {
    _mm_prefetch(near + r * K, _MM_HINT_T0);
    _mm_prefetch(far + r * K, _MM_HINT_T1);
  }
}
#endif

static int64_t detect_isa() {
#if LOWBIT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kScalar;
}

static int64_t best_isa() {
  static const int64_t isa = detect_isa();
  return isa;
}

int64_t int8_wo_gemv_best_isa() { return best_isa(); }

// out[m * R + r] = sum_k x[m, k] q[r, k] for an MR x R tile (x rows of stride K, q rows of stride K).
template <int MR, int R>
static void tile_scalar(const float* x, const int8_t* q, int64_t K, float* out) {
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < R; ++r) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += x[m * K + k] * static_cast<float>(q[r * K + k]);
      out[m * R + r] = acc;
    }
}

#if LOWBIT_X86
#define LOWBIT_UNROLL _Pragma("GCC unroll 16")
#define LOWBIT_W512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define LOWBIT_W256 __attribute__((target("avx2,fma")))

template <int MR, int R>
LOWBIT_W512 static void tile_avx512(const float* x, const int8_t* q, int64_t K, float* out) {
  __m512 acc[MR][R];
  LOWBIT_UNROLL for (int m = 0; m < MR; ++m) LOWBIT_UNROLL for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 xv[MR];
    LOWBIT_UNROLL for (int m = 0; m < MR; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k);
    if ((k & 63) == 0) prefetch_rows<R, true>(q, K, k);
    LOWBIT_UNROLL for (int r = 0; r < R; ++r) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + r * K + k));
      const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
      LOWBIT_UNROLL for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_fmadd_ps(w, xv[m], acc[m][r]);
    }
  }
  if (k < K) {
    const __mmask16 mk = static_cast<__mmask16>((1u << (K - k)) - 1u);
    __m512 xv[MR];
    LOWBIT_UNROLL for (int m = 0; m < MR; ++m) xv[m] = _mm512_maskz_loadu_ps(mk, x + m * K + k);
    LOWBIT_UNROLL for (int r = 0; r < R; ++r) {
      const __m128i b = _mm_maskz_loadu_epi8(mk, q + r * K + k);
      const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
      LOWBIT_UNROLL for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_fmadd_ps(w, xv[m], acc[m][r]);
    }
  }
  LOWBIT_UNROLL for (int m = 0; m < MR; ++m) LOWBIT_UNROLL for (int r = 0; r < R; ++r) out[m * R + r] =
      _mm512_reduce_add_ps(acc[m][r]);
}

LOWBIT_W256 static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int MR, int R>
LOWBIT_W256 static void tile_avx2(const float* x, const int8_t* q, int64_t K, float* out) {
  __m256 acc[MR][R];
  LOWBIT_UNROLL for (int m = 0; m < MR; ++m) LOWBIT_UNROLL for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv[MR];
    LOWBIT_UNROLL for (int m = 0; m < MR; ++m) xv[m] = _mm256_loadu_ps(x + m * K + k);
    if ((k & 63) == 0) prefetch_rows<R, false>(q, K, k);
    LOWBIT_UNROLL for (int r = 0; r < R; ++r) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + r * K + k));
      const __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      LOWBIT_UNROLL for (int m = 0; m < MR; ++m) acc[m][r] = _mm256_fmadd_ps(w, xv[m], acc[m][r]);
    }
  }
  LOWBIT_UNROLL for (int m = 0; m < MR; ++m) LOWBIT_UNROLL for (int r = 0; r < R; ++r) {
    float s = hsum256(acc[m][r]);
    for (int64_t kk = k; kk < K; ++kk) s += x[m * K + kk] * static_cast<float>(q[r * K + kk]);
    out[m * R + r] = s;
  }
}
#endif

// One MR x R tile on the chosen loop.
template <int MR, int R>
static void tile(int64_t isa, const float* x, const int8_t* q, int64_t K, float* out) {
#if LOWBIT_X86
  if (isa == kAvx512) return tile_avx512<MR, R>(x, q, K, out);
  if constexpr (MR <= 2) {
    if (isa == kAvx2) return tile_avx2<MR, R>(x, q, K, out);
  }
#endif
  tile_scalar<MR, R>(x, q, K, out);
}

// Rows [0, M) of x against R weight rows, in activation tiles of up to 4 rows (2 on AVX2,
// whose 16 registers hold 2 x 4 accumulators). out: [M, R].
template <int R>
static void rows(int64_t isa, const float* x, int64_t M, const int8_t* q, int64_t K, float* out) {
  const int64_t mt = isa == kAvx2 ? 2 : 4;
  int64_t m = 0;
  for (; m + mt <= M; m += mt) {
    if (mt == 4) tile<4, R>(isa, x + m * K, q, K, out + m * R);
    else tile<2, R>(isa, x + m * K, q, K, out + m * R);
  }
  const int64_t left = M - m;
  if (left == 3) tile<3, R>(isa, x + m * K, q, K, out + m * R);
  else if (left == 2) tile<2, R>(isa, x + m * K, q, K, out + m * R);
  else if (left == 1) tile<1, R>(isa, x + m * K, q, K, out + m * R);
}

template <typename T>
static void store(T* y, int64_t N, int64_t M, int64_t n0, int64_t nr, const float* out, const float* scale) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t r = 0; r < nr; ++r) y[m * N + n0 + r] = static_cast<T>(out[m * nr + r] * scale[n0 + r]);
}

template <typename T>
static void run(int64_t isa, const float* x, const int8_t* q, const float* scale, T* y, int64_t M, int64_t N,
                int64_t K) {
  const int64_t nblocks = (N + kBlockN - 1) / kBlockN;
  const int64_t grain = std::max<int64_t>(1, (int64_t{64} << 10) / std::max<int64_t>(1, kBlockN * K));
  at::parallel_for(0, nblocks, grain, [&](int64_t b0, int64_t b1) {
    std::vector<float> out(M * kBlockN);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kBlockN, nr = std::min(kBlockN, N - n0);
      const int8_t* qb = q + n0 * K;
      if (nr == kBlockN) {
        rows<4>(isa, x, M, qb, K, out.data());
      } else {
        // N tail: one weight row at a time; out stays [M, nr].
        std::vector<float> one(M);
        for (int64_t r = 0; r < nr; ++r) {
          rows<1>(isa, x, M, qb + r * K, K, one.data());
          for (int64_t m = 0; m < M; ++m) out[m * nr + r] = one[m];
        }
      }
      store(y, N, M, n0, nr, out.data(), scale);
    }
  });
}

at::Tensor int8_wo_gemv(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "int8_wo_gemv: x must be contiguous [M, K]");
  TORCH_CHECK(q.scalar_type() == at::kChar && q.dim() == 2 && q.is_contiguous(),
              "int8_wo_gemv: q must be contiguous int8 [N, K]");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == q.size(0),
              "int8_wo_gemv: scale must be contiguous float32 [N]");
  TORCH_CHECK(x.size(1) == q.size(1), "int8_wo_gemv: K of x and q differ");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "int8_wo_gemv: x must be float32, bfloat16 or float16");
  if (isa == kAuto) isa = best_isa();
  TORCH_CHECK(isa >= kScalar && isa <= best_isa(), "int8_wo_gemv: isa ", isa, " cannot run here (best ", best_isa(),
              ")");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  // x as fp32 (a few KiB at decode sizes; plain loops, no ATen op per call).
  std::vector<float> xf_own;
  const float* xp = nullptr;
  if (dt == at::kFloat) {
    xp = x.data_ptr<float>();
  } else {
    xf_own.resize(M * K);
    if (dt == at::kBFloat16) {
      const c10::BFloat16* s = x.data_ptr<c10::BFloat16>();
      for (int64_t i = 0; i < M * K; ++i) xf_own[i] = static_cast<float>(s[i]);
    } else {
      const c10::Half* s = x.data_ptr<c10::Half>();
      for (int64_t i = 0; i < M * K; ++i) xf_own[i] = static_cast<float>(s[i]);
    }
    xp = xf_own.data();
  }
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  if (dt == at::kFloat) run(isa, xp, qp, sp, y.data_ptr<float>(), M, N, K);
  else if (dt == at::kBFloat16) run(isa, xp, qp, sp, y.data_ptr<c10::BFloat16>(), M, N, K);
  else run(isa, xp, qp, sp, y.data_ptr<c10::Half>(), M, N, K);
  return y;
}

}  // namespace lowbit_int8_wo_gemv

TORCH_LIBRARY_FRAGMENT(lowbit_ext, m) {
  m.def("int8_wo_gemv(Tensor x, Tensor q, Tensor scale, int isa=-1) -> Tensor");
  m.def("int8_wo_gemv_best_isa() -> int", &lowbit_int8_wo_gemv::int8_wo_gemv_best_isa);
}

TORCH_LIBRARY_IMPL(lowbit_ext, CPU, m) { m.impl("int8_wo_gemv", &lowbit_int8_wo_gemv::int8_wo_gemv); }
