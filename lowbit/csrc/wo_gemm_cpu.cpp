// Mid / large-M GEMMs for lowbit's CPU weight formats on CPUs with native bf16 / int8
// matrix units (AMX, through oneDNN's brgemm ukernel that ATen exposes as
// at::native::cpublas::brgemm).
//
// Why: below M ~ 4 a linear layer is bound by reading its weight, above it by multiply
// throughput. On an AMX Xeon, bf16 F.linear runs its GEMM on AMX tiles (~0.7 TFLOP/s per
// core measured at 256x4096x4096), so dequantizing the whole weight and then multiplying
// (lowbit's old path) or computing with AVX2-style FMAs (ATen's int4 tinygemm / int8
// GEMV kernels) is 5-25x slower than not quantizing. Here each task takes one block of
// output channels, dequantizes a [block, k-chunk] slice of the weight into a small
// L1/L2-resident buffer in the operand layout the tiles want and feeds it, with the
// activations, to brgemm: the weight is read once from memory, dequantized once, and
// multiplied at tile speed.
//
// Five entry points (lowbit/ops/cpu.py validates everything before calling them; the
// TORCH_CHECKs here are a second line, never expected to fire):
//
//   int4_tinygemm_brgemm(x bf16 [M, K], qdata uint8 [Np, K/2] (ATen tinygemm CPU layout,
//       lowbit/packing/int4.py), scale_and_zero bf16 [K/g, Np, 2], group_size, block_n)
//       -> float32 [M, Np] (bf16 with out_bf16). y = x @ W^T with W[n, k] = (q - 8) * s + z,
//       dequantized in fp32 and rounded to bf16 once (the old dequantize + GEMM path's numerics).
//       B operand = W^T block [K, block] in VNNI-2 bf16 layout ([K/2][block][2]): a byte
//       row of the packed block holds one k for all rows of the block, so two byte rows
//       interleave into one VNNI row.
//   int8_brgemm_bf16(x bf16 [M, K], q int8 [N, K], wscale?, out_bf16) -> float32 (or bf16)
//       [M, N] = (x @ q^T) * wscale[n] (no scale when absent).
//       A = x, B = a 64-row block of q converted to bf16 (exact) in VNNI-2 [K/2][64][2].
//   int8_brgemm_u8s8(xq int8 [M, K], q int8 [N, K], xscale?, wscale?, out_bf16) -> int32
//       [M, N] exact integer dot products, or with both scales float32 (or bf16)
//       float(dot) * xscale[m] * wscale[n]. A = xq ^ 0x80 (xq + 128 as uint8), B = a block
//       of q in VNNI-4 [K/4][64][4]; the +128 is removed as 128 * sum_k q[n, k].
//   Every path accumulates a block's columns in per-thread scratch and writes its output
//   once (ScaledOut below); bf16 outputs round to nearest even, except that the AVX512-BF16
//   conversion flushes float32 denormals (|y| < 2^-126) to zero where torch's cast keeps them.
//   da8w4_brgemm / da8w4_brgemm_bf16: DA8W4 (int8 activation codes x int4 weights packed
//       for da8w4_cpu.cpp), by u8s8 brgemm per group, or by bf16 brgemm over the whole K
//       with the group scales folded into a bf16 copy of each weight block (below).
//
// K tails: K is padded with zeros to the VNNI width inside the packed operands, so any K
// works; any N works (the last block is short); M >= 1 (M = 0 is handled in Python).
// Inputs need not be aligned: B operands and accumulators live in 64-byte aligned scratch
// allocated here; A is the caller's contiguous activations (or a copy made here), which the
// tile loads read at any alignment (tests: unaligned storage).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "amx_util.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LOWBIT_X86 1
#else
#define LOWBIT_X86 0
#endif

namespace lowbit_wo {

namespace cpublas = at::native::cpublas;

// k per brgemm call. int4: up to 4096 k of a 64-row block = 512 KiB of bf16 B operand
// (L2-resident; fewer passes over C, which brgemm reloads per call: measured on the 2-core
// Sapphire Rapids, 256x4096x4096, 1 thread: 512 -> 52 ms (noisy), 4096 with 32-row A
// blocks -> 12.5 ms, bf16 F.linear 11.5-12 ms in the same runs). int8: kKChunkInt8 below.
constexpr int64_t kKChunkInt4 = 4096;
// Activation rows per brgemm call (brgemm M): 32 on AMX (two 16-row tiles; tuned on the
// 2-core Sapphire Rapids), 64 on AVX512 without AMX (measured on the 2-core Zen5, 4096x4096,
// 2 threads, M = 64 / 256: int4 3,379 -> 2,932 / 10,746 -> 10,063 us, int8 u8s8 1,994 ->
// 1,824 / 6,221 -> 5,967 us against 32).
static int64_t tok_block() {
  static const int64_t b = cpublas::could_pack(at::kBFloat16) ? 32 : 64;
  return b;
}
constexpr int64_t kRowBlock = 64;  // weight rows per task (int8 kernels)

// Row split of a block-parallel GEMM: where the `groups` weight-block tasks leave more than
// 5% of the thread-slots idle (at::parallel_for gives each thread ceil(tasks / threads)
// consecutive tasks: 9 blocks on 2 threads run 5 + 4) and M has at least two token tiles per
// thread, every thread takes every group for its own share of the rows (T shares; each
// converts the whole weight, small next to the GEMM at such M). 1 otherwise.
static int64_t row_split(int64_t groups, int64_t M) {
  const int64_t T = std::max<int64_t>(1, at::get_num_threads());
  const int64_t idle = (groups + T - 1) / T * T - groups;
  return (T > 1 && idle * 20 > groups && M >= 2 * T * tok_block()) ? T : 1;
}


// 1: bf16 brgemm available, 2: u8s8 brgemm available (bit mask). ATen's brgemm runs
// oneDNN's brgemm ukernel, which `could_pack` reports only for AMX; but the ukernel also
// runs (with its own VNNI operand layouts, no packing) on AVX512-BF16 (bf16) and
// AVX512-VNNI (u8s8) CPUs without AMX. Measured on a 2-core Zen5 (AVX512-BF16, no AMX),
// 1 thread: bf16 32x64x4096 in 39 us (430 GFLOP/s; F.linear of the same product 94 us).
// Without oneDNN (a torch built without MKLDNN) ATen would reject the VNNI operands.
#if LOWBIT_X86
#define LOWBIT_CPU_HAS(a, b, c) (__builtin_cpu_supports(a) && __builtin_cpu_supports(b) && __builtin_cpu_supports(c))
#else
#define LOWBIT_CPU_HAS(a, b, c) false
#endif

int64_t brgemm_caps() {
  static const int64_t caps = [] {
    int64_t c = 0;
    const bool onednn = at::hasMKLDNN();
    if (cpublas::could_pack(at::kBFloat16) || (onednn && LOWBIT_CPU_HAS("avx512f", "avx512bw", "avx512bf16"))) c |= 1;
#ifdef CPUBLAS_BRGEMM_U8I8I32
    if (cpublas::could_pack(at::kByte) || (onednn && LOWBIT_CPU_HAS("avx512f", "avx512bw", "avx512vnni"))) c |= 2;
#endif
    return c;
  }();
  return caps;
}

// Per-thread scratch kept across calls (up to ~1.4 MiB per thread at K = 11008), instead of
// a std::vector per task and call. Suspected cause of the ~450 us floor every brgemm path
// showed at 16 threads on the 16-core AMX Xeon host (M = 1: int4 464 us, int8 556 us,
// u8s8 456 us, whatever the conversion cost), but NOT confirmed: on the 2-core
// development VM the old code already took 0 minor page faults per call at M = 1 (glibc
// reuses the freed blocks), and the host could not be re-measured. Slot: which buffer of
// the caller (two may be live at once).
// 64-byte aligned: brgemm loads its operands a cache line (one AMX tile row) at a time,
// and a std::vector's block starts 16 bytes into a page, so every tile row straddled two
// lines (DA8W4 bf16 brgemm, 256x4096x4096, 2 threads, 2-core AMX VM: 8.3-9.1 ms in most
// processes, 6.2-6.6 ms in the others).
template <typename T>
static T* scratch(int slot, size_t n) {
  static thread_local std::vector<unsigned char> bufs[2];
  std::vector<unsigned char>& b = bufs[slot];
  const size_t bytes = n * sizeof(T) + 64;
  if (b.size() < bytes) b.resize(bytes);
  const uintptr_t p = reinterpret_cast<uintptr_t>(b.data());
  return reinterpret_cast<T*>((p + 63) & ~static_cast<uintptr_t>(63));
}

static inline uint16_t f32_to_bf16_rne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// The output of the brgemm paths, written once per block from its accumulators: y[m, n0 + r] = v[r] * rs * cs[r] (cs: per-column
// scales, may be null; rs: this row's scale) as float32 or bf16 (round to nearest even),
// the same products in the same order as the Python epilogues they replace.
struct ScaledOut {
  float* f32 = nullptr;
  uint16_t* bf16 = nullptr;
  int64_t ld = 0;
  bool vec = false;
};

#if LOWBIT_X86
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static int64_t scaled_cols_to_bf16_avx512(
    const float* v, float rs, const float* cs, int64_t n, uint16_t* o) {
  const __m512 r = _mm512_set1_ps(rs);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 f = _mm512_mul_ps(_mm512_loadu_ps(v + j), r);
    if (cs) f = _mm512_mul_ps(f, _mm512_loadu_ps(cs + j));
    const __m256bh h = _mm512_cvtneps_pbh(f);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j), reinterpret_cast<const __m256i&>(h));
  }
  return j;
}
#endif

