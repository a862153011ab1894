// DA8W4 (8-bit dynamic activation codes x groupwise int4 weights) on AMX-INT8 tiles, for the
// weights packed for lowbit/csrc/da8w4_cpu.cpp ([N/16, K/8, 64], Int4VnniCpuTensor):
//
//   da8w4_amx_gemm(codes uint8 [M, K], ascale fp32 [M], azp int32 [M], qdata, scale, zero_point,
//       qsum, group_size, out_bf16) -> [M, N] fp32 (bf16 with out_bf16)
//
// with the activation codes of da8w4_quantize_act. Same numerics as da8w4_cpu.cpp, bit for bit:
// the same exact int32 group sums inner[m, n, g] = sum_{k in g} (a - za)(q - z), the same fp32
// FMA chain over the groups in order, y = sa[m] * sum_g s[n, g] inner.
//
// Why: the two other AMX paths lose at mid and large M. The per-group u8s8 brgemm
// (wo_gemm_cpu.cpp) pays a oneDNN call, a C reload and a scalar epilogue per group (0.37x bf16
// at M = 256 on the 2-core SPR VM); the bf16 brgemm dequantizes every weight to bf16 with its
// scale (~1.0x bf16 at M = 256) and multiplies at half the int8 rate. Here:
//   - each 16-column block's codes are unpacked once per call into the VNNI-4 B operand as the
//     signed bytes q - z (|q - z| <= 15), one and / shift and one subtract per 64 weights: the
//     packed layout's low and high nibbles already are two rows of a B tile;
//   - the activation codes enter as the signed bytes a - 128 (one xor per 64 codes, in the
//     call's padded copy), so `tdpbssd` gives D = sum (a - 128)(q - z), and
//     inner = D - (za - 128) Qc[n, g] with Qc = sum_k (q - z) (the packed qsum): no correction
//     at all for symmetric activations (za = 128), one vpmulld per row otherwise;
//   - a 2 x 2 block of C tiles (32 activation rows x 32 columns) reuses each A and B tile
//     twice; after each group the tiles are stored and folded into fp32 accumulators.
// Groups must be multiples of 32 (the tile's k step: 64 for groups of 64k, else 32); other
// groups take the VNNI kernel (ops/cpu.py checks). Any M (the copy is padded to 16 rows).
//
// Cache blocking as int8_amx_cpu.cpp: a task unpacks a chunk of column pairs (up to 1 MiB of
// B operand, L2) and runs blocks of 64 activation rows over it, so each packed weight byte is
// read once per call and each activation block once per chunk.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "amx_util.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace lowbit_da8w4_amx {

constexpr int64_t kChunkBytes = int64_t{1} << 20;  // unpacked B operand per cache block
constexpr int64_t kMBlock = 64;                    // activation rows per cache block

static bool amx_ok() {
#if LOWBIT_AMX
  static const bool ok = lowbit_amx::detect(/*need_bf16=*/false, /*need_int8=*/true);
  return ok;
#else
  return false;
#endif
}

bool da8w4_amx_available() { return amx_ok(); }

template <typename T>
static T* scratch(size_t n) {  // 64-byte aligned, per thread, kept across calls
  static thread_local std::vector<unsigned char> buf;
  const size_t bytes = n * sizeof(T) + 64;
  if (buf.size() < bytes) buf.resize(bytes);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<T*>((p + 63) & ~static_cast<uintptr_t>(63));
}

#if LOWBIT_AMX
#define LOWBIT_DA8W4_AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16,amx-tile,amx-int8")))

struct Args {
  const int8_t* xa;     // activation codes - 128, [Mp, K]
  const int32_t* zc;    // za - 128 per row, [Mp] (0 for padding rows)
  const float* sa;      // [M]
  const float* ws;      // [NB, G, 16]
  const int32_t* wq;    // [NB, G, 16]
  float* R;             // [N]: sum_g s[n, g] Qc[n, g] (filled by unpack_blocks)
  float* yf;            // [M, N] (or null)
  uint16_t* yb;         // [M, N] bf16 (or null)
  int64_t M, N, K, G, gs, ks;
};

