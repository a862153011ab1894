// Exact int8 x int8 -> int32 GEMM for small / mid batch (M = 1 .. ~64) on x86 CPUs with
// AVX512-VNNI, reading the int8 weight in the row-major [N, K] order lowbit's Int8Tensor
// stores it in (no per-call repacking of the weight).
//
// Why: lowbit's "int8 dynamic" linear multiplies per-token activation codes by the int8
// weight codes. At small M this is bound by reading the weight (16 MiB for 4096x4096, ~0.48
// ms at the ~35 GB/s a 2-core Zen5 VM reads), yet oneDNN's `torch._int_mm` spends 1.4-1.9
// ms at M = 2..16 there and ATen's int8 GEMV on bf16 codes 2.4 ms at M = 16. This kernel
// streams the weight once per call and does all M rows' multiplies while a block of it is
// in L1.
//
//   int8_vnni_gemm(xq int8 [M, K], q int8 [N, K], isa) -> int32 [M, N] = xq @ q^T
//
// Numerics: `vpdpbusd` multiplies unsigned by signed bytes, so the weight is read as
// u = q XOR 0x80 = q + 128 (uint8, one XOR per 64 weight bytes, shared by all rows of a
// tile) against the signed activation bytes, and the +128 is removed at the end:
//     y[m, n] = sum_k (q[n, k] + 128) xq[m, k]  -  128 * sum_k xq[m, k]
// vpdpbusd adds its 4 products into int32 without saturation and int32 adds wrap, so the
// result is exact modulo 2^32: exact whenever the true product fits int32, which it always
// does for K <= 132104 (|q| <= 128, |xq| <= 127; xq = -128 is exact too). Any int8 values
// are accepted on both sides.
//
// Blocking (AVX512): at::parallel_for splits N into 4-row blocks of q (16 KiB at K = 4096,
// L1-resident while every row tile of xq passes over it, so the weight leaves DRAM once per
// call; xq itself, <= 256 KiB at M = 64, stays in L2). A tile is NR = 4 weight rows x
// MR <= 4 activation rows with NR * MR zmm accumulators; per 64 k it loads NR weight
// vectors (+ XOR) and MR activation vectors and issues NR * MR vpdpbusd. Accumulator lanes
// hold partial sums over k, reduced horizontally once per tile (a 16-vector transpose-add
// tree, ~45 shuffles/adds per 16 outputs: ~4% of the dot products at K = 4096). K tails use
// byte-masked loads; N tails (N % 4 rows) run 1-row tiles. Software prefetch: see
// kPrefetchBytes.
//
// Speed (2-core Zen5 VM, 4096x4096, cold weights, 2 threads; benchmarks/int8_vnni_cpu.py):
// M = 1..8 0.5-0.57 ms (the weight read at 30-33 GB/s, the machine's `x.sum()` rate),
// M = 16 0.69 ms, M = 32 1.03 ms, M = 64 1.65 ms, vs torch._int_mm 0.50, 1.4-1.6, 1.76,
// 2.05, 2.54 ms. At M >= 16 the multiplies bind: ~5 vpdpbusd per ns per core, ~70% of the
// rate a loop of independent vpdpbusd reaches (7.3 per ns), hot or cold alike.
//
// Instruction sets (`isa`; -1 = the best this CPU runs, from `__builtin_cpu_supports`):
//   2 AVX512-VNNI  the scheme above (avx512f + avx512bw for masked byte loads + avx512vnni);
//   1 AVX2         no byte dot product without saturation on plain AVX2 (vpmaddubsw
//                  saturates: 2 * 255 * 127 > 32767), so activations are widened to int16
//                  once per call and multiplied with `vpmaddwd` against the weight bytes
//                  sign-extended per 16 k (exact for all int8 inputs);
//   0 scalar       any CPU, and the tests' reference for the vector loops.
// The file compiles for baseline x86-64 (no -march): each vector loop carries its own
// `__attribute__((target(...)))` and only runs where the CPU reports the feature; on other
// architectures only the scalar loop is built.
//
// lowbit/ops/cpu_int8_vnni.py validates every argument before calling here (an exception
// thrown in this library has crashed a host whose C++ runtime differed from torch's); the
// TORCH_CHECKs below are a second line, never expected to fire.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "vnni_isa.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LOWBIT_X86 1
#else
#define LOWBIT_X86 0
#endif