static void write_scaled_row(const ScaledOut& out, int64_t m, int64_t n0, const float* v, float rs, const float* cs,
                             int64_t n) {
  if (out.f32) {
    float* o = out.f32 + m * out.ld + n0;
    for (int64_t j = 0; j < n; ++j) o[j] = cs ? v[j] * rs * cs[j] : v[j] * rs;
    return;
  }
  uint16_t* o = out.bf16 + m * out.ld + n0;
  int64_t j = 0;
#if LOWBIT_X86
  if (out.vec) j = scaled_cols_to_bf16_avx512(v, rs, cs, n, o);
#endif
  for (; j < n; ++j) o[j] = f32_to_bf16_rne(cs ? v[j] * rs * cs[j] : v[j] * rs);
}

static ScaledOut scaled_out(at::Tensor& y, bool vec) {
  ScaledOut o;
  o.ld = y.size(1);
  o.vec = vec;
  if (y.scalar_type() == at::kFloat) o.f32 = y.data_ptr<float>();
  else o.bf16 = reinterpret_cast<uint16_t*>(y.data_ptr<c10::BFloat16>());
  return o;
}

// ------------------------------------------------------------------ int4 tinygemm layout

// Scalar dequantize of k in [k0, k0 + kc) (kc even) of one block of nb rows starting at row
// r0 into the VNNI-2 buffer [kc/2][nb][2]. `lo_row(c)` / `hi_row(c)`: see the layouts in
// lowbit/packing/int4.py (full blocks: c / c + nb/2 with the avx512 16-byte interleave;
// short tail blocks: adjacent pairs).
static void dequant_int4_scalar(const uint8_t* qb, const c10::BFloat16* sz, int64_t Np, int64_t gs, int64_t r0,
                                int64_t nb, bool pairs, bool avx512_layout, int64_t k0, int64_t kc,
                                uint16_t* out) {
  const int64_t half = nb / 2;
  for (int64_t k = k0; k < k0 + kc; ++k) {
    const uint8_t* row = qb + k * half;
    const c10::BFloat16* g = sz + (k / gs) * Np * 2;
    uint16_t* o = out + ((k - k0) / 2) * nb * 2 + ((k - k0) & 1);
    for (int64_t c = 0; c < half; ++c) {
      int64_t lo, hi;
      if (pairs) {
        lo = 2 * c, hi = 2 * c + 1;
      } else if (avx512_layout) {  // byte d: rows d | d+32; byte 16+d: rows d+16 | d+48
        lo = c, hi = c + 32;
      } else {  // avx2 32-row block: byte d: rows d | d + 16
        lo = c, hi = c + 16;
      }
      const int rows[2] = {static_cast<int>(lo), static_cast<int>(hi)};
      const int q[2] = {row[c] & 0x0F, row[c] >> 4};
      for (int j = 0; j < 2; ++j) {
        const float s = static_cast<float>(g[(r0 + rows[j]) * 2]), z = static_cast<float>(g[(r0 + rows[j]) * 2 + 1]);
        o[rows[j] * 2] = f32_to_bf16_rne(static_cast<float>(q[j]) * s + (z - 8.f * s));
      }
    }
  }
}

#if LOWBIT_X86
// Full block of B rows (B = 32 "avx2" or 64 "avx512" layout: byte column c holds row c in
// its low and row c + B/2 in its high nibble). Per pair of k: 16-row chunks, fp32
// q * s + (z - 8 s), two k rounded to bf16 by one vcvtne2ps2bf16 and interleaved by one
// vpermw into the VNNI pair order.
template <int B>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void dequant_int4_avx512bf16(
    const uint8_t* qb, const c10::BFloat16* sz, int64_t Np, int64_t gs, int64_t r0, int64_t k0, int64_t kc,
    uint16_t* out) {
  constexpr int H = B / 2, C = B / 16;  // bytes per k, 16-row chunks
  __m512 s[C], z[C];
  int64_t cur_g = -1;
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                       5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi16 = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512 eight = _mm512_set1_ps(8.f);
  for (int64_t k = k0; k < k0 + kc; k += 2) {
    const int64_t g = k / gs;
    if (g != cur_g) {
      cur_g = g;
      const c10::BFloat16* gp = sz + g * Np * 2 + r0 * 2;
      for (int c = 0; c < C; ++c) {
        // 16 rows' (scale, zero) bf16 pairs = 16 dwords: scale low half, zero high half.
        const __m512i p = _mm512_loadu_si512(gp + 2 * 16 * c);
        const __m512 sc = _mm512_castsi512_ps(_mm512_slli_epi32(p, 16));
        const __m512 ze = _mm512_castsi512_ps(_mm512_and_si512(p, hi16));
        s[c] = sc;
        z[c] = _mm512_fnmadd_ps(eight, sc, ze);  // z - 8 s
      }
    }
    const uint8_t* b0 = qb + k * H;
    const uint8_t* b1 = b0 + H;
    uint16_t* o = out + ((k - k0) / 2) * B * 2;
    for (int c = 0; c < C; ++c) {
      const int off = 16 * (c % (H / 16));
      const bool high = c >= H / 16;
      __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + off)));
      __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b1 + off)));
      if (high) {
        v0 = _mm512_srli_epi32(v0, 4);
        v1 = _mm512_srli_epi32(v1, 4);
      } else {
        v0 = _mm512_and_si512(v0, _mm512_set1_epi32(0x0F));
        v1 = _mm512_and_si512(v1, _mm512_set1_epi32(0x0F));
      }
      const __m512 f0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v0), s[c], z[c]);
      const __m512 f1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v1), s[c], z[c]);
      const __m512i bf = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f1, f0));  // [f0 x16, f1 x16]
      _mm512_storeu_si512(o + 2 * 16 * c, _mm512_permutexvar_epi16(idx, bf));
    }
  }
}