// tmm0-3: C (16 x 16 int32), tmm4-5: A (16 activation rows x ks bytes), tmm6-7: B (ks/4
// k-quads x 16 columns x 4 bytes).
LOWBIT_DA8W4_AMX_TARGET static void configure_tiles(int64_t ks) {
  lowbit_amx::TileConfig cfg;
  for (int t = 0; t < 4; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  for (int t = 4; t < 6; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = static_cast<uint16_t>(ks);
  }
  for (int t = 6; t < 8; ++t) {
    cfg.rows[t] = static_cast<uint8_t>(ks / 4);
    cfg.colsb[t] = 64;
  }
  lowbit_amx::load_config(cfg);
}

// Blocks [nb0, nb0 + nbs) as the B operand: out + b K 16 holds block nb0 + b as [K/4][16][4]
// signed bytes q - z (row r: k = 4r .. 4r + 3 of the 16 columns). Packed octet o's low nibbles
// are k-quad 2o, its high nibbles k-quad 2o + 1 (da8w4_cpu.cpp's layout).
// Also R[n] = sum_g s[n, g] Qc[n, g] (fp32, groups in order) for the blocks' columns.
LOWBIT_DA8W4_AMX_TARGET static void unpack_blocks(const Args& p, const uint8_t* w, const uint8_t* wz, int64_t nb0,
                                                  int64_t nbs, int8_t* out) {
  const int64_t K = p.K, G = p.G, gs = p.gs;
  const int64_t octets = K / 8, per_group = gs / 8;
  const __m512i mask = _mm512_set1_epi8(0x0F);
  const __m512i rep = _mm512_set1_epi32(0x01010101);
  for (int64_t b = 0; b < nbs; ++b) {
    const uint8_t* src = w + (nb0 + b) * octets * 64;
    int8_t* dst = out + b * K * 16;
    __m512 R = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      const int64_t off = ((nb0 + b) * G + g) * 16;
      R = _mm512_fmadd_ps(_mm512_loadu_ps(p.ws + off), _mm512_cvtepi32_ps(_mm512_loadu_si512(p.wq + off)), R);
      // z of each column in all 4 bytes of its lane (z <= 15: no carries).
      const __m512i z = _mm512_mullo_epi32(
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wz + off))), rep);
      for (int64_t o = g * per_group; o < (g + 1) * per_group; ++o) {
        const __m512i v = _mm512_loadu_si512(src + o * 64);
        _mm512_store_si512(dst + 2 * o * 64, _mm512_sub_epi8(_mm512_and_si512(v, mask), z));
        _mm512_store_si512(dst + (2 * o + 1) * 64, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), mask), z));
      }
    }
    _mm512_storeu_ps(p.R + (nb0 + b) * 16, R);
  }
}

// Adds one group of one C tile (Ct: 16 rows x 16 int32 D) into its fp32 accumulators fa.
LOWBIT_DA8W4_AMX_TARGET static inline void fold_group(const int32_t* Ct, const float* s, float* fa) {
  const __m512 sv = _mm512_loadu_ps(s);
  for (int r = 0; r < 16; ++r)
    _mm512_store_ps(fa + 16 * r, _mm512_fmadd_ps(sv, _mm512_cvtepi32_ps(_mm512_load_si512(Ct + 16 * r)),
                                                 _mm512_load_ps(fa + 16 * r)));
}

// y rows m0 .. m0 + 15 (those < M), columns n0 .. n0 + 15: sa (fa - zc R).
LOWBIT_DA8W4_AMX_TARGET static inline void write_rows(const Args& p, const float* fa, int64_t m0, int64_t n0) {
  const __m512 R = _mm512_loadu_ps(p.R + n0);
  for (int64_t r = 0; r < 16 && m0 + r < p.M; ++r) {
    const __m512 acc = _mm512_fnmadd_ps(_mm512_set1_ps(static_cast<float>(p.zc[m0 + r])), R, _mm512_load_ps(fa + 16 * r));
    const __m512 f = _mm512_mul_ps(acc, _mm512_set1_ps(p.sa[m0 + r]));
    if (p.yf) {
      _mm512_storeu_ps(p.yf + (m0 + r) * p.N + n0, f);
    } else {
      const __m256bh h = _mm512_cvtneps_pbh(f);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p.yb + (m0 + r) * p.N + n0), reinterpret_cast<const __m256i&>(h));
    }
  }
}