namespace lowbit_int8_vnni {

using lowbit_isa::kAuto, lowbit_isa::kScalar, lowbit_isa::kAvx2, lowbit_isa::kAvx512Vnni;

// Weight rows per block: the unit of work split between threads, kept in L1 (16 KiB at
// K = 4096) while every activation row tile passes over it.
constexpr int64_t kBlockN = 4;
// Activation rows per tile: 4 x 4 = 16 zmm accumulators, plus 4 weight vectors, one
// activation vector and the XOR constant of the 32 registers. Measured against it on the
// 2-core Zen5 (4096x4096, cold, 2 threads, M = 8..64): 8 x 2 tiles 5-15% slower, 2 x 8
// 20-40% slower, 4 x 5, 4 x 6 and 6 x 4 (20-24 accumulators) ~2x slower.
constexpr int64_t kMaxMR = 4;
// Prefetches into the weight stream. The first tile of a block brings it in from memory
// and prefetches each row kPrefetchBytes ahead of its loads: without that prefetch M = 2
// and 4 took 0.54 and 0.62 ms instead of 0.43 and 0.47 (4 KiB ahead was the same as 1).
// The second tile, when there is one, prefetches the next block into L2, so its DRAM
// reads overlap the remaining tiles' multiplies instead of stalling the next block's
// first tile: M = 8 0.61 -> 0.55 ms, M = 16 0.77 -> 0.65, M = 32 1.10 -> 0.98, M = 64
// 1.73 -> 1.59 (medians of two runs each). With a single tile (M <= kMaxMR) that one
// tile does both (kPfBoth): on a 2-core Zen4 VM, 4096x4096, M = 1 went 812 -> 486-709 us
// (three noisy runs; fbgemm's int8 GEMM 492-690 in the same runs), M = 4 871 -> 619-661.
constexpr int64_t kPrefetchBytes = 1024;
// Rows of at most kShortK bytes take their L2 prefetch kShortFarBytes ahead (as lowbit's int8
// weight-only GEMV, lowbit/csrc/int8_wo_gemv.cpp), not at the next block, only NR * K bytes on.
// 2-core Zen4 VM, 2 threads, us at M = 1 / 4 (fbgemm's int8 GEMM in the same process), before
// -> after (two runs): 49152x576 1,242 / 1,447 (1,095 / 1,048) -> 1,078 / 1,130 (1,059 / 1,130)
// and 1,234 / 1,262 (1,304 / 1,295); 1536x576 51.2 / 63.5 (55.3 / 60.3) -> 43.6 / 48.0
// (60.8 / 79.1) and 39.8 / 43.7 (52.2 / 64.1) (benchmarks/results/int8-gemv-prefetch-2026-12-04.md).
constexpr int64_t kShortK = 2048;
constexpr int64_t kShortFarBytes = 8192;
enum Prefetch : int { kPfNone = 0, kPfAhead = 1, kPfNextBlock = 2, kPfBoth = 3 };

struct Args {
  const int8_t* x;      // [M, K] activation codes
  const int8_t* q;      // [N, K] weight codes
  const int16_t* x16;   // AVX2 only: x widened to int16, [M, K16] with zero padding
  const int32_t* corr;  // AVX512 only: [M] 128 * sum_k x[m, k] (modulo 2^32)
  int32_t* y;           // [M, N]
  int64_t M, N, K, K16;
};

// y = acc - corr in wrapping 32-bit arithmetic (acc may exceed int32 for large K while the
// final result still fits).
static inline int32_t sub_wrap(int32_t acc, int32_t corr) {
  return static_cast<int32_t>(static_cast<uint32_t>(acc) - static_cast<uint32_t>(corr));
}

// ------------------------------------------------------------------ scalar loop

static void rows_scalar(const Args& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* qr = a.q + n * a.K;
    for (int64_t m = 0; m < a.M; ++m) {
      const int8_t* xr = a.x + m * a.K;
      int64_t acc = 0;
      for (int64_t k = 0; k < a.K; ++k) acc += static_cast<int32_t>(xr[k]) * static_cast<int32_t>(qr[k]);
      a.y[m * a.N + n] = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(acc)));
    }
  }
}