static bool have_avx512bf16() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512bf16");
  return ok;
}
#endif

// isa: -1 auto, 0 scalar dequantize (test hook), 1 AVX512-BF16 dequantize.
at::Tensor int4_tinygemm_brgemm(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale_and_zero,
                                int64_t group_size, int64_t block_n, bool out_bf16, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.size(0) >= 1,
              "int4_tinygemm_brgemm: x must be contiguous bf16 [M >= 1, K]");
  TORCH_CHECK(qdata.scalar_type() == at::kByte && qdata.dim() == 2 && qdata.is_contiguous(),
              "int4_tinygemm_brgemm: qdata must be contiguous uint8 [Np, K/2]");
  TORCH_CHECK(block_n == 32 || block_n == 64, "int4_tinygemm_brgemm: block_n must be 32 or 64");
  const int64_t M = x.size(0), K = x.size(1), Np = qdata.size(0), gs = group_size;
  TORCH_CHECK(qdata.size(1) * 2 == K && gs > 0 && gs % 2 == 0 && K % gs == 0, "int4_tinygemm_brgemm: bad K/group");
  TORCH_CHECK(scale_and_zero.scalar_type() == at::kBFloat16 && scale_and_zero.is_contiguous() &&
                  scale_and_zero.dim() == 3 && scale_and_zero.size(0) == K / gs && scale_and_zero.size(1) == Np &&
                  scale_and_zero.size(2) == 2,
              "int4_tinygemm_brgemm: scale_and_zero must be contiguous bf16 [K/g, Np, 2]");
  TORCH_CHECK(Np % 16 == 0, "int4_tinygemm_brgemm: Np must be a multiple of 16");
  TORCH_CHECK(brgemm_caps() & 1, "int4_tinygemm_brgemm: this CPU has no bf16 brgemm (AMX)");
#if LOWBIT_X86
  const bool vec = isa != 0 && have_avx512bf16();
#else
  const bool vec = false;
#endif
  at::Tensor y = at::empty({M, Np}, x.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  const ScaledOut out = scaled_out(y, vec);
  const c10::BFloat16* xp = x.data_ptr<c10::BFloat16>();
  const uint8_t* qp = qdata.data_ptr<uint8_t>();
  const c10::BFloat16* szp = scale_and_zero.data_ptr<c10::BFloat16>();
  const int64_t n_full = Np / block_n, tail = Np - n_full * block_n;
  const int64_t n_blocks = n_full + (tail ? 1 : 0);
  // Weight blocks per task that share each activation tile: without AMX 2 blocks of half the
  // k chunk, so the [64 tokens, k] tile is read from L3 once per two blocks (at K = 11008,
  // M = 256 the activations are 5.6 MiB, re-read for every block: 4096x11008 ran at 0.91x
  // bf16 on the 2-core Zen5 with one block per task). AMX keeps one (as measured there).
  // But pairs must not unbalance the threads: at::parallel_for gives each thread a run of
  // ceil(tasks / threads) tasks, so 9 blocks (N = 576) in pairs put 6 blocks on one of 2
  // threads and 3 on the other (576x576 at M = 512 ran at 0.89x bf16 on a 2-core Zen4,
  // 576x1536 at 0.80x); single blocks split 5 / 4. Pairs are kept where they load no thread
  // more than single blocks would.
  int64_t G = cpublas::could_pack(at::kBFloat16) ? 1 : 2;
  if (G == 2) {
    const int64_t T = std::max<int64_t>(1, at::get_num_threads());
    auto most = [&](int64_t g) { return std::min(n_blocks, ((n_blocks + g - 1) / g + T - 1) / T * g); };
    if (most(1) < most(2)) G = 1;
  }
  const int64_t kchunk = kKChunkInt4 / G, slot = std::min(kchunk, K) * block_n;
  // Groups the threads cannot share evenly (576 rows = 9 blocks on 2 threads) and enough
  // rows: the rows are split instead (row_split).
  const int64_t ngroups = (n_blocks + G - 1) / G, msplit = row_split(ngroups, M);
  const int64_t mstep = (M + msplit - 1) / msplit;
  at::parallel_for(0, ngroups * msplit, 1, [&](int64_t t0, int64_t t1) {
    uint16_t* wbuf = scratch<uint16_t>(0, G * slot);
    // The task's accumulators, [rows][cols] (its blocks' columns are contiguous), written to y
    // once at the end.
    float* cbuf = scratch<float>(1, std::min(M, mstep) * G * block_n);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t % ngroups, ma = t / ngroups * mstep, mb = std::min(M, ma + mstep);
      const int64_t bf = g * G, bl = std::min(n_blocks, bf + G);
      const int64_t c0 = bf * block_n, cols = std::min(Np, bl * block_n) - c0;
      for (int64_t k0 = 0; k0 < K; k0 += kchunk) {
        const int64_t kc = std::min(kchunk, K - k0);
        for (int64_t b = bf; b < bl; ++b) {
          const int64_t r0 = b * block_n, nb = b < n_full ? block_n : tail;
          const uint8_t* qb = qp + r0 * (K / 2);
          uint16_t* wb = wbuf + (b - bf) * slot;
#if LOWBIT_X86
          if (vec && nb == block_n) {
            if (block_n == 64) dequant_int4_avx512bf16<64>(qb, szp, Np, gs, r0, k0, kc, wb);
            else dequant_int4_avx512bf16<32>(qb, szp, Np, gs, r0, k0, kc, wb);
            continue;
          }
#endif
          dequant_int4_scalar(qb, szp, Np, gs, r0, nb, /*pairs=*/nb != block_n, block_n == 64, k0, kc, wb);
        }
        for (int64_t m0 = ma; m0 < mb; m0 += tok_block())
          for (int64_t b = bf; b < bl; ++b) {
            const int64_t r0 = b * block_n, nb = b < n_full ? block_n : tail;
            cpublas::brgemm(std::min(tok_block(), mb - m0), nb, kc, /*ld_a=*/K, /*ld_b=*/nb, /*ld_c=*/cols,
                            /*add_C=*/k0 > 0, xp + m0 * K + k0,
                            reinterpret_cast<const c10::BFloat16*>(wbuf + (b - bf) * slot),
                            cbuf + (m0 - ma) * cols + (r0 - c0), /*is_vnni=*/true);
          }
      }
      for (int64_t m = ma; m < mb; ++m) write_scaled_row(out, m, c0, cbuf + (m - ma) * cols, 1.f, nullptr, cols);
    }
    cpublas::brgemm_release(true);
  });
  return y;
}

