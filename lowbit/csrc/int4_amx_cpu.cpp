// int4 weight-only GEMM on AMX tiles (Sapphire Rapids and later Xeons), for the weights
// packed by ATen's `_convert_weight_to_int4pack_for_cpu` in its 64-row ("avx512") layout
// (lowbit/packing/int4.py):
//
//   int4_tinygemm_amx(x [M, K] float/bf16/fp16, qdata uint8 [Np, K/2], scale_and_zero bf16
//       [K/g, Np, 2], group_size) -> [M, Np] in x's dtype,  W[n, k] = (q - 8) s + z
//
// Why: lowbit's other AMX path (wo_gemm_cpu.cpp) converts every weight to bf16 with its
// scale applied (fp32 FMA, rounding, VNNI interleave: ~20 vector ops per 32 weights) and
// that conversion, not the tile multiplies, bounds it at M = 16..64 (4096x4096 g128 on the
// 2-core SPR VM: ~1.2 ms at M = 16 for 8.5 MiB of weights). Here the tiles multiply the raw
// codes: a nibble q becomes the exact bf16 128 + q with one bitwise op (bits 0x4300 | q), so
// a 64-row block's codes turn into the VNNI-2 B operand with ~8 ops per 64 weights, and each
// group's scale and zero point apply once per group to the fp32 tile sums:
//     y[m, n] += s[g, n] * C_g[m, n] + (z[g, n] - 136 s[g, n]) * xsum_g[m]
// with C_g = sum_{k in g} x[m, k] (128 + q[n, k]) (exact bf16 products, fp32 sums) and xsum_g
// the group's sum of the bf16-rounded activations (the same factoring as the AVX512-BF16
// GEMV loop in int4_tinygemm_gemv.cpp).
//
// Blocking: at::parallel_for over 64-row weight blocks. A task converts its block's codes,
// 4096 k at a time, into a per-thread VNNI buffer ([kc/2][64][2] bf16, 512 KiB: L2), then for
// every activation tile (16 rows, or M below 16: the tiles are configured that high) and every
// group of the chunk: zero 4 C tiles (rows x 64 fp32), per 32 k one A tile (rows x 32 bf16)
// and 4 B tiles (16 k-pairs x 16 columns, two B registers in turn), 4 `tdpbf16ps`; store the
// C tiles and apply the group's scale and correction into the block's fp32 accumulators (one
// group late, from the other half of a double buffer, so the loads never wait on the tile
// stores just issued). x is copied once per call to bf16 with M padded to the tile height. Groups must be multiples
// of 32 (the tile's K step); other shapes take other paths (ops/cpu.py checks). N tails
// (Np % 64, 16-row multiples) run a scalar loop.
//
// Tiles need the kernel's permission (Linux arch_prctl(ARCH_REQ_XCOMP_PERM)), requested
// once per process; a CPU or kernel without AMX reports unavailable (int4_amx_available)
// and the dispatch never picks this path.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx_util.h"