#if LOWBIT_X86
// The tile loops over the NR / MR rows and the accumulators are unrolled before GCC decides
// where the accumulator array lives: left as loops, it kept the array on the stack and
// stored every accumulator back to it in each k step.
#define LOWBIT_UNROLL _Pragma("GCC unroll 16")

// ------------------------------------------------------------------ AVX512-VNNI loop
#define LOWBIT_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))

#define LOWBIT_VNNI_INLINE __attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) inline

// acc += u . s (vpdpbusd) as inline asm: with the intrinsic, GCC 12 copied every
// accumulator to a fresh register around each vpdpbusd and spilled 16 of them to the stack
// inside the loop (~2x slower at M = 64); the "+v" operand keeps each one in place.
LOWBIT_VNNI_INLINE void dpbusd(__m512i& acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
}

// Adds pairs of vectors' partial sums into one vector, three ways (steps of the reduction).
LOWBIT_VNNI_INLINE __m512i add_pairs32(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}
LOWBIT_VNNI_INLINE __m512i add_pairs64(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}
LOWBIT_VNNI_INLINE __m512i add_pairs128(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Lane j of the result = sum of the 16 int32 lanes of v[j]. A transpose-add tree: the
// 32-bit then 64-bit unpack-adds leave, in each 128-bit lane L of u_i, element e = lane
// L's partial sum of v[4i + e]; two rounds of 128-bit-lane shuffle-adds add the 4 lanes
// and put vector j in lane j. Constant indices only (written out), so the accumulator
// array stays in registers.
LOWBIT_VNNI_INLINE __m512i reduce16(const __m512i* v) {
  const __m512i u0 = add_pairs64(add_pairs32(v[0], v[1]), add_pairs32(v[2], v[3]));
  const __m512i u1 = add_pairs64(add_pairs32(v[4], v[5]), add_pairs32(v[6], v[7]));
  const __m512i u2 = add_pairs64(add_pairs32(v[8], v[9]), add_pairs32(v[10], v[11]));
  const __m512i u3 = add_pairs64(add_pairs32(v[12], v[13]), add_pairs32(v[14], v[15]));
  return add_pairs128(add_pairs128(u0, u1), add_pairs128(u2, u3));
}

// 128 * sum_k x[k] (mod 2^32): vpdpbusd with unsigned bytes 128 against x, then one
// horizontal add (a plain loop here cost ~75 us at M = 64, K = 4096 when built for
// baseline x86-64: as long as the multiplies of a 64 x 64 x 4096 product).
LOWBIT_VNNI_TARGET static int32_t row_corr_vnni(const int8_t* x, int64_t K) {
  const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 64) {
    const __mmask64 mask = k + 64 <= K ? ~uint64_t{0} : (uint64_t{1} << (K - k)) - 1;
    dpbusd(acc, c128, _mm512_maskz_loadu_epi8(mask, x + k));
  }
  return _mm512_reduce_add_epi32(acc);
}