// ------------------------------------------------------------------ int8 weights
//
// y = x @ q^T with the activations as brgemm's A operand (row-major [M, K], as they come)
// and one 64-row block of q at a time as B, converted to the VNNI-E layout brgemm wants
// for B ([K/E][64][E]: E consecutive k of one row per 32-bit word) by 16x16 transposes of
// words, in registers. C is [M][64] per block (ld 64, per-thread scratch), written to y
// [M, N] once by the epilogue, so nothing is transposed on the way out.
// (The first version multiplied C^T = q x^T with q as A and x^T packed as B: its [N, M]
// -> [M, N] output transpose and 1024-k chunks made it 0.87-0.91x bf16 F.linear at
// M = 64-256 on a 2-core Zen5. AMX kept that transposed scheme until the scratch buffers
// were 64-byte aligned: with aligned B blocks this one measured the same or better there,
// 2-core AMX VM, 4096x4096, 2 threads, M = 16 / 64 / 256, x bf16 F.linear: bf16 weights
// 1.26x / 1.27x / 1.03x vs 1.29x / 1.22x / 0.99x, u8s8 1.45x / 1.53x / 1.23x vs 1.49x /
// 1.48x / 1.26x.)

#if LOWBIT_X86
static bool have_avx512bw() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return ok;
}

using lowbit_amx::transpose16_ps;
#endif

static bool use_avx512bw(int64_t isa) {
#if LOWBIT_X86
  return isa != 0 && have_avx512bw();
#else
  return false;
#endif
}

static inline uint16_t to_vnni_elem(int8_t v, uint16_t*) { return f32_to_bf16_rne(static_cast<float>(v)); }
static inline int8_t to_vnni_elem(int8_t v, int8_t*) { return v; }

// Rows [r_begin, r_end) x k [k_begin, k_end) of the block (rows n0 + r of q, k offsets from
// k0) into B words (w, r) at out[(w * ldb + r) * E]; k >= kc (the K padding) is zero.
template <int E, typename T>
static void int8_block_to_vnni_scalar(const int8_t* q, int64_t K, int64_t n0, int64_t r_begin, int64_t r_end,
                                      int64_t k0, int64_t k_begin, int64_t k_end, int64_t kc, int64_t ldb, T* out) {
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int8_t* src = q + (n0 + r) * K + k0;
    for (int64_t k = k_begin; k < k_end; ++k)
      out[((k / E) * ldb + r) * E + (k % E)] = to_vnni_elem(k < kc ? src[k] : int8_t(0), out);
  }
}

#if LOWBIT_X86
// 16 rows x 32 k per step: each row's 32 codes -> 32 bf16 (exact) = 16 words of k pairs;
// the transpose turns 16 row vectors into 16 k-pair vectors of 16 rows.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void int8_block_to_vnni2_avx512(
    const int8_t* q, int64_t K, int64_t n0, int64_t nb, int64_t k0, int64_t kc, int64_t kcp, int64_t ldb,
    uint16_t* out) {
  const int64_t kv = kc / 32 * 32, rv = nb / 16 * 16;
  for (int64_t r0 = 0; r0 < rv; r0 += 16) {
    for (int64_t k = 0; k < kv; k += 32) {
      __m512 v[16];
      for (int i = 0; i < 16; ++i) {
        const int8_t* src = q + (n0 + r0 + i) * K + k0 + k;
        const __m512 a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
        const __m512 b =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16))));
        v[i] = _mm512_castsi512_ps(reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a)));
      }
      transpose16_ps(v);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(reinterpret_cast<float*>(out + ((k / 2 + j) * ldb + r0) * 2), v[j]);
    }
  }
  int8_block_to_vnni_scalar<2>(q, K, n0, 0, rv, k0, kv, kcp, kc, ldb, out);
  int8_block_to_vnni_scalar<2>(q, K, n0, rv, nb, k0, 0, kcp, kc, ldb, out);
}

// 16 rows x 64 k per step: 64 codes = 16 words of 4 k, transposed as they are.
__attribute__((target("avx512f,avx512bw"))) static void int8_block_to_vnni4_avx512(
    const int8_t* q, int64_t K, int64_t n0, int64_t nb, int64_t k0, int64_t kc, int64_t kcp, int64_t ldb,
    int8_t* out) {
  const int64_t kv = kc / 64 * 64, rv = nb / 16 * 16;
  for (int64_t r0 = 0; r0 < rv; r0 += 16) {
    for (int64_t k = 0; k < kv; k += 64) {
      __m512 v[16];
      for (int i = 0; i < 16; ++i) v[i] = _mm512_castsi512_ps(_mm512_loadu_si512(q + (n0 + r0 + i) * K + k0 + k));
      transpose16_ps(v);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(reinterpret_cast<float*>(out + ((k / 4 + j) * ldb + r0) * 4), v[j]);
    }
  }
  int8_block_to_vnni_scalar<4>(q, K, n0, 0, rv, k0, kv, kcp, kc, ldb, out);
  int8_block_to_vnni_scalar<4>(q, K, n0, rv, nb, k0, 0, kcp, kc, ldb, out);
}

// sum_k q[n0 + r, k] for r < nb: |q| sums as uint8 (q ^ 0x80 = q + 128) by vpsadbw, minus 128 K.
__attribute__((target("avx512f,avx512bw"))) static void int8_row_sums_avx512(const int8_t* q, int64_t K, int64_t n0,
                                                                           int64_t nb, int32_t* out) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80)), zero = _mm512_setzero_si512();
  for (int64_t r = 0; r < nb; ++r) {
    const int8_t* src = q + (n0 + r) * K;
    __m512i acc = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64)
      acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_xor_si512(_mm512_loadu_si512(src + k), flip), zero));
    int64_t s = _mm512_reduce_add_epi64(acc) - 128 * k;
    for (; k < K; ++k) s += src[k];
    out[r] = static_cast<int32_t>(s);
  }
}
#endif

static void int8_row_sums_scalar(const int8_t* q, int64_t K, int64_t n0, int64_t nb, int32_t* out) {
  for (int64_t r = 0; r < nb; ++r) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += q[(n0 + r) * K + k];
    out[r] = s;
  }
}

static void check_int8(const at::Tensor& x, const at::Tensor& q, at::ScalarType xdt, const char* fn) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == xdt && x.is_contiguous() && x.size(0) >= 1, fn,
              ": x must be contiguous ", xdt, " [M >= 1, K]");
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.is_contiguous() && q.size(1) == x.size(1), fn,
              ": q must be contiguous int8 [N, K]");
}