// MT activation tiles (rows m0 .. m0 + 16 MT - 1) x NT column blocks (nb, nb + 1; their B
// operand at bw and bw + 16 K).
template <int MT, int NT>
LOWBIT_DA8W4_AMX_TARGET static void block(const Args& p, int64_t m0, int64_t nb, const int8_t* bw) {
  // The fold of group g runs after the tiles of group g + 1 are issued, on the copy stored
  // one group earlier (Ct[g % 2]): loads right behind the tile stores of the same group
  // waited for those to drain.
  alignas(64) int32_t Ct[2][4][256];
  alignas(64) float fa[4][256];
  std::memset(fa, 0, sizeof(fa));
  const int8_t* a0 = p.xa + m0 * p.K;
  const int8_t* a1 = a0 + 16 * p.K;
  const int8_t* b1 = bw + 16 * p.K;
  auto fold = [&](int64_t g) {
    for (int nt = 0; nt < NT; ++nt) {
      const int64_t off = ((nb + nt) * p.G + g) * 16;
      for (int mt = 0; mt < MT; ++mt) fold_group(Ct[g % 2][2 * nt + mt], p.ws + off, fa[2 * nt + mt]);
    }
  };
  for (int64_t g = 0; g < p.G; ++g) {
    _tile_zero(0);
    if (MT == 2) _tile_zero(1);
    if (NT == 2) _tile_zero(2);
    if (MT == 2 && NT == 2) _tile_zero(3);
    for (int64_t k = g * p.gs; k < (g + 1) * p.gs; k += p.ks) {
      _tile_loadd(4, a0 + k, p.K);
      _tile_loadd(6, bw + k * 16, 64);
      _tile_dpbssd(0, 4, 6);
      if (MT == 2) {
        _tile_loadd(5, a1 + k, p.K);
        _tile_dpbssd(1, 5, 6);
      }
      if (NT == 2) {
        _tile_loadd(7, b1 + k * 16, 64);
        _tile_dpbssd(2, 4, 7);
        if (MT == 2) _tile_dpbssd(3, 5, 7);
      }
    }
    if (g > 0) fold(g - 1);
    int32_t(*c)[256] = Ct[g % 2];
    _tile_stored(0, c[0], 64);
    if (MT == 2) _tile_stored(1, c[1], 64);
    if (NT == 2) _tile_stored(2, c[2], 64);
    if (MT == 2 && NT == 2) _tile_stored(3, c[3], 64);
  }
  fold(p.G - 1);
  for (int nt = 0; nt < NT; ++nt)
    for (int mt = 0; mt < MT; ++mt) write_rows(p, fa[2 * nt + mt], m0 + 16 * mt, (nb + nt) * 16);
}