// One tile: weight rows [n0, n0 + NR) x activation rows [m0, m0 + MR), all of K.
template <int NR, int MR, int PREFETCH>
LOWBIT_VNNI_TARGET static void tile_vnni(const Args& a, int64_t n0, int64_t m0) {
  static_assert(NR * MR <= 16, "one reduce16 per tile");
  const int64_t K = a.K;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int8_t* qr[NR];
  const int8_t* xr[MR];
  for (int i = 0; i < NR; ++i) qr[i] = a.q + (n0 + i) * K;
  for (int j = 0; j < MR; ++j) xr[j] = a.x + (m0 + j) * K;
  // acc[i * MR + j]: weight row i x activation row j; the unused ones stay zero for reduce16.
  __m512i acc[16];
  LOWBIT_UNROLL for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_si512();

  // One loop for the full vectors and the K tail: the masked loads read nothing past K
  // (no fault at the end of a buffer) and give zeros there (u = 128 times x = 0). A
  // separate tail block after the loop made GCC spill the accumulators inside it.
  const __mmask64 tail = K % 64 ? (uint64_t{1} << (K % 64)) - 1 : ~uint64_t{0};
  // The L2 prefetch: the next block's rows, or for short rows (the next block then starts
  // only NR * K bytes on) kShortFarBytes ahead in the contiguous run of rows.
  const int64_t far = K <= kShortK ? kShortFarBytes : NR * K;
  for (int64_t k = 0; k < K; k += 64) {
    const __mmask64 mask = k + 64 <= K ? ~uint64_t{0} : tail;
    __m512i u[NR];
    LOWBIT_UNROLL for (int i = 0; i < NR; ++i) {
      // (A prefetch past the end of q is harmless: prefetches never fault.)
      if (PREFETCH & kPfAhead) _mm_prefetch(reinterpret_cast<const char*>(qr[i] + k + kPrefetchBytes), _MM_HINT_T0);
      if (PREFETCH & kPfNextBlock) _mm_prefetch(reinterpret_cast<const char*>(qr[i] + far + k), _MM_HINT_T1);
      u[i] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, qr[i] + k), flip);
    }
    LOWBIT_UNROLL for (int j = 0; j < MR; ++j) {
      const __m512i s = _mm512_maskz_loadu_epi8(mask, xr[j] + k);
      LOWBIT_UNROLL for (int i = 0; i < NR; ++i) dpbusd(acc[i * MR + j], u[i], s);
    }
  }

  alignas(64) int32_t out[16];
  _mm512_store_si512(out, reduce16(acc));
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < MR; ++j) a.y[(m0 + j) * a.N + n0 + i] = sub_wrap(out[i * MR + j], a.corr[m0 + j]);
}

// Rows [m0, m0 + MR) against weight rows [n0, n0 + NR) for a run-time MR in [1, R], with
// prefetch mode `pf` (a Prefetch).
template <int NR, int R>
static void tile_vnni_mr(const Args& a, int64_t n0, int64_t m0, int64_t mr, int pf) {
  if constexpr (R > 1) {
    if (mr < R) return tile_vnni_mr<NR, R - 1>(a, n0, m0, mr, pf);
  }
  if (pf == kPfAhead) tile_vnni<NR, R, kPfAhead>(a, n0, m0);
  else if (pf == kPfBoth) tile_vnni<NR, R, kPfBoth>(a, n0, m0);
  else if (pf == kPfNextBlock) tile_vnni<NR, R, kPfNextBlock>(a, n0, m0);
  else tile_vnni<NR, R, kPfNone>(a, n0, m0);
}

// All activation rows against weight rows [n0, n0 + NR), in tiles of up to kMaxMR rows.
template <int NR>
static void block_vnni(const Args& a, int64_t n0) {
  for (int64_t m = 0; m < a.M; m += kMaxMR) {
    // A single tile (M <= kMaxMR) does both prefetches: it is all the time the block gets.
    const int pf = m == 0 ? (a.M <= kMaxMR ? kPfBoth : kPfAhead) : (m == kMaxMR ? kPfNextBlock : kPfNone);
    tile_vnni_mr<NR, kMaxMR>(a, n0, m, std::min(kMaxMR, a.M - m), pf);
  }
}

static void rows_vnni(const Args& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kBlockN <= n1; n += kBlockN) block_vnni<kBlockN>(a, n);
  for (; n < n1; ++n) block_vnni<1>(a, n);
}

// ------------------------------------------------------------------ AVX2 loop
#define LOWBIT_AVX2_TARGET __attribute__((target("avx2")))

// Lane j of the result = sum of the 8 int32 lanes of v[j] (two hadd rounds per 128-bit
// lane, then the two lanes added).
LOWBIT_AVX2_TARGET static inline __m256i reduce8(const __m256i v[8]) {
  const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
}