// Per 64-row block of q: for each k chunk, conv(n0, nb, k0, kcp, B) fills the VNNI-E B
// operand, brgemm accumulates C[t0:t0+32, 0:nb] (+)= A[t0:t0+32, k0:k0+kcp] B into per-thread
// scratch C [M][nb] (L2-resident at M <= 1024 and the 64-row blocks); epilogue(n0, nb, ma,
// mb, C) writes the block's output columns of rows [ma, mb) (C's row 0 is row ma; see
// row_split). A is [M, Kp] (Kp: K rounded up to E).
template <typename TA, typename TB, typename TC, int E, typename Conv, typename Epi>
static void int8_block_brgemm(const TA* ap, int64_t M, int64_t Kp, int64_t N, int64_t kchunk, const Conv& conv,
                              const Epi& epilogue) {
  const int64_t n_blocks = (N + kRowBlock - 1) / kRowBlock;
  const int64_t msplit = row_split(n_blocks, M), mstep = (M + msplit - 1) / msplit;
  at::parallel_for(0, n_blocks * msplit, 1, [&](int64_t t0_, int64_t t1_) {
    TB* bbuf = scratch<TB>(0, kRowBlock * kchunk);
    TC* cbuf = scratch<TC>(1, std::min(M, mstep) * kRowBlock);
    for (int64_t t = t0_; t < t1_; ++t) {
      const int64_t b = t % n_blocks, ma = t / n_blocks * mstep, mb = std::min(M, ma + mstep);
      const int64_t n0 = b * kRowBlock, nb = std::min(kRowBlock, N - n0);
      for (int64_t k0 = 0; k0 < Kp; k0 += kchunk) {
        const int64_t kcp = std::min(kchunk, Kp - k0);
        conv(n0, nb, k0, kcp, bbuf);
        for (int64_t t0 = ma; t0 < mb; t0 += tok_block())
          cpublas::brgemm(std::min(tok_block(), mb - t0), nb, kcp, /*ld_a=*/Kp, /*ld_b=*/nb, /*ld_c=*/nb,
                          /*add_C=*/k0 > 0, ap + t0 * Kp + k0, bbuf, cbuf + (t0 - ma) * nb, true);
      }
      epilogue(n0, nb, ma, mb, static_cast<const TC*>(cbuf));
    }
    cpublas::brgemm_release(true);
  });
}

// Optional scales of the int8 entry points: float32 contiguous, `n` values (checked in
// ops/cpu.py; TORCH_CHECK is the second line).
static const float* opt_scale(const c10::optional<at::Tensor>& t, int64_t n, const char* what) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == n, what,
              " must be contiguous float32 with ", n, " values");
  return t->data_ptr<float>();
}


// k per B chunk: 64 rows x 4096 bf16 (or 8192 int8) = 512 KiB, L2-resident (as for int4).
constexpr int64_t kKChunkInt8 = 4096;

// x @ q^T (times wscale[n] when given) in float32, or bf16 when out_bf16 (with wscale only).
// isa: -1 auto, 0 scalar conversion (test hook).
at::Tensor int8_brgemm_bf16(const at::Tensor& x, const at::Tensor& q, const c10::optional<at::Tensor>& wscale,
                            bool out_bf16, int64_t isa) {
  check_int8(x, q, at::kBFloat16, "int8_brgemm_bf16");
  TORCH_CHECK(brgemm_caps() & 1, "int8_brgemm_bf16: this CPU has no bf16 brgemm");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  const float* ws = opt_scale(wscale, N, "int8_brgemm_bf16: wscale");
  TORCH_CHECK(!out_bf16 || ws, "int8_brgemm_bf16: out_bf16 needs wscale");
  const int64_t Kp = (K + 1) / 2 * 2;
  const at::Tensor a = Kp == K ? x : at::constant_pad_nd(x, {0, Kp - K}, 0).contiguous();
  const bool vec = use_avx512bw(isa) && have_avx512bf16();
  const int8_t* qp = q.data_ptr<int8_t>();
  auto conv = [&](int64_t n0, int64_t nb, int64_t k0, int64_t kcp, c10::BFloat16* bbuf) {
    uint16_t* o = reinterpret_cast<uint16_t*>(bbuf);
    const int64_t kc = std::min(kcp, K - k0);
#if LOWBIT_X86
    if (vec) return int8_block_to_vnni2_avx512(qp, K, n0, nb, k0, kc, kcp, nb, o);
#endif
    int8_block_to_vnni_scalar<2>(qp, K, n0, 0, nb, k0, 0, kcp, kc, nb, o);
  };
  at::Tensor y = at::empty({M, N}, x.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  const ScaledOut out = scaled_out(y, vec);
  auto epilogue = [&](int64_t n0, int64_t nb, int64_t ma, int64_t mb, const float* c) {
    for (int64_t m = ma; m < mb; ++m) write_scaled_row(out, m, n0, c + (m - ma) * nb, 1.f, ws ? ws + n0 : nullptr, nb);
  };
  int8_block_brgemm<c10::BFloat16, c10::BFloat16, float, 2>(a.data_ptr<c10::BFloat16>(), M, Kp, N, kKChunkInt8, conv,
                                                            epilogue);
  return y;
}

// Exact int32 xq @ q^T (xq, q int8), or with both scales given float32 (bf16 when
// out_bf16) float(xq @ q^T) * xscale[m] * wscale[n]. A = xq + 128 as uint8 (XOR 0x80), B = q
// as it is; the +128 is removed per column as 128 * sum_k q[n, k]. isa: -1 auto, 0 scalar
// (test hook).
at::Tensor int8_brgemm_u8s8(const at::Tensor& xq, const at::Tensor& q, const c10::optional<at::Tensor>& xscale,
                            const c10::optional<at::Tensor>& wscale, bool out_bf16, int64_t isa) {
  check_int8(xq, q, at::kChar, "int8_brgemm_u8s8");
#ifndef CPUBLAS_BRGEMM_U8I8I32
  TORCH_CHECK(false, "int8_brgemm_u8s8: this torch has no u8s8 brgemm");
  return at::Tensor();
#else
  TORCH_CHECK(brgemm_caps() & 2, "int8_brgemm_u8s8: this CPU has no u8s8 brgemm");
  const int64_t M = xq.size(0), K = xq.size(1), N = q.size(0);
  const float* xs = opt_scale(xscale, M, "int8_brgemm_u8s8: xscale");
  const float* ws = opt_scale(wscale, N, "int8_brgemm_u8s8: wscale");
  TORCH_CHECK((xs == nullptr) == (ws == nullptr) && (!out_bf16 || ws),
              "int8_brgemm_u8s8: give both scales or neither; out_bf16 needs them");
  const int64_t Kp = (K + 3) / 4 * 4;
  at::Tensor a = at::empty({M, Kp}, xq.options().dtype(at::kByte));
  {
    // Two plain loops per row, which the compiler can vectorize; rows split across threads
    // (one thread took 15-20% of the call at 512 x 576 x 576).
    const int8_t* src = xq.data_ptr<int8_t>();
    uint8_t* dst = a.data_ptr<uint8_t>();
    at::parallel_for(0, M, std::max<int64_t>(1, 16384 / Kp), [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        for (int64_t k = 0; k < K; ++k) dst[m * Kp + k] = static_cast<uint8_t>(src[m * K + k]) ^ 0x80;
        for (int64_t k = K; k < Kp; ++k) dst[m * Kp + k] = 0x80;
      }
    });
  }
  const bool vec = use_avx512bw(isa);
  const int8_t* qp = q.data_ptr<int8_t>();
  auto conv = [&](int64_t n0, int64_t nb, int64_t k0, int64_t kcp, int8_t* bbuf) {
    const int64_t kc = std::min(kcp, K - k0);
#if LOWBIT_X86
    if (vec) return int8_block_to_vnni4_avx512(qp, K, n0, nb, k0, kc, kcp, nb, bbuf);
#endif
    int8_block_to_vnni_scalar<4>(qp, K, n0, 0, nb, k0, 0, kcp, kc, nb, bbuf);
  };
  at::Tensor y = at::empty({M, N}, xq.options().dtype(!ws ? at::kInt : out_bf16 ? at::kBFloat16 : at::kFloat));
  const ScaledOut out = ws ? scaled_out(y, vec && have_avx512bf16()) : ScaledOut{};
  int32_t* yi = ws ? nullptr : y.data_ptr<int32_t>();
  auto epilogue = [&](int64_t n0, int64_t nb, int64_t ma, int64_t mb, const int32_t* c) {
    int32_t sums[kRowBlock];
#if LOWBIT_X86
    if (vec) int8_row_sums_avx512(qp, K, n0, nb, sums);
    else
#endif
      int8_row_sums_scalar(qp, K, n0, nb, sums);
    float v[kRowBlock];
    for (int64_t m = ma; m < mb; ++m) {
      const int32_t* cm = c + (m - ma) * nb;
      if (!ws) {
        for (int64_t r = 0; r < nb; ++r) yi[m * N + n0 + r] = cm[r] - 128 * sums[r];
        continue;
      }
      for (int64_t r = 0; r < nb; ++r) v[r] = static_cast<float>(cm[r] - 128 * sums[r]);
      write_scaled_row(out, m, n0, v, xs[m], ws + n0, nb);
    }
  };
  // int8: twice the k per chunk of the bf16 path for the same bytes.
  int8_block_brgemm<uint8_t, int8_t, int32_t, 4>(a.data_ptr<uint8_t>(), M, Kp, N, 2 * kKChunkInt8, conv, epilogue);
  return y;
#endif
}