namespace lowbit_int4_amx {

constexpr int64_t kBlock = 64;  // weight rows per block (the "avx512" packing)
constexpr int64_t kTileM = 16;  // activation rows per tile
// k converted at a time: 512 KiB of VNNI codes (L2). Measured (2-core SPR VM, g128, 2 threads,
// us at M = 4 / 16 / 32): 4096x11008 chunks of 1024 2,495-2,601 / 2,403-2,454 / 3,127-3,177,
// 2048 2,391-2,598 / 2,365-2,376 / 3,042-3,077, 4096 2,528 / 2,391 / 3,086, all of K 2,777 /
// 2,637 / 3,758; 4096x4096 the same within noise for 1024-4096.
constexpr int64_t kKChunk = 4096;

static bool amx_ok() {
#if LOWBIT_AMX
  static const bool ok = lowbit_amx::detect(/*need_bf16=*/true, /*need_int8=*/false);
  return ok;
#else
  return false;
#endif
}

bool int4_amx_available() { return amx_ok(); }

template <typename T>
static T* scratch(int slot, size_t n) {  // 64-byte aligned, per thread, kept across calls
  static thread_local std::vector<unsigned char> bufs[3];
  std::vector<unsigned char>& b = bufs[slot];
  const size_t bytes = n * sizeof(T) + 64;
  if (b.size() < bytes) b.resize(bytes);
  const uintptr_t p = reinterpret_cast<uintptr_t>(b.data());
  return reinterpret_cast<T*>((p + 63) & ~static_cast<uintptr_t>(63));
}

#if LOWBIT_AMX
#define LOWBIT_AMX_TARGET __attribute__((target("avx512f,avx512bw,amx-tile,amx-bf16")))

// tmm0-3: C (rows x 16 fp32), tmm4-5: B (16 k-pairs x 32 bf16), tmm6: A (rows x 32 bf16);
// rows = the activation tile's height (16, or M when M < 16: shorter loads, stores and
// multiplies for small batches).
LOWBIT_AMX_TARGET static void configure_tiles(int rows) {
  lowbit_amx::TileConfig cfg;
  for (int t = 0; t < 7; ++t) {
    cfg.rows[t] = (t == 4 || t == 5) ? 16 : rows;
    cfg.colsb[t] = 64;
  }
  lowbit_amx::load_config(cfg);
}

// Rows [k0, k0 + kc) of the block's codes [K][32 bytes] (byte c: row c low nibble, row c + 32
// high) -> VNNI-2 bf16 [kc/2][64][2] of 128 + q. Per k pair and 16 bytes: interleave the two
// k's bytes, widen to words, then one ternary-logic op (low nibbles, rows c) or a shift and
// an or (high nibbles, rows c + 32).
LOWBIT_AMX_TARGET static void codes_to_vnni(const uint8_t* qb, int64_t k0, int64_t kc, uint16_t* out) {
  const __m512i mask = _mm512_set1_epi16(0x000F), bias = _mm512_set1_epi16(0x4300);
  for (int64_t k = k0; k < k0 + kc; k += 2) {
    const uint8_t* b0 = qb + k * 32;
    uint16_t* o = out + ((k - k0) / 2) * kBlock * 2;
    for (int half = 0; half < 2; ++half) {
      const __m128i r0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 16 * half));
      const __m128i r1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 32 + 16 * half));
      const __m256i pairs = _mm256_set_m128i(_mm_unpackhi_epi8(r0, r1), _mm_unpacklo_epi8(r0, r1));
      const __m512i w = _mm512_cvtepu8_epi16(pairs);  // (k, col), (k + 1, col) for 16 columns
      const __m512i lo = _mm512_ternarylogic_epi32(w, mask, bias, 0xEA);  // (w & 0xF) | 0x4300
      const __m512i hi = _mm512_or_si512(_mm512_srli_epi16(w, 4), bias);
      _mm512_storeu_si512(o + 2 * 16 * half, lo);        // rows 16 half .. + 15
      _mm512_storeu_si512(o + 2 * (32 + 16 * half), hi);  // rows 32 + 16 half .. + 15
    }
  }
}

// acc[r][0..64) += s * C[r] + c * xs[r] for the 16 rows of one tile (C: 16 x 64 fp32).
LOWBIT_AMX_TARGET static void apply_group(float* acc, const float* C, const c10::BFloat16* sz, const float* xs,
                                          int64_t rows) {
  const __m512i hi16 = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512 k136 = _mm512_set1_ps(136.f);
  __m512 s[4], c[4];
  for (int v = 0; v < 4; ++v) {  // 16 (scale, zero) bf16 pairs = 16 dwords: scale low half
    const __m512i p = _mm512_loadu_si512(sz + 32 * v);
    s[v] = _mm512_castsi512_ps(_mm512_slli_epi32(p, 16));
    c[v] = _mm512_fnmadd_ps(k136, s[v], _mm512_castsi512_ps(_mm512_and_si512(p, hi16)));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 x = _mm512_set1_ps(xs[r]);
    for (int v = 0; v < 4; ++v) {
      float* a = acc + r * kBlock + 16 * v;
      const __m512 t = _mm512_fmadd_ps(s[v], _mm512_loadu_ps(C + r * kBlock + 16 * v), _mm512_mul_ps(c[v], x));
      _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), t));
    }
  }
}