// One tile of NR weight rows x MR activation rows (NR * MR <= 8 of the 16 ymm registers
// as accumulators). Per 16 k: the weight bytes sign-extended to int16 (shared by the MR
// rows), `vpmaddwd` with the int16 activations (exact: 2 * 128 * 128 < 2^31), add.
template <int NR, int MR>
LOWBIT_AVX2_TARGET static void tile_avx2(const Args& a, int64_t n0, int64_t m0) {
  static_assert(NR * MR <= 8, "one reduce8 per tile");
  const int64_t K = a.K;
  const int8_t* qr[NR];
  const int16_t* xr[MR];
  for (int i = 0; i < NR; ++i) qr[i] = a.q + (n0 + i) * K;
  for (int j = 0; j < MR; ++j) xr[j] = a.x16 + (m0 + j) * a.K16;
  // AVX2 has no byte-masked load: each weight row's K % 16 tail bytes are copied into
  // zeroed bytes once, and the last k step reads them there (the int16 activations are
  // zero-padded to K16 already).
  const int64_t k_full = K / 16 * 16;
  alignas(16) int8_t tails[NR][16] = {};
  for (int i = 0; i < NR; ++i) std::memcpy(tails[i], qr[i] + k_full, static_cast<size_t>(K - k_full));
  // acc[i * MR + j]: weight row i x activation row j; the unused ones stay zero for reduce8.
  __m256i acc[8];
  LOWBIT_UNROLL for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_si256();
  for (int64_t k = 0; k < K; k += 16) {
    __m256i w[NR];
    LOWBIT_UNROLL for (int i = 0; i < NR; ++i) {
      const int8_t* src = k < k_full ? qr[i] + k : tails[i];
      w[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    }
    LOWBIT_UNROLL for (int j = 0; j < MR; ++j) {
      const __m256i s = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[j] + k));
      LOWBIT_UNROLL for (int i = 0; i < NR; ++i) {
        acc[i * MR + j] = _mm256_add_epi32(acc[i * MR + j], _mm256_madd_epi16(w[i], s));
      }
    }
  }
  alignas(32) int32_t out[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out), reduce8(acc));
  // No +128 offset on this path: corr is not subtracted.
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < MR; ++j) a.y[(m0 + j) * a.N + n0 + i] = out[i * MR + j];
}

// x widened to int16 rows of K16 (a multiple of 16) with zero padding.
LOWBIT_AVX2_TARGET static void widen_avx2(const int8_t* x, int64_t K, int64_t K16, int16_t* x16) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x16 + k),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + k))));
  }
  for (; k < K; ++k) x16[k] = x[k];
  for (; k < K16; ++k) x16[k] = 0;
}

template <int NR>
static void block_avx2(const Args& a, int64_t n0) {
  int64_t m = 0;
  for (; m + 2 <= a.M; m += 2) tile_avx2<NR, 2>(a, n0, m);
  if (m < a.M) tile_avx2<NR, 1>(a, n0, m);
}

static void rows_avx2(const Args& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) block_avx2<4>(a, n);
  for (; n < n1; ++n) block_avx2<1>(a, n);
}
#endif  // LOWBIT_X86

// ------------------------------------------------------------------ dispatch

static int64_t best_isa() { return lowbit_isa::best_vnni_isa(); }

int64_t int8_vnni_best_isa() { return best_isa(); }

// y = xq @ q^T (int32 [M, N], preallocated); after each task's rows of q, `epi(n0, n1)`
// runs on the same thread while y[:, n0:n1] is still in cache (the fused linear's scales).
template <typename Epilogue>
static void gemm_into(const at::Tensor& xq, const at::Tensor& q, int64_t isa, at::Tensor& y, const Epilogue& epi) {
  const int64_t M = xq.size(0), K = xq.size(1), N = q.size(0);
  Args a{xq.data_ptr<int8_t>(), q.data_ptr<int8_t>(), nullptr, nullptr, y.data_ptr<int32_t>(), M, N, K, 0};
  // Per-call preparation of the small operand: the +128 correction of each activation row
  // (AVX512 path) or the activations widened to int16 (AVX2 path).
  std::vector<int32_t> corr;
  std::vector<int16_t> x16;
#if LOWBIT_X86
  if (isa == kAvx512Vnni) {
    corr.resize(M);
    for (int64_t m = 0; m < M; ++m) corr[m] = row_corr_vnni(a.x + m * K, K);
    a.corr = corr.data();
  } else if (isa == kAvx2) {
    a.K16 = (K + 15) / 16 * 16;
    x16.resize(M * a.K16);
    for (int64_t m = 0; m < M; ++m) widen_avx2(a.x + m * K, K, a.K16, x16.data() + m * a.K16);
    a.x16 = x16.data();
  }
#endif

  // Work is split in whole kBlockN-row blocks (the N % kBlockN tail rows go with the last
  // block). Grain: at least ~64 KiB of weight per task, so small layers do not pay for a
  // thread wake-up per block.
  const int64_t nblocks = (N + kBlockN - 1) / kBlockN;
  const int64_t grain = std::max<int64_t>(1, (int64_t{64} << 10) / (kBlockN * std::max<int64_t>(K, 1)));
  at::parallel_for(0, nblocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * kBlockN, n1 = std::min(N, b1 * kBlockN);
#if LOWBIT_X86
    if (isa == kAvx512Vnni) rows_vnni(a, n0, n1);
    else if (isa == kAvx2) rows_avx2(a, n0, n1);
    else rows_scalar(a, n0, n1);
#else
    rows_scalar(a, n0, n1);
#endif
    epi(n0, n1);
  });
}