// ------------------------------------------------------------------ DA8W4 (int4 VNNI layout)
//
// Activation codes a (uint8 [M, K], from da8w4_quantize_act) x int4 weights packed for
// lowbit/csrc/da8w4_cpu.cpp ([N/16, K/8, 64]: per 16-column block and k-octet, the low
// nibbles of the 64 bytes are a 16 x 4 VNNI-4 row for k 0-3 and the high nibbles the one
// for k 4-7). Four blocks (64 columns) are unpacked into an s8 VNNI-4 buffer [K/4][64][4]
// (codes 0..15, exact) and one u8s8 brgemm per group gives dot(a, q) per (m, n, g); the
// epilogue applies the same compensation and scales as da8w4_cpu.cpp:
//   y[m, n] = sa[m] * sum_g s[n, g] * (dot - z[n, g] A[m, g] - za[m] Qc[n, g]).
static void da8w4_unpack_block(const uint8_t* w, int64_t K, int64_t nb0, int64_t nbs, int8_t* out) {
  const int64_t octets = K / 8, cols = nbs * 16;
  for (int64_t o = 0; o < octets; ++o) {
    int8_t* lo = out + (2 * o) * cols * 4;
    int8_t* hi = lo + cols * 4;
    for (int64_t b = 0; b < nbs; ++b) {
      const uint8_t* src = w + ((nb0 + b) * octets + o) * 64;
      for (int i = 0; i < 64; ++i) {
        lo[b * 64 + i] = static_cast<int8_t>(src[i] & 0x0F);
        hi[b * 64 + i] = static_cast<int8_t>(src[i] >> 4);
      }
    }
  }
}

struct Da8w4Dims {
  int64_t M, K, NB, N, G;
};

// The operands both DA8W4 brgemm paths share (ops/cpu.py validates first; this is the
// second line).
static Da8w4Dims check_da8w4(const char* fn, const at::Tensor& codes, const at::Tensor& ascale, const at::Tensor& azp,
                             const at::Tensor& qdata, const at::Tensor& scale, const at::Tensor& zero_point,
                             int64_t gs) {
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.dim() == 2 && codes.is_contiguous() && codes.size(0) >= 1, fn,
              ": codes must be contiguous uint8 [M >= 1, K]");
  const int64_t M = codes.size(0), K = codes.size(1);
  TORCH_CHECK(gs > 0 && gs % 16 == 0 && K % gs == 0, fn, ": bad group size");
  TORCH_CHECK(qdata.scalar_type() == at::kByte && qdata.dim() == 3 && qdata.size(1) * 8 == K && qdata.size(2) == 64 &&
                  qdata.is_contiguous(),
              fn, ": qdata must be contiguous uint8 [N/16, K/8, 64]");
  const int64_t NB = qdata.size(0), G = K / gs;
  TORCH_CHECK(scale.is_contiguous() && scale.scalar_type() == at::kFloat && scale.numel() == NB * G * 16 &&
                  zero_point.is_contiguous() && zero_point.scalar_type() == at::kByte &&
                  zero_point.numel() == NB * G * 16,
              fn, ": scale/zero_point must be contiguous [N/16, G, 16]");
  TORCH_CHECK(ascale.numel() == M && azp.numel() == M && ascale.is_contiguous() && azp.is_contiguous() &&
                  ascale.scalar_type() == at::kFloat && azp.scalar_type() == at::kInt,
              fn, ": activation scale/zero point have the wrong shape or dtype");
  return {M, K, NB, NB * 16, G};
}