// One 64-row block against all of x (xb: bf16 [Mp, K], Mp a multiple of the tile height th;
// xsum [Mp, G]; wv: the block's codes as VNNI-2 bf16 for all K, from codes_to_vnni): per
// activation tile and group, 4 C tiles summed over the group's k and scaled into acc [Mp][64].
// (Converting one group at a time, right before its tile loads, to keep it in L1 measured
// slower: 4096x4096 g128 M = 16, 2 threads, 1,249 vs 912 us; the tile loads then read lines
// the conversion's stores had just written.)
LOWBIT_AMX_TARGET static void block_amx(const uint16_t* xb, const float* xsum, int64_t M, int64_t Mp, int64_t th,
                                        int64_t K, int64_t gs, const uint8_t* qb, const c10::BFloat16* szp,
                                        int64_t Np, int64_t r0, uint16_t* wv, float* acc, float* C) {
  const int64_t G = K / gs, kchunk = std::max(gs, kKChunk / gs * gs);
  std::fill(acc, acc + Mp * kBlock, 0.f);
  for (int64_t c0 = 0; c0 < K; c0 += kchunk) {
    const int64_t kc = std::min(kchunk, K - c0);
    codes_to_vnni(qb, c0, kc, wv);
    for (int64_t m0 = 0; m0 < Mp; m0 += th) {
      const uint16_t* xa = xb + m0 * K;
      const int64_t rows = std::min(th, M - m0);  // rows past M are zero: no epilogue for them
      const int64_t g0 = c0 / gs, g1 = (c0 + kc) / gs;
      auto fold = [&](int64_t g) {
        float xs[kTileM];
        for (int64_t r = 0; r < rows; ++r) xs[r] = xsum[(m0 + r) * G + g];
        apply_group(acc + m0 * kBlock, C + (g % 2) * kTileM * kBlock, szp + (g * Np + r0) * 2, xs, rows);
      };
      for (int64_t g = g0; g < g1; ++g) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t k = g * gs; k < (g + 1) * gs; k += 32) {
          const uint16_t* wk = wv + ((k - c0) / 2) * kBlock * 2;  // 16 k-pair rows of 256 bytes
          _tile_loadd(6, xa + k, K * 2);
          _tile_loadd(4, wk, kBlock * 4);
          _tile_loadd(5, wk + 32, kBlock * 4);
          _tile_dpbf16ps(0, 6, 4);
          _tile_dpbf16ps(1, 6, 5);
          _tile_loadd(4, wk + 64, kBlock * 4);
          _tile_loadd(5, wk + 96, kBlock * 4);
          _tile_dpbf16ps(2, 6, 4);
          _tile_dpbf16ps(3, 6, 5);
        }
        // Fold the previous group (stored one group earlier, in the other half of C) after
        // this group's tiles are issued: loads right behind the tile stores of the same group
        // waited for those to drain.
        if (g > g0) fold(g - 1);
        float* Cg = C + (g % 2) * kTileM * kBlock;
        _tile_stored(0, Cg, kBlock * 4);
        _tile_stored(1, Cg + 16, kBlock * 4);
        _tile_stored(2, Cg + 32, kBlock * 4);
        _tile_stored(3, Cg + 48, kBlock * 4);
      }
      fold(g1 - 1);
    }
  }
}
#endif