// One activation tile (rows m0 .. m0 + 15) x NT column blocks, two groups at a time: group g
// in C tiles 0 / 2 (A in tmm4), group g + 1 in tiles 1 / 3 (A in tmm5), so four accumulation
// chains are in flight. With one group at a time (block<1, NT>) the chain zero -> tdpbssd ->
// tdpbssd -> store of each group bounded M <= 16 (2-core SPR VM, 4096x4096 g128: 447 us hot).
template <int NT>
LOWBIT_DA8W4_AMX_TARGET static void block16(const Args& p, int64_t m0, int64_t nb, const int8_t* bw) {
  alignas(64) int32_t Ct[4][256];
  alignas(64) float fa[2][256];
  std::memset(fa, 0, sizeof(fa));
  const int8_t* a = p.xa + m0 * p.K;
  const int8_t* b1 = bw + 16 * p.K;
  for (int64_t g = 0; g < p.G; g += 2) {
    const bool two = g + 1 < p.G;
    _tile_zero(0);
    if (NT == 2) _tile_zero(2);
    if (two) {
      _tile_zero(1);
      if (NT == 2) _tile_zero(3);
    }
    for (int64_t k = g * p.gs; k < (g + 1) * p.gs; k += p.ks) {
      _tile_loadd(4, a + k, p.K);
      _tile_loadd(6, bw + k * 16, 64);
      _tile_dpbssd(0, 4, 6);
      if (NT == 2) {
        _tile_loadd(7, b1 + k * 16, 64);
        _tile_dpbssd(2, 4, 7);
      }
    }
    if (two) {
      for (int64_t k = (g + 1) * p.gs; k < (g + 2) * p.gs; k += p.ks) {
        _tile_loadd(5, a + k, p.K);
        _tile_loadd(6, bw + k * 16, 64);
        _tile_dpbssd(1, 5, 6);
        if (NT == 2) {
          _tile_loadd(7, b1 + k * 16, 64);
          _tile_dpbssd(3, 5, 7);
        }
      }
    }
    _tile_stored(0, Ct[0], 64);
    if (NT == 2) _tile_stored(2, Ct[2], 64);
    for (int nt = 0; nt < NT; ++nt) fold_group(Ct[2 * nt], p.ws + ((nb + nt) * p.G + g) * 16, fa[nt]);
    if (two) {
      _tile_stored(1, Ct[1], 64);
      if (NT == 2) _tile_stored(3, Ct[3], 64);
      for (int nt = 0; nt < NT; ++nt) fold_group(Ct[2 * nt + 1], p.ws + ((nb + nt) * p.G + g + 1) * 16, fa[nt]);
    }
  }
  for (int nt = 0; nt < NT; ++nt) write_rows(p, fa[nt], m0, (nb + nt) * 16);
}

// Row m of the activation copy: the codes as signed bytes a - 128.
LOWBIT_DA8W4_AMX_TARGET static void flip_row(const uint8_t* a, int64_t K, int8_t* xa) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) _mm512_storeu_si512(xa + k, _mm512_xor_si512(_mm512_loadu_si512(a + k), flip));
  for (; k < K; ++k) xa[k] = static_cast<int8_t>(a[k] ^ 0x80);
}

static void prepare_activations(const uint8_t* a, const int32_t* za, int64_t M, int64_t Mp, int64_t K, int8_t* xa,
                                int32_t* zc) {
  at::parallel_for(0, M, std::max<int64_t>(1, 262144 / K), [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      flip_row(a + m * K, K, xa + m * K);
      zc[m] = za[m] - 128;
    }
  });
  std::memset(xa + M * K, 0, (Mp - M) * K);
  for (int64_t m = M; m < Mp; ++m) zc[m] = 0;
}
#endif