at::Tensor da8w4_brgemm(const at::Tensor& codes, const at::Tensor& ascale, const at::Tensor& azp,
                        const at::Tensor& gsum, const at::Tensor& qdata, const at::Tensor& scale,
                        const at::Tensor& zero_point, const at::Tensor& qsum, int64_t group_size) {
#ifndef CPUBLAS_BRGEMM_U8I8I32
  TORCH_CHECK(false, "da8w4_brgemm: this torch has no u8s8 brgemm");
  return at::Tensor();
#else
  TORCH_CHECK(brgemm_caps() & 2, "da8w4_brgemm: this CPU has no u8s8 brgemm (AMX)");
  const Da8w4Dims d = check_da8w4("da8w4_brgemm", codes, ascale, azp, qdata, scale, zero_point, group_size);
  const int64_t M = d.M, K = d.K, gs = group_size, NB = d.NB, N = d.N, G = d.G;
  TORCH_CHECK(qsum.is_contiguous() && qsum.scalar_type() == at::kInt && qsum.numel() == NB * G * 16,
              "da8w4_brgemm: qsum must be contiguous int32 [N/16, G, 16]");
  TORCH_CHECK(gsum.numel() == M * G && gsum.is_contiguous() && gsum.scalar_type() == at::kInt,
              "da8w4_brgemm: activation group sums must be contiguous int32 [M, G]");
  const uint8_t* ap = codes.data_ptr<uint8_t>();
  const float* sa = ascale.data_ptr<float>();
  const int32_t* za = azp.data_ptr<int32_t>();
  const int32_t* A = gsum.data_ptr<int32_t>();
  const uint8_t* wp = qdata.data_ptr<uint8_t>();
  const float* ws = scale.data_ptr<float>();
  const uint8_t* wz = zero_point.data_ptr<uint8_t>();
  const int32_t* wq = qsum.data_ptr<int32_t>();
  at::Tensor y = at::zeros({M, N}, codes.options().dtype(at::kFloat));
  float* yp = y.data_ptr<float>();
  constexpr int64_t kBlocks = 4;  // 16-column blocks per task: 64 columns
  const int64_t tasks = (NB + kBlocks - 1) / kBlocks;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    int8_t* bbuf = scratch<int8_t>(0, K * kBlocks * 16);
    int32_t* cbuf = scratch<int32_t>(1, tok_block() * kBlocks * 16);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nb0 = t * kBlocks, nbs = std::min(kBlocks, NB - nb0), cols = nbs * 16;
      da8w4_unpack_block(wp, K, nb0, nbs, bbuf);
      for (int64_t m0 = 0; m0 < M; m0 += tok_block()) {
        const int64_t mb = std::min(tok_block(), M - m0);
        for (int64_t g = 0; g < G; ++g) {
          cpublas::brgemm(mb, cols, gs, /*ld_a=*/K, /*ld_b=*/cols, /*ld_c=*/cols, /*add_C=*/false,
                          ap + m0 * K + g * gs, bbuf + (g * gs / 4) * cols * 4, cbuf, true);
          for (int64_t b = 0; b < nbs; ++b) {
            const int64_t off = ((nb0 + b) * G + g) * 16;
            for (int64_t m = 0; m < mb; ++m) {
              const int32_t Am = A[(m0 + m) * G + g], zam = za[m0 + m];
              const int32_t* c = cbuf + m * cols + b * 16;
              float* o = yp + (m0 + m) * N + (nb0 + b) * 16;
              for (int j = 0; j < 16; ++j) {
                const int32_t inner = c[j] - static_cast<int32_t>(wz[off + j]) * Am - zam * wq[off + j];
                o[j] += ws[off + j] * static_cast<float>(inner);
              }
            }
          }
        }
      }
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < cols; ++j) yp[m * N + nb0 * 16 + j] *= sa[m];
    }
    cpublas::brgemm_release(true);
  });
  return y;
#endif
}



// ------------------------------------------------------------------ DA8W4 on bf16 tiles
//
// The large-M DA8W4 path. The per-group u8s8 brgemm above pays a C store, reload and an
// fp32 epilogue per group of 128 k (as many vector operations per output as the tiles spend
// multiplying), so on AMX it ran at 0.6-0.7x bf16 F.linear at M = 256. Here the group
// scales go into the weight instead: each 64-column block of the int4 codes is dequantized
// once per call to bf16 w = s[n, g] (q - z[n, g]) (VNNI-2, as int4_tinygemm_brgemm does),
// the activation codes enter as bf16 (a - za), exact since |a - za| <= 255, and one bf16
// brgemm per k chunk accumulates the whole K:
//   y[m, n] = sa[m] * sum_k (a[m, k] - za[m]) * bf16(s[n, g] (q[n, k] - z[n, g])).
// The only difference from the integer kernels is the bf16 rounding of w (relative
// 2^-9, below the bf16 rounding of the output).

// (a - za) as bf16, [M, K] (exact).
static void da8w4_codes_to_bf16_scalar(const uint8_t* a, const int32_t* za, int64_t m0, int64_t m1, int64_t K,
                                       uint16_t* out) {
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t k = 0; k < K; ++k)
      out[m * K + k] = f32_to_bf16_rne(static_cast<float>(static_cast<int32_t>(a[m * K + k]) - za[m]));
}

// Columns [16 nb0, 16 (nb0 + nbs)) x k in [k0, k0 + kc) (kc a multiple of 8, each octet in
// one group) as bf16 VNNI-2 [kc/2][16 nbs][2].
static void da8w4_dequant_scalar(const uint8_t* w, const float* ws, const uint8_t* wz, int64_t K, int64_t G,
                                 int64_t gs, int64_t nb0, int64_t nbs, int64_t k0, int64_t kc, uint16_t* out) {
  const int64_t octets = K / 8, cols = nbs * 16;
  for (int64_t o = k0 / 8; o < (k0 + kc) / 8; ++o) {
    const int64_t g = (8 * o) / gs;
    for (int64_t b = 0; b < nbs; ++b) {
      const uint8_t* src = w + ((nb0 + b) * octets + o) * 64;
      const int64_t off = ((nb0 + b) * G + g) * 16;
      for (int i = 0; i < 64; ++i) {
        const int c = i / 4, j = i % 4;
        const float s = ws[off + c], z = static_cast<float>(wz[off + c]);
        const int q[2] = {src[i] & 0x0F, src[i] >> 4};
        for (int h = 0; h < 2; ++h) {
          const int64_t kk = 8 * o + 4 * h + j - k0;
          out[((kk / 2) * cols + b * 16 + c) * 2 + (kk & 1)] = f32_to_bf16_rne(s * (static_cast<float>(q[h]) - z));
        }
      }
    }
  }
}

#if LOWBIT_X86
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void da8w4_codes_to_bf16_avx512(
    const uint8_t* a, const int32_t* za, int64_t m0, int64_t m1, int64_t K, uint16_t* out) {
  for (int64_t m = m0; m < m1; ++m) {
    const __m512i z = _mm512_set1_epi32(za[m]);
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + m * K + k)));
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, z)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m * K + k), reinterpret_cast<const __m256i&>(h));
    }
    for (; k < K; ++k) out[m * K + k] = f32_to_bf16_rne(static_cast<float>(static_cast<int32_t>(a[m * K + k]) - za[m]));
  }
}

// Per (octet, 16-column block): the 64 low nibbles are 16 columns x k 0-3 (byte 4c + j),
// the high nibbles k 4-7. Four 16-lane chunks (4 columns x 4 k each) get w = q s - z s in
// fp32; two vcvtne2ps2bf16 pack them as dwords (column c, k pair p) at dword 2c + p, and
// even / odd dwords are the VNNI-2 rows of k pairs (0, 1) and (2, 3).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void da8w4_dequant_avx512(
    const uint8_t* w, const float* ws, const uint8_t* wz, int64_t K, int64_t G, int64_t gs, int64_t nb0, int64_t nbs,
    int64_t k0, int64_t kc, uint16_t* out) {
  const int64_t octets = K / 8, cols = nbs * 16;
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  const __m512i nib = _mm512_set1_epi8(0x0F);
  __m512i spread[4];  // lane l of chunk t -> column 4t + l/4
  for (int t = 0; t < 4; ++t)
    spread[t] = _mm512_set_epi32(4 * t + 3, 4 * t + 3, 4 * t + 3, 4 * t + 3, 4 * t + 2, 4 * t + 2, 4 * t + 2, 4 * t + 2,
                                 4 * t + 1, 4 * t + 1, 4 * t + 1, 4 * t + 1, 4 * t, 4 * t, 4 * t, 4 * t);
  for (int64_t b = 0; b < nbs; ++b) {
    int64_t cur_g = -1;
    __m512 S[4], NZS[4];
    for (int64_t o = k0 / 8; o < (k0 + kc) / 8; ++o) {
      const int64_t g = (8 * o) / gs;
      if (g != cur_g) {
        cur_g = g;
        const int64_t off = ((nb0 + b) * G + g) * 16;
        const __m512 s16 = _mm512_loadu_ps(ws + off);
        const __m512 z16 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wz + off))));
        const __m512 nzs = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z16, s16));
        for (int t = 0; t < 4; ++t) {
          S[t] = _mm512_permutexvar_ps(spread[t], s16);
          NZS[t] = _mm512_permutexvar_ps(spread[t], nzs);
        }
      }
      const __m512i v = _mm512_loadu_si512(w + ((nb0 + b) * octets + o) * 64);
      const __m512i halves[2] = {_mm512_and_si512(v, nib), _mm512_and_si512(_mm512_srli_epi16(v, 4), nib)};
      for (int h = 0; h < 2; ++h) {
        __m512 f[4];
        const __m128i* hb = reinterpret_cast<const __m128i*>(&halves[h]);
        for (int t = 0; t < 4; ++t)
          f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(hb + t))), S[t], NZS[t]);
        const __m512i p01 = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f[1], f[0]));  // columns 0-7
        const __m512i p23 = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f[3], f[2]));  // columns 8-15
        const int64_t row = (8 * o + 4 * h - k0) / 2;  // k pair of (k 0, 1) of this half
        _mm512_storeu_si512(out + (row * cols + b * 16) * 2, _mm512_permutex2var_epi32(p01, even, p23));
        _mm512_storeu_si512(out + ((row + 1) * cols + b * 16) * 2, _mm512_permutex2var_epi32(p01, odd, p23));
      }
    }
  }
}
#endif