// Rows [r0, r0 + nb) of a short tail block (adjacent row pairs: byte c holds rows 2c, 2c+1),
// y[m, r0 + r] from the bf16-rounded x, the same factoring in fp32.
static void tail_scalar(const uint16_t* xb, const float* xsum, int64_t M, int64_t K, int64_t gs, const uint8_t* qb,
                        const c10::BFloat16* szp, int64_t Np, int64_t r0, int64_t nb, float* y) {
  const int64_t G = K / gs, half = nb / 2;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t r = 0; r < nb; ++r) {
      float out = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        float acc = 0.f;
        for (int64_t k = g * gs; k < (g + 1) * gs; ++k) {
          const uint8_t b = qb[k * half + r / 2];
          const float q = static_cast<float>((r & 1) ? (b >> 4) : (b & 0x0F));
          uint32_t u = static_cast<uint32_t>(xb[m * K + k]) << 16;
          float xv;
          std::memcpy(&xv, &u, 4);
          acc += xv * (128.f + q);
        }
        const float s = static_cast<float>(szp[(g * Np + r0 + r) * 2]);
        const float z = static_cast<float>(szp[(g * Np + r0 + r) * 2 + 1]);
        out += s * acc + (z - 136.f * s) * xsum[m * G + g];
      }
      y[m * Np + r0 + r] = out;
    }
  }
}

// xsum[g] = sum over group g of the bf16 values xb (fp32, 16 lanes then a lane reduction).
#if LOWBIT_AMX
LOWBIT_AMX_TARGET static void group_sums(const uint16_t* xb, int64_t K, int64_t gs, float* xsum) {
  for (int64_t g = 0; g < K / gs; ++g) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = g * gs; k < (g + 1) * gs; k += 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + k));
      acc = _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
    xsum[g] = _mm512_reduce_add_ps(acc);
  }
}
#else
static void group_sums(const uint16_t* xb, int64_t K, int64_t gs, float* xsum) {
  for (int64_t g = 0; g < K / gs; ++g) {
    float s = 0.f;
    for (int64_t k = g * gs; k < (g + 1) * gs; ++k) {
      uint32_t u = static_cast<uint32_t>(xb[k]) << 16;
      float v;
      std::memcpy(&v, &u, 4);
      s += v;
    }
    xsum[g] = s;
  }
}
#endif

template <typename T>
static void to_bf16_padded(const T* x, int64_t M, int64_t K, uint16_t* xb) {
  for (int64_t i = 0; i < M * K; ++i) {
    const c10::BFloat16 v(static_cast<float>(x[i]));
    std::memcpy(xb + i, &v, 2);
  }
}

// y.flat[off .. off + n) = v (fp32), in y's dtype.
static void store_row(const float* v, int64_t n, at::Tensor& y, int64_t off) {
  const auto dt = y.scalar_type();
  if (dt == at::kFloat) {
    std::memcpy(y.data_ptr<float>() + off, v, n * 4);
  } else if (dt == at::kBFloat16) {
    c10::BFloat16* o = y.data_ptr<c10::BFloat16>() + off;
    for (int64_t i = 0; i < n; ++i) o[i] = c10::BFloat16(v[i]);
  } else {
    c10::Half* o = y.data_ptr<c10::Half>() + off;
    for (int64_t i = 0; i < n; ++i) o[i] = c10::Half(v[i]);
  }
}