static int64_t resolve_gemm_isa(int64_t isa, const char* fn) {
  if (isa == kAuto) isa = best_isa();
  TORCH_CHECK(isa >= kScalar && isa <= best_isa(), fn, ": isa ", isa, " cannot run here (best ", best_isa(), ")");
  return isa;
}

at::Tensor int8_vnni_gemm(const at::Tensor& xq, const at::Tensor& q, int64_t isa) {
  TORCH_CHECK(xq.scalar_type() == at::kChar && xq.dim() == 2 && xq.is_contiguous() && xq.size(0) >= 1,
              "int8_vnni_gemm: xq must be contiguous int8 [M, K] with M >= 1");
  TORCH_CHECK(q.scalar_type() == at::kChar && q.dim() == 2 && q.is_contiguous(),
              "int8_vnni_gemm: q must be contiguous int8 [N, K]");
  TORCH_CHECK(xq.size(1) == q.size(1), "int8_vnni_gemm: K mismatch");
  isa = resolve_gemm_isa(isa, "int8_vnni_gemm");
  const int64_t M = xq.size(0), K = xq.size(1), N = q.size(0);
  at::Tensor y = at::empty({M, N}, xq.options().dtype(at::kInt));
  if (N == 0) return y;
  if (K == 0) return y.zero_();
  gemm_into(xq, q, isa, y, [](int64_t, int64_t) {});
  return y;
}

// ------------------------------------------------------------------ per-token quantization
//
// quantize_per_token_int8(x float32 | bfloat16 | float16 [M, K]) -> (int8 [M, K], float32
// [M, 1]): the activation codes of the int8 dynamic linear, bit-identical to
// lowbit/ops/reference.py `quantize_per_token_int8` for finite inputs: per row, scale =
// max(max_k |x| / 127, FLT_EPSILON) in fp32, q = clamp(round_half_even(x * (1 / scale)),
// -127, 127) (the fp32 reciprocal, then a multiply, as the reference does: a vector divide
// per element made this division-bound, 0.40 ms at M = 512, K = 4096 on a 2-core AMX VM).
// The PyTorch composition of those steps (six passes with temporaries) took 3.8 ms at M =
// 256, K = 4096 on a 2-core Zen5: more than the int8 GEMM that follows it (~3 ms). Rows
// are split over threads; two passes over each row, the second from L1/L2.

template <typename T>
static inline float to_f32(T v) {
  return static_cast<float>(v);
}

template <typename T>
static void quant_row_scalar(const T* x, int64_t k0, int64_t K, float scale, int8_t* q) {
  const float inv = 1.0f / scale;
  for (int64_t k = k0; k < K; ++k) {
    float r = std::nearbyint(to_f32(x[k]) * inv);
    r = std::min(127.f, std::max(-127.f, r));
    q[k] = static_cast<int8_t>(r);
  }
}

template <typename T>
static float amax_scalar(const T* x, int64_t k0, int64_t K, float m) {
  for (int64_t k = k0; k < K; ++k) m = std::max(m, std::fabs(to_f32(x[k])));
  return m;
}

#if LOWBIT_X86
template <typename T>
__attribute__((target("avx512f,avx512bw"))) static inline __m512 load16_f32(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}