// y [M, N], bf16 when out_bf16 else float32. Each task accumulates its [M, 64] columns in
// per-thread fp32 scratch (ld 64: L2-resident at M <= 1024) and writes them scaled by sa[m]
// once, in the output dtype (no fp32 [M, N] round trip through memory).
// isa: -1 auto, 0 scalar conversions (test hook).
at::Tensor da8w4_brgemm_bf16(const at::Tensor& codes, const at::Tensor& ascale, const at::Tensor& azp,
                             const at::Tensor& qdata, const at::Tensor& scale, const at::Tensor& zero_point,
                             int64_t group_size, bool out_bf16, int64_t isa) {
  TORCH_CHECK(brgemm_caps() & 1, "da8w4_brgemm_bf16: this CPU has no bf16 brgemm (AMX or AVX512-BF16)");
  const Da8w4Dims d = check_da8w4("da8w4_brgemm_bf16", codes, ascale, azp, qdata, scale, zero_point, group_size);
  const int64_t M = d.M, K = d.K, gs = group_size, NB = d.NB, N = d.N, G = d.G;
#if LOWBIT_X86
  const bool vec = isa != 0 && have_avx512bf16();
#else
  const bool vec = false;
#endif
  const uint8_t* ap = codes.data_ptr<uint8_t>();
  const float* sa = ascale.data_ptr<float>();
  const int32_t* za = azp.data_ptr<int32_t>();
  const uint8_t* wp = qdata.data_ptr<uint8_t>();
  const float* ws = scale.data_ptr<float>();
  const uint8_t* wz = zero_point.data_ptr<uint8_t>();
  at::Tensor abf = at::empty({M, K}, codes.options().dtype(at::kBFloat16));
  uint16_t* abp = reinterpret_cast<uint16_t*>(abf.data_ptr<c10::BFloat16>());
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
#if LOWBIT_X86
    if (vec) return da8w4_codes_to_bf16_avx512(ap, za, m0, m1, K, abp);
#endif
    da8w4_codes_to_bf16_scalar(ap, za, m0, m1, K, abp);
  });
  at::Tensor y = at::empty({M, N}, codes.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  const ScaledOut out = scaled_out(y, vec);
  constexpr int64_t kBlocks = 4;  // 16-column blocks per task: 64 columns
  const int64_t tasks = (NB + kBlocks - 1) / kBlocks;
  const int64_t kchunk = std::min<int64_t>(kKChunkInt4 / gs * gs, K);  // whole groups per chunk
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    uint16_t* wbuf = scratch<uint16_t>(0, kchunk * kBlocks * 16);
    float* cbuf = scratch<float>(1, M * kBlocks * 16);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nb0 = t * kBlocks, nbs = std::min(kBlocks, NB - nb0), cols = nbs * 16;
      for (int64_t k0 = 0; k0 < K; k0 += kchunk) {
        const int64_t kc = std::min(kchunk, K - k0);
#if LOWBIT_X86
        if (vec) da8w4_dequant_avx512(wp, ws, wz, K, G, gs, nb0, nbs, k0, kc, wbuf);
        else
#endif
          da8w4_dequant_scalar(wp, ws, wz, K, G, gs, nb0, nbs, k0, kc, wbuf);
        for (int64_t m0 = 0; m0 < M; m0 += tok_block())
          cpublas::brgemm(std::min(tok_block(), M - m0), cols, kc, /*ld_a=*/K, /*ld_b=*/cols, /*ld_c=*/cols,
                          /*add_C=*/k0 > 0, reinterpret_cast<const c10::BFloat16*>(abp) + m0 * K + k0,
                          reinterpret_cast<const c10::BFloat16*>(wbuf), cbuf + m0 * cols, /*is_vnni=*/true);
      }
      for (int64_t m = 0; m < M; ++m) write_scaled_row(out, m, nb0 * 16, cbuf + m * cols, sa[m], nullptr, cols);
    }
    cpublas::brgemm_release(true);
  });
  return y;
}

}  // namespace lowbit_wo

TORCH_LIBRARY_FRAGMENT(lowbit_ext, m) {
  m.def("brgemm_caps() -> int", &lowbit_wo::brgemm_caps);
  m.def(
      "int4_tinygemm_brgemm(Tensor x, Tensor qdata, Tensor scale_and_zero, int group_size, int block_n, "
      "bool out_bf16=False, int isa=-1) -> Tensor");
  m.def("int8_brgemm_bf16(Tensor x, Tensor q, Tensor? wscale=None, bool out_bf16=False, int isa=-1) -> Tensor");
  m.def(
      "int8_brgemm_u8s8(Tensor xq, Tensor q, Tensor? xscale=None, Tensor? wscale=None, bool out_bf16=False, "
      "int isa=-1) -> Tensor");

  m.def(
      "da8w4_brgemm(Tensor codes, Tensor ascale, Tensor azp, Tensor gsum, Tensor qdata, Tensor scale, "
      "Tensor zero_point, Tensor qsum, int group_size) -> Tensor");
  m.def(
      "da8w4_brgemm_bf16(Tensor codes, Tensor ascale, Tensor azp, Tensor qdata, Tensor scale, Tensor zero_point, "
      "int group_size, bool out_bf16=False, int isa=-1) -> Tensor");
}

TORCH_LIBRARY_IMPL(lowbit_ext, CPU, m) {
  m.impl("int4_tinygemm_brgemm", &lowbit_wo::int4_tinygemm_brgemm);
  m.impl("int8_brgemm_bf16", &lowbit_wo::int8_brgemm_bf16);
  m.impl("int8_brgemm_u8s8", &lowbit_wo::int8_brgemm_u8s8);
  m.impl("da8w4_brgemm", &lowbit_wo::da8w4_brgemm);
  m.impl("da8w4_brgemm_bf16", &lowbit_wo::da8w4_brgemm_bf16);

}