at::Tensor int4_tinygemm_amx(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale_and_zero,
                             int64_t group_size) {
  TORCH_CHECK(amx_ok(), "int4_tinygemm_amx: this CPU / kernel has no usable AMX");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "int4_tinygemm_amx: x must be contiguous [M, K]");
  TORCH_CHECK(qdata.scalar_type() == at::kByte && qdata.dim() == 2 && qdata.is_contiguous(),
              "int4_tinygemm_amx: qdata must be contiguous uint8 [Np, K/2]");
  const int64_t M = x.size(0), K = x.size(1), Np = qdata.size(0), gs = group_size;
  TORCH_CHECK(qdata.size(1) * 2 == K && gs > 0 && gs % 32 == 0 && K % gs == 0, "int4_tinygemm_amx: bad K/group");
  TORCH_CHECK(scale_and_zero.scalar_type() == at::kBFloat16 && scale_and_zero.is_contiguous() &&
                  scale_and_zero.dim() == 3 && scale_and_zero.size(0) == K / gs && scale_and_zero.size(1) == Np &&
                  scale_and_zero.size(2) == 2,
              "int4_tinygemm_amx: scale_and_zero must be contiguous bf16 [K/g, Np, 2]");
  TORCH_CHECK(Np % 16 == 0, "int4_tinygemm_amx: Np must be a multiple of 16");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "int4_tinygemm_amx: x must be float32, bfloat16 or float16");
  at::Tensor y = at::empty({M, Np}, x.options());
  if (M == 0) return y;
  // Activation tile height: 16, or M itself below 16.
  const int64_t th = std::min(M, kTileM), Mp = (M + th - 1) / th * th, G = K / gs;
  // x as bf16, M padded with zero rows to the tile height, and its per-group sums.
  std::vector<uint16_t> xb(Mp * K, 0);
  if (dt == at::kBFloat16) std::memcpy(xb.data(), x.data_ptr(), M * K * 2);
  else at::parallel_for(0, M, std::max<int64_t>(1, 16384 / K), [&](int64_t m0, int64_t m1) {
    if (dt == at::kFloat) to_bf16_padded(x.data_ptr<float>() + m0 * K, m1 - m0, K, xb.data() + m0 * K);
    else to_bf16_padded(x.data_ptr<c10::Half>() + m0 * K, m1 - m0, K, xb.data() + m0 * K);
  });
  std::vector<float> xsum(Mp * G, 0.f);
  // Rows in parallel (this and the output conversion ran on one thread: ~1 ms each at M = 256,
  // K = 4096 on the 2-core SPR VM, where the tiles took ~3 ms).
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / K), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) group_sums(xb.data() + m * K, K, gs, xsum.data() + m * G);
  });
  const uint8_t* qp = qdata.data_ptr<uint8_t>();
  const c10::BFloat16* szp = scale_and_zero.data_ptr<c10::BFloat16>();
  const int64_t n_full = Np / kBlock, tail = Np - n_full * kBlock;
#if LOWBIT_AMX
  at::parallel_for(0, n_full, 1, [&](int64_t b0, int64_t b1) {
    configure_tiles(static_cast<int>(th));
    uint16_t* wv = scratch<uint16_t>(0, std::max(gs, kKChunk) * kBlock);
    float* acc = scratch<float>(1, Mp * kBlock);
    float* C = scratch<float>(2, 2 * kTileM * kBlock);
    for (int64_t b = b0; b < b1; ++b) {
      block_amx(xb.data(), xsum.data(), M, Mp, th, K, gs, qp + b * kBlock * (K / 2), szp, Np, b * kBlock, wv, acc, C);
      for (int64_t m = 0; m < M; ++m) store_row(acc + m * kBlock, kBlock, y, m * Np + b * kBlock);
    }
    lowbit_amx::release();
  });
#endif
  if (tail) {
    std::vector<float> yt(M * Np);
    tail_scalar(xb.data(), xsum.data(), M, K, gs, qp + n_full * kBlock * (K / 2), szp, Np, n_full * kBlock, tail,
                yt.data());
    for (int64_t m = 0; m < M; ++m) store_row(yt.data() + m * Np + n_full * kBlock, tail, y, m * Np + n_full * kBlock);
  }
  return y;
}

}  // namespace lowbit_int4_amx

TORCH_LIBRARY_FRAGMENT(lowbit_ext, m) {
  m.def("int4_tinygemm_amx(Tensor x, Tensor qdata, Tensor scale_and_zero, int group_size) -> Tensor");
  m.def("int4_amx_available() -> bool", &lowbit_int4_amx::int4_amx_available);
}

TORCH_LIBRARY_IMPL(lowbit_ext, CPU, m) { m.impl("int4_tinygemm_amx", &lowbit_int4_amx::int4_tinygemm_amx); }