at::Tensor da8w4_amx_gemm(const at::Tensor& codes, const at::Tensor& ascale, const at::Tensor& azp,
                          const at::Tensor& qdata, const at::Tensor& scale, const at::Tensor& zero_point,
                          const at::Tensor& qsum, int64_t group_size, bool out_bf16) {
  TORCH_CHECK(amx_ok(), "da8w4_amx_gemm: this CPU / kernel has no usable AMX-INT8");
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.dim() == 2 && codes.is_contiguous(),
              "da8w4_amx_gemm: codes must be contiguous uint8 [M, K]");
  const int64_t M = codes.size(0), K = codes.size(1), gs = group_size;
  TORCH_CHECK(gs > 0 && gs % 32 == 0 && gs <= 2048 && K % gs == 0, "da8w4_amx_gemm: needs a group size that is "
              "a multiple of 32, at most 2048, and divides K, got group_size=", gs, ", K=", K);
  TORCH_CHECK(qdata.scalar_type() == at::kByte && qdata.dim() == 3 && qdata.size(1) * 8 == K && qdata.size(2) == 64 &&
                  qdata.is_contiguous(),
              "da8w4_amx_gemm: qdata must be contiguous uint8 [N/16, K/8, 64] with codes' K");
  const int64_t NB = qdata.size(0), N = NB * 16, G = K / gs;
  auto check_param = [&](const at::Tensor& t, at::ScalarType dt, const char* name) {
    TORCH_CHECK(t.scalar_type() == dt && t.is_contiguous() && t.numel() == NB * G * 16, "da8w4_amx_gemm: ", name,
                " must be contiguous ", dt, " [N/16, G, 16]");
  };
  check_param(scale, at::kFloat, "scale");
  check_param(zero_point, at::kByte, "zero_point");
  check_param(qsum, at::kInt, "qsum");
  TORCH_CHECK(ascale.scalar_type() == at::kFloat && ascale.is_contiguous() && ascale.numel() == M &&
                  azp.scalar_type() == at::kInt && azp.is_contiguous() && azp.numel() == M,
              "da8w4_amx_gemm: ascale / azp must be contiguous float32 / int32 [M]");
  at::Tensor y = at::empty({M, N}, codes.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  if (M == 0 || N == 0) return y;
#if LOWBIT_AMX
  const int64_t Mp = (M + 15) / 16 * 16;
  at::Tensor xa_t = at::empty({Mp * K + 64}, codes.options().dtype(at::kChar));
  int8_t* xa = reinterpret_cast<int8_t*>((reinterpret_cast<uintptr_t>(xa_t.data_ptr<int8_t>()) + 63) &
                                         ~static_cast<uintptr_t>(63));
  std::vector<int32_t> zc(Mp);
  std::vector<float> R(N);
  prepare_activations(codes.data_ptr<uint8_t>(), azp.data_ptr<int32_t>(), M, Mp, K, xa, zc.data());
  Args p{};
  p.xa = xa;
  p.zc = zc.data();
  p.sa = ascale.data_ptr<float>();
  p.ws = scale.data_ptr<float>();
  p.wq = qsum.data_ptr<int32_t>();
  p.R = R.data();
  p.yf = out_bf16 ? nullptr : y.data_ptr<float>();
  p.yb = out_bf16 ? reinterpret_cast<uint16_t*>(y.data_ptr<c10::BFloat16>()) : nullptr;
  p.M = M;
  p.N = N;
  p.K = K;
  p.G = G;
  p.gs = gs;
  p.ks = gs % 64 == 0 ? 64 : 32;
  const uint8_t* wp = qdata.data_ptr<uint8_t>();
  const uint8_t* wz = zero_point.data_ptr<uint8_t>();
  const int64_t pairs = (NB + 1) / 2;
  // Column pairs per cache block: up to kChunkBytes of B operand, and at least one block per thread.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_chunk =
      std::max<int64_t>(1, std::min(kChunkBytes / (32 * K), (pairs + threads - 1) / threads));
  const int64_t chunks = (pairs + per_chunk - 1) / per_chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    configure_tiles(p.ks);
    int8_t* bw = scratch<int8_t>(per_chunk * 32 * K);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t p0 = c * per_chunk, p1 = std::min(pairs, p0 + per_chunk);
      const int64_t nb0 = 2 * p0, nb1 = std::min(NB, 2 * p1);
      unpack_blocks(p, wp, wz, nb0, nb1 - nb0, bw);
      for (int64_t mb = 0; mb < Mp; mb += kMBlock) {
        const int64_t me = std::min(Mp, mb + kMBlock);
        for (int64_t nb = nb0; nb < nb1; nb += 2) {
          const int8_t* b = bw + (nb - nb0) * 16 * K;
          const bool two = nb + 1 < nb1;
          for (int64_t m0 = mb; m0 < me; m0 += 32) {
            const bool mt2 = m0 + 16 < me;
            if (mt2 && two) block<2, 2>(p, m0, nb, b);
            else if (mt2) block<2, 1>(p, m0, nb, b);
            else if (two) block16<2>(p, m0, nb, b);
            else block16<1>(p, m0, nb, b);
          }
        }
      }
    }
    lowbit_amx::release();
  });
#endif
  return y;
}

}  // namespace lowbit_da8w4_amx

TORCH_LIBRARY_FRAGMENT(lowbit_ext, m) {
  m.def(
      "da8w4_amx_gemm(Tensor codes, Tensor ascale, Tensor azp, Tensor qdata, Tensor scale, Tensor zero_point, "
      "Tensor qsum, int group_size, bool out_bf16) -> Tensor");
  m.def("da8w4_amx_available() -> bool", &lowbit_da8w4_amx::da8w4_amx_available);
}

TORCH_LIBRARY_IMPL(lowbit_ext, CPU, m) { m.impl("da8w4_amx_gemm", &lowbit_da8w4_amx::da8w4_amx_gemm); }