template <typename T>
__attribute__((target("avx512f,avx512bw"))) static float quant_row_avx512(const T* x, int64_t K, int8_t* q) {
  const int64_t kv = K / 16 * 16;
  __m512 m = _mm512_setzero_ps();
  for (int64_t k = 0; k < kv; k += 16) m = _mm512_max_ps(m, _mm512_abs_ps(load16_f32(x + k)));
  float scale = amax_scalar(x, kv, K, _mm512_reduce_max_ps(m)) / 127.f;
  if (scale < FLT_EPSILON) scale = FLT_EPSILON;
  const __m512 s = _mm512_set1_ps(1.0f / scale), hi = _mm512_set1_ps(127.f), lo = _mm512_set1_ps(-127.f);
  for (int64_t k = 0; k < kv; k += 16) {
    __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(load16_f32(x + k), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_min_ps(hi, _mm512_max_ps(lo, r));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r)));
  }
  quant_row_scalar(x, kv, K, scale, q);
  return scale;
}

template <typename T>
__attribute__((target("avx2,fma,f16c"))) static inline __m256 load8_f32(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
}

// AVX2 twin of quant_row_avx512 (8 lanes, the same operations and codes).
template <typename T>
__attribute__((target("avx2,fma,f16c"))) static float quant_row_avx2(const T* x, int64_t K, int8_t* q) {
  const int64_t kv = K / 8 * 8;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (int64_t k = 0; k < kv; k += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, load8_f32(x + k)));
  alignas(32) float t[8];
  _mm256_store_ps(t, m);
  float amax = 0.f;
  for (float v : t) amax = std::max(amax, v);
  float scale = amax_scalar(x, kv, K, amax) / 127.f;
  if (scale < FLT_EPSILON) scale = FLT_EPSILON;
  const __m256 s = _mm256_set1_ps(1.0f / scale), hi = _mm256_set1_ps(127.f), lo = _mm256_set1_ps(-127.f);
  for (int64_t k = 0; k < kv; k += 8) {
    __m256 r = _mm256_round_ps(_mm256_mul_ps(load8_f32(x + k), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_min_ps(hi, _mm256_max_ps(lo, r));
    const __m256i w = _mm256_cvtps_epi32(r);  // 8 int32 in [-127, 127]
    const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(w16, w16));
  }
  quant_row_scalar(x, kv, K, scale, q);
  return scale;
}
#endif

template <typename T>
static void quantize_rows(const T* x, int64_t M, int64_t K, int64_t vec, int8_t* q, float* sc) {
  // ~64 KiB of activations per task keeps the fork cost below the work.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(K, 1));
  at::parallel_for(0, M, grain, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
#if LOWBIT_X86
      if (vec == 2) {
        sc[m] = quant_row_avx512(x + m * K, K, q + m * K);
        continue;
      }
      if (vec == 1) {
        sc[m] = quant_row_avx2(x + m * K, K, q + m * K);
        continue;
      }
#endif
      float scale = amax_scalar(x + m * K, 0, K, 0.f) / 127.f;
      if (scale < FLT_EPSILON) scale = FLT_EPSILON;
      quant_row_scalar(x + m * K, 0, K, scale, q + m * K);
      sc[m] = scale;
    }
  });
}

// isa: -1 auto, 0 scalar (test hook).
std::tuple<at::Tensor, at::Tensor> quantize_per_token_int8(const at::Tensor& x, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "quantize_per_token_int8: x must be contiguous [M, K]");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "quantize_per_token_int8: x must be float32, bfloat16 or float16");
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor q = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor sc = at::empty({M, 1}, x.options().dtype(at::kFloat));
#if LOWBIT_X86
  // 2: AVX512 rows, 1: AVX2 rows, 0: scalar (isa = 0 forces it; isa = 1 forces AVX2).
  int64_t vec = 0;
  if (isa != 0) {
    if (isa != 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) vec = 2;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) vec = 1;
  }
#else
  const int64_t vec = 0;
#endif
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = sc.data_ptr<float>();
  if (dt == at::kFloat) quantize_rows(x.data_ptr<float>(), M, K, vec, qp, sp);
  else if (dt == at::kBFloat16) quantize_rows(x.data_ptr<c10::BFloat16>(), M, K, vec, qp, sp);
  else quantize_rows(x.data_ptr<c10::Half>(), M, K, vec, qp, sp);
  return {q, sc};
}

// ------------------------------------------------------------------ fused int8-dynamic linear
//
// int8_vnni_linear(x float32 | bfloat16 | float16 [M, K], q int8 [N, K], ws float32 [N],
// isa) -> x.dtype [M, N]: per-token quantization, the exact int32 GEMM and the scales in
// one call, bit-identical to lowbit/ops/cpu.py's composition
//     xq, xs = quantize_per_token_int8(x); acc = int8_vnni_gemm(xq, q)
//     y = (acc.to(float32) * xs * ws[None, :]).to(x.dtype)
// (two float32 multiplies in that order, then round-to-nearest-even). The composition is
// five ATen calls after the GEMM, ~25-40 us at M = 1: more than the GEMM itself on small
// layers (SmolLM2's 576x576 takes ~15 us).

template <typename T>
static void scale_out(const int32_t* acc, const float* xs, const float* ws, T* y, int64_t M, int64_t N, int64_t n0,
                      int64_t n1) {
  for (int64_t m = 0; m < M; ++m) {
    const float sx = xs[m];
    const int32_t* am = acc + m * N;
    T* ym = y + m * N;
    for (int64_t n = n0; n < n1; ++n) ym[n] = static_cast<T>(static_cast<float>(am[n]) * sx * ws[n]);
  }
}

at::Tensor int8_vnni_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& ws, int64_t isa) {
  const auto dt = x.scalar_type();
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(0) >= 1 &&
                  (dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf),
              "int8_vnni_linear: x must be contiguous float32/bfloat16/float16 [M, K] with M >= 1");
  TORCH_CHECK(q.scalar_type() == at::kChar && q.dim() == 2 && q.is_contiguous() && q.size(1) == x.size(1),
              "int8_vnni_linear: q must be contiguous int8 [N, K]");
  TORCH_CHECK(ws.scalar_type() == at::kFloat && ws.is_contiguous() && ws.numel() == q.size(0),
              "int8_vnni_linear: ws must be contiguous float32 [N]");
  isa = resolve_gemm_isa(isa, "int8_vnni_linear");
  auto [xq, xs] = quantize_per_token_int8(x, isa == kScalar ? 0 : -1);
  const int64_t M = x.size(0), N = q.size(0);
  at::Tensor acc = at::empty({M, N}, x.options().dtype(at::kInt));
  at::Tensor y = at::empty({M, N}, x.options());
  if (N == 0) return y;
  if (x.size(1) == 0) acc.zero_();
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* xsp = xs.data_ptr<float>();
  const float* wsp = ws.data_ptr<float>();
  auto run = [&](auto* yp) {
    auto epi = [&](int64_t n0, int64_t n1) { scale_out(ap, xsp, wsp, yp, M, N, n0, n1); };
    if (x.size(1) == 0) {
      epi(0, N);
    } else {
      gemm_into(xq, q, isa, acc, epi);
    }
  };
  if (dt == at::kFloat) run(y.data_ptr<float>());
  else if (dt == at::kBFloat16) run(y.data_ptr<c10::BFloat16>());
  else run(y.data_ptr<c10::Half>());
  return y;
}

}  // namespace lowbit_int8_vnni

TORCH_LIBRARY_FRAGMENT(lowbit_ext, m) {
  m.def("int8_vnni_gemm(Tensor xq, Tensor q, int isa=-1) -> Tensor");
  m.def("int8_vnni_best_isa() -> int", &lowbit_int8_vnni::int8_vnni_best_isa);
  m.def("quantize_per_token_int8(Tensor x, int isa=-1) -> (Tensor, Tensor)");
  m.def("int8_vnni_linear(Tensor x, Tensor q, Tensor ws, int isa=-1) -> Tensor");
}

TORCH_LIBRARY_IMPL(lowbit_ext, CPU, m) {
  m.impl("int8_vnni_gemm", &lowbit_int8_vnni::int8_vnni_gemm);
  m.impl("quantize_per_token_int8", &lowbit_int8_vnni::quantize_per_token_int8);
  m.impl("int8_vnni_linear", &lowbit_int8_vnni::int8_vnni_linear);
}
