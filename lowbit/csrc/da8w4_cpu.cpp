// DA8W4 on x86 CPUs: per-token 8-bit dynamic activations x groupwise int4 weights.
//
// Built lazily by lowbit/ops/_ext.py with torch.utils.cpp_extension.load and registered
// as ops of the `lowbit_ext` namespace; lowbit/ops/cpu.py calls them from the CPU kernel
// of `lowbit::da8w4_linear`. The pure-PyTorch twin of every function here is in
// lowbit/ops/reference.py (`da8w4_quantize_act`, `da8w4_group_acc`, `da8w4_linear`).
//
// Numerics (exactly those of the reference):
//   activations  x[m, k] ~ (a[m, k] - za[m]) * sa[m], a in uint8 [0, 255]
//                asymmetric: za in [0, 255];  symmetric: int8 codes c in [-127, 127]
//                stored as a = c + 128 with za = 128 (same value, one kernel for both).
//                A row holding NaN/Inf gets sa = NaN, so its whole output row is NaN.
//   weights      w[n, k] ~ (q[n, k] - z[n, g]) * s[n, g], q, z in [0, 15], g = k / gs
//   per group    acc[m, n, g] = sum_{k in g} (a - za)(q - z)
//                             = dot(a, q) - z * A[m, g] - za * Qc[n, g]          (int32)
//                with A[m, g] = sum_k a[m, k] (computed while quantizing x) and
//                Qc[n, g] = sum_k q[n, k] - gs * z[n, g] (precomputed at pack time), so
//                the inner loop is a pure u8 x s8 integer dot product.
//   output       y[m, n] = sa[m] * sum_g s[n, g] * float(acc[m, n, g])  (float32, then
//                cast to the activation dtype).
//
// Packed weight layout (lowbit/tensors/int4_vnni_cpu.py packs and unpacks it):
//   qdata uint8 [N / 16, K / 8, 64]: block nb holds columns n = 16 nb + c, c in [0, 16).
//   For each k-octet o (k = 8 o + j, j in [0, 8)), byte c * 4 + (j % 4) holds q[n, 8o + j]
//   in its low nibble for j < 4 and in its high nibble for j >= 4. So the low nibbles of
//   the 64 bytes are the 16 x 4 operand of one `vpdpbusd` (16 int32 lanes, one column
//   each, 4 consecutive k per lane) and the high nibbles the next one; AVX2 reads the
//   same 64 bytes as two 32-byte halves (columns 0-7 and 8-15).
//   scale float32 [N / 16, G, 16], zero_point uint8 [N / 16, G, 16], qsum int32
//   [N / 16, G, 16]: per block, per group, the 16 columns contiguous.
//
// Instruction sets, picked at run time by CPU detection (`__builtin_cpu_supports`):
//   AVX512-VNNI  `_mm512_dpbusd_epi32` (16 columns x 4 k per instruction); tested on
//                AMD Zen4/Zen5 and Intel Sapphire/Emerald Rapids machines.
//   AVX2         `_mm256_maddubs_epi16` (u8 x s8 -> int16 pair sums) then
//                `_mm256_madd_epi16` with ones -> int32. maddubs saturates each pair sum
//                at int16, which cannot happen here: weight codes are 0..15 and
//                activation codes 0..255, so a pair sum is at most 2 * 255 * 15 = 7650.
//                We even add four maddubs results (16 k) in int16 before widening:
//                4 * 7650 = 30600 < 32767, still exact.
//   scalar       plain C++, for CPUs with neither (and as a test oracle).
//   AMX          da8w4_amx_cpu.cpp (AMX-INT8 tiles), for mid and large M.
// Reference for the u8 x s8 dot-product formulation (studied, not copied): oneDNN's and
// FBGEMM's int8 GEMMs, and Intel's intrinsics guide for vpmaddubsw / vpdpbusd.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "vnni_isa.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LOWBIT_X86 1
#else
#define LOWBIT_X86 0
#endif

namespace lowbit_da8w4 {

constexpr int64_t kBlockN = 16;     // output columns per packed block
constexpr int64_t kOctet = 8;       // k values per 64-byte row of a block
constexpr int64_t kBlockBytes = 64; // bytes per (block, k-octet)
constexpr int64_t kMaxMR = 4;       // activation rows per micro-kernel call (scalar, AVX2)
constexpr int64_t kMaxMRVnni = 8;   // ... with AVX512-VNNI
// Blocks of N one task of the large-M path walks for every row tile: 4 blocks x K x 8
// bytes = 128 KiB at K = 4096, which stays in a Zen3 core's 512 KiB L2 while all row
// tiles of the batch stream past it.
constexpr int64_t kChunkBlocks = 4;
// Software prefetch distance into the packed weight stream (bytes ahead of the loads):
// the small-M path is bound by DRAM reads, and running ahead of the hardware prefetcher
// keeps more lines in flight.
constexpr int64_t kPrefetchBytes = 2048;

using lowbit_isa::kAuto, lowbit_isa::kScalar, lowbit_isa::kAvx2, lowbit_isa::kAvx512Vnni;

static int64_t best_isa() { return lowbit_isa::best_vnni_isa(); }

static int64_t resolve_isa(int64_t isa) {
  if (isa == kAuto) return best_isa();
  TORCH_CHECK(isa >= kScalar && isa <= kAvx512Vnni, "lowbit da8w4: isa must be -1 (auto), 0 (scalar), "
              "1 (avx2) or 2 (avx512vnni), got ", isa);
  TORCH_CHECK(isa <= best_isa(), "lowbit da8w4: isa ", isa, " is not supported by this CPU (best: ",
              best_isa(), ")");
  return isa;
}

// ------------------------------------------------------------------ activation quantization

static inline float load_f(const float* p) { return *p; }
static inline float load_f(const c10::BFloat16* p) { return static_cast<float>(*p); }

// A row's scale s, zero point z and code range [lo, hi] from its min mn (<= 0) and max
// mx (>= 0); shared by the scalar and AVX2 rows, so both give the same codes bit for bit.
// Symmetric int8 codes are stored shifted by 128 so both mappings are uint8.
static inline void row_qparams(float mn, float mx, bool symmetric, float& s, float& z, float& lo, float& hi) {
  if (symmetric) {
    s = std::max(-mn, mx) / 127.0f;
    if (s < FLT_EPSILON) s = FLT_EPSILON;
    z = 0.f;
    lo = -127.f;
    hi = 127.f;
  } else {
    s = (mx - mn) / 255.0f;
    if (s < FLT_EPSILON) s = FLT_EPSILON;
    z = std::min(std::max(0.f - std::nearbyint(mn / s), 0.f), 255.f);
    lo = 0.f;
    hi = 255.f;
  }
}

// One row: codes, scale, zero point and per-group code sums (see file comment).
template <typename T>
static void quantize_row(const T* x, int64_t K, int64_t gs, bool symmetric, uint8_t* q, float* scale,
                         int32_t* zp, int32_t* gsum) {
  float mn = 0.f, mx = 0.f;  // min clamped to <= 0 and max to >= 0 (zero stays exact)
  bool finite = true;
  for (int64_t k = 0; k < K; ++k) {
    const float v = load_f(x + k);
    finite &= std::isfinite(v);
    mn = std::min(mn, v);
    mx = std::max(mx, v);
  }
  const int64_t G = K / gs;
  if (!finite) {
    // Defined result: the row's output is NaN (scale NaN), codes are 0.
    std::memset(q, 0, K);
    *scale = NAN;
    *zp = 0;
    for (int64_t g = 0; g < G; ++g) gsum[g] = 0;
    return;
  }
  float s, z, lo, hi;
  row_qparams(mn, mx, symmetric, s, z, lo, hi);
  const int32_t shift = symmetric ? 128 : 0;  // symmetric codes are stored shifted (see row_qparams)
  const float inv = 1.0f / s;  // codes round x * (1 / s), as the reference does (a multiply, not a divide)
  for (int64_t g = 0; g < G; ++g) {
    int32_t sum = 0;
    for (int64_t k = g * gs; k < (g + 1) * gs; ++k) {
      const float c = std::min(std::max(std::nearbyint(load_f(x + k) * inv) + z, lo), hi);
      const int32_t code = static_cast<int32_t>(c) + shift;
      q[k] = static_cast<uint8_t>(code);
      sum += code;
    }
    gsum[g] = sum;
  }
  *scale = s;
  *zp = static_cast<int32_t>(z) + shift;
}

#if LOWBIT_X86
__attribute__((target("avx2,fma"))) static inline __m256 load8_f(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma"))) static inline __m256 load8_f(const c10::BFloat16* p) {
  // bf16 -> fp32 is exact: the 16 bits become the top half of the float.
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// AVX2 twin of quantize_row: the same IEEE operations (multiply by 1 / s, round-half-even,
// clamps) on 8 lanes, so its codes equal the scalar ones bit for bit.
template <typename T>
__attribute__((target("avx2,fma"))) static void quantize_row_avx2(const T* x, int64_t K, int64_t gs, bool symmetric,
                                                                   uint8_t* q, float* scale, int32_t* zp,
                                                                   int32_t* gsum) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 vmn = zero, vmx = zero;
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (int64_t k = 0; k < K; k += 8) {
    const __m256 v = load8_f(x + k);
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(_mm256_sub_ps(v, v), zero, _CMP_EQ_OQ));  // v - v == 0 iff finite
    vmn = _mm256_min_ps(vmn, v);
    vmx = _mm256_max_ps(vmx, v);
  }
  if (_mm256_movemask_ps(ok) != 0xFF) {
    quantize_row(x, K, gs, symmetric, q, scale, zp, gsum);  // writes the NaN-row result
    return;
  }
  alignas(32) float tmn[8], tmx[8];
  _mm256_store_ps(tmn, vmn);
  _mm256_store_ps(tmx, vmx);
  float mn = 0.f, mx = 0.f;
  for (int i = 0; i < 8; ++i) {
    mn = std::min(mn, tmn[i]);
    mx = std::max(mx, tmx[i]);
  }
  float s, z, lo, hi;
  row_qparams(mn, mx, symmetric, s, z, lo, hi);
  const int32_t shift = symmetric ? 128 : 0;  // symmetric codes are stored shifted (see row_qparams)
  const __m256 vs = _mm256_set1_ps(1.0f / s), vz = _mm256_set1_ps(z), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  const __m256i vshift = _mm256_set1_epi32(shift);
  // Byte 0 of each int32 lane, per 128-bit lane.
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1,
                                        -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const int64_t G = K / gs;
  for (int64_t g = 0; g < G; ++g) {
    __m256i vsum = _mm256_setzero_si256();
    for (int64_t k = g * gs; k < (g + 1) * gs; k += 8) {
      const __m256 r = _mm256_round_ps(_mm256_mul_ps(load8_f(x + k), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256 c = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, vz), vlo), vhi);
      const __m256i code = _mm256_add_epi32(_mm256_cvtps_epi32(c), vshift);
      vsum = _mm256_add_epi32(vsum, code);
      const __m256i b = _mm256_shuffle_epi8(code, pick);
      const __m128i bytes = _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), bytes);
    }
    alignas(32) int32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), vsum);
    gsum[g] = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
  }
  *scale = s;
  *zp = static_cast<int32_t>(z) + shift;
}

__attribute__((target("avx512f,avx512bw"))) static inline __m512 load16_f(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f,avx512bw"))) static inline __m512 load16_f(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// AVX512 twin of quantize_row (16 lanes; K is a multiple of the group size, itself a
// multiple of 16): same operations, same codes bit for bit. Two passes over the row, the
// second from L1/L2 (a row of 4096 bf16 is 8 KiB).
template <typename T>
__attribute__((target("avx512f,avx512bw"))) static void quantize_row_avx512(const T* x, int64_t K, int64_t gs,
                                                                         bool symmetric, uint8_t* q, float* scale,
                                                                         int32_t* zp, int32_t* gsum) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 vmn = zero, vmx = zero;
  __mmask16 ok = 0xFFFF;
  for (int64_t k = 0; k < K; k += 16) {
    const __m512 v = load16_f(x + k);
    ok &= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), zero, _CMP_EQ_OQ);  // v - v == 0 iff finite
    vmn = _mm512_min_ps(vmn, v);
    vmx = _mm512_max_ps(vmx, v);
  }
  if (ok != 0xFFFF) {
    quantize_row(x, K, gs, symmetric, q, scale, zp, gsum);  // writes the NaN-row result
    return;
  }
  // min/max of finite values are exact whatever the reduction order.
  const float mn = std::min(0.f, _mm512_reduce_min_ps(vmn)), mx = std::max(0.f, _mm512_reduce_max_ps(vmx));
  float s, z, lo, hi;
  row_qparams(mn, mx, symmetric, s, z, lo, hi);
  const int32_t shift = symmetric ? 128 : 0;
  const __m512 vinv = _mm512_set1_ps(1.0f / s), vz = _mm512_set1_ps(z), vlo = _mm512_set1_ps(lo),
               vhi = _mm512_set1_ps(hi);
  const __m512i vshift = _mm512_set1_epi32(shift);
  const int64_t G = K / gs;
  for (int64_t g = 0; g < G; ++g) {
    __m512i vsum = _mm512_setzero_si512();
    for (int64_t k = g * gs; k < (g + 1) * gs; k += 16) {
      const __m512 r =
          _mm512_roundscale_ps(_mm512_mul_ps(load16_f(x + k), vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512 c = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, vz), vlo), vhi);
      const __m512i code = _mm512_add_epi32(_mm512_cvtps_epi32(c), vshift);
      vsum = _mm512_add_epi32(vsum, code);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_cvtepi32_epi8(code));
    }
    gsum[g] = _mm512_reduce_add_epi32(vsum);
  }
  *scale = s;
  *zp = static_cast<int32_t>(z) + shift;
}
#endif

struct ActQ {
  at::Tensor codes;  // uint8 [M, K]
  at::Tensor scale;  // float32 [M]
  at::Tensor zp;     // int32 [M]
  at::Tensor gsum;   // int32 [M, G]
};

static ActQ quantize_act(const at::Tensor& x, int64_t gs, bool symmetric, int64_t isa) {
  const int64_t M = x.size(0), K = x.size(1);
  ActQ r;
  r.codes = at::empty({M, K}, x.options().dtype(at::kByte));
  r.scale = at::empty({M}, x.options().dtype(at::kFloat));
  r.zp = at::empty({M}, x.options().dtype(at::kInt));
  r.gsum = at::empty({M, K / gs}, x.options().dtype(at::kInt));
  uint8_t* q = r.codes.data_ptr<uint8_t>();
  float* s = r.scale.data_ptr<float>();
  int32_t* z = r.zp.data_ptr<int32_t>();
  int32_t* gsum = r.gsum.data_ptr<int32_t>();
  const int64_t G = K / gs;
  // ~16 rows of 4096 per task keeps the fork cost below the work.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(K, 1));
  auto rows = [&](const auto* xp) {
    at::parallel_for(0, M, grain, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        const auto* xr = xp + m * K;
        uint8_t* qr = q + m * K;
        int32_t* gr = gsum + m * G;
#if LOWBIT_X86
        // K is a multiple of the group size, itself a multiple of 16: whole vector steps.
        if (isa >= kAvx512Vnni) {
          quantize_row_avx512(xr, K, gs, symmetric, qr, s + m, z + m, gr);
          continue;
        }
        if (isa >= kAvx2) {
          quantize_row_avx2(xr, K, gs, symmetric, qr, s + m, z + m, gr);
          continue;
        }
#endif
        quantize_row(xr, K, gs, symmetric, qr, s + m, z + m, gr);
      }
    });
  };
  if (x.scalar_type() == at::kFloat) rows(x.data_ptr<float>());
  else rows(x.data_ptr<c10::BFloat16>());
  return r;
}

// ------------------------------------------------------------------ GEMM

struct Args {
  const uint8_t* a;      // activation codes [M, K]
  const uint8_t* as8;    // AVX512-VNNI only: the codes XOR 0x80 (signed a - 128); a is null then
  const int32_t* gsum;   // [M, G]
  const int32_t* azp;    // [M]
  const float* ascale;   // [M]
  const uint8_t* w;      // packed [N/16, K/8, 64]
  const float* ws;       // [N/16, G, 16]
  const uint8_t* wz;     // [N/16, G, 16]
  const int32_t* wq;     // [N/16, G, 16]
  float* out;            // [M, N]       (normal mode)
  int32_t* acc_out;      // [M, N, G]    (test hook mode)
  int64_t M, N, K, G, gs;
};

static inline int32_t load4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Writes one group's compensated int32 accumulators (hook) for 8 or 16 columns.
static inline void store_hook(const Args& p, int64_t m, int64_t n0, int64_t g, const int32_t* vals, int count) {
  for (int c = 0; c < count; ++c) p.acc_out[((m * p.N) + n0 + c) * p.G + g] = vals[c];
}

template <int MR, bool HOOK>
static void ukernel_scalar(const Args& p, int64_t m0, int64_t nb) {
  const uint8_t* wb = p.w + nb * (p.K / kOctet) * kBlockBytes;
  float facc[MR][kBlockN] = {};
  for (int64_t g = 0; g < p.G; ++g) {
    int32_t dot[MR][kBlockN] = {};
    for (int64_t k = g * p.gs; k < (g + 1) * p.gs; ++k) {
      const uint8_t* row = wb + (k / kOctet) * kBlockBytes + (k % 4);
      const int nib_shift = (k % kOctet) < 4 ? 0 : 4;
      for (int c = 0; c < kBlockN; ++c) {
        const int32_t qv = (row[c * 4] >> nib_shift) & 0x0F;
        for (int m = 0; m < MR; ++m) dot[m][c] += qv * static_cast<int32_t>(p.a[(m0 + m) * p.K + k]);
      }
    }
    const int64_t off = (nb * p.G + g) * kBlockN;
    for (int m = 0; m < MR; ++m) {
      const int32_t A = p.gsum[(m0 + m) * p.G + g];
      const int32_t za = p.azp[m0 + m];
      int32_t inner[kBlockN];
      for (int c = 0; c < kBlockN; ++c) {
        inner[c] = dot[m][c] - static_cast<int32_t>(p.wz[off + c]) * A - za * p.wq[off + c];
        facc[m][c] = std::fma(p.ws[off + c], static_cast<float>(inner[c]), facc[m][c]);
      }
      if (HOOK) store_hook(p, m0 + m, nb * kBlockN, g, inner, kBlockN);
    }
  }
  if (!HOOK) {
    for (int m = 0; m < MR; ++m)
      for (int c = 0; c < kBlockN; ++c) p.out[(m0 + m) * p.N + nb * kBlockN + c] = facc[m][c] * p.ascale[m0 + m];
  }
}

#if LOWBIT_X86
template <int MR, bool HOOK>
__attribute__((target("avx2,fma"))) static void ukernel_avx2(const Args& p, int64_t m0, int64_t nb) {
  const uint8_t* wb = p.w + nb * (p.K / kOctet) * kBlockBytes;
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const uint8_t* arow[MR];
  __m256 facc[MR][2];
  for (int m = 0; m < MR; ++m) {
    arow[m] = p.a + (m0 + m) * p.K;
    facc[m][0] = _mm256_setzero_ps();
    facc[m][1] = _mm256_setzero_ps();
  }
  for (int64_t g = 0; g < p.G; ++g) {
    __m256i iacc[MR][2];
    for (int m = 0; m < MR; ++m) iacc[m][0] = iacc[m][1] = _mm256_setzero_si256();
    // 16 k per step (two 64-byte octet rows); group sizes are multiples of 16.
    for (int64_t k = g * p.gs; k < (g + 1) * p.gs; k += 2 * kOctet) {
      const uint8_t* wp = wb + (k / kOctet) * kBlockBytes;
      _mm_prefetch(reinterpret_cast<const char*>(wp + kPrefetchBytes), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(wp + kPrefetchBytes + 64), _MM_HINT_T0);
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));        // cols 0-7, k 0-7
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32));   // cols 8-15, k 0-7
      const __m256i w2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 64));   // cols 0-7, k 8-15
      const __m256i w3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 96));   // cols 8-15, k 8-15
      const __m256i l0 = _mm256_and_si256(w0, mask), h0 = _mm256_and_si256(_mm256_srli_epi16(w0, 4), mask);
      const __m256i l1 = _mm256_and_si256(w1, mask), h1 = _mm256_and_si256(_mm256_srli_epi16(w1, 4), mask);
      const __m256i l2 = _mm256_and_si256(w2, mask), h2 = _mm256_and_si256(_mm256_srli_epi16(w2, 4), mask);
      const __m256i l3 = _mm256_and_si256(w3, mask), h3 = _mm256_and_si256(_mm256_srli_epi16(w3, 4), mask);
      for (int m = 0; m < MR; ++m) {
        const __m256i b0 = _mm256_set1_epi32(load4(arow[m] + k));
        const __m256i b1 = _mm256_set1_epi32(load4(arow[m] + k + 4));
        const __m256i b2 = _mm256_set1_epi32(load4(arow[m] + k + 8));
        const __m256i b3 = _mm256_set1_epi32(load4(arow[m] + k + 12));
        // int16 sums of 4 pair sums: <= 4 * 7650 = 30600, no overflow (file comment).
        const __m256i s0 = _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(b0, l0), _mm256_maddubs_epi16(b1, h0)),
                                            _mm256_add_epi16(_mm256_maddubs_epi16(b2, l2), _mm256_maddubs_epi16(b3, h2)));
        const __m256i s1 = _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(b0, l1), _mm256_maddubs_epi16(b1, h1)),
                                            _mm256_add_epi16(_mm256_maddubs_epi16(b2, l3), _mm256_maddubs_epi16(b3, h3)));
        iacc[m][0] = _mm256_add_epi32(iacc[m][0], _mm256_madd_epi16(s0, ones));
        iacc[m][1] = _mm256_add_epi32(iacc[m][1], _mm256_madd_epi16(s1, ones));
      }
    }
    const int64_t off = (nb * p.G + g) * kBlockN;
    for (int h = 0; h < 2; ++h) {
      const __m256i zv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.wz + off + 8 * h)));
      const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.wq + off + 8 * h));
      const __m256 sv = _mm256_loadu_ps(p.ws + off + 8 * h);
      for (int m = 0; m < MR; ++m) {
        const __m256i A = _mm256_set1_epi32(p.gsum[(m0 + m) * p.G + g]);
        const __m256i za = _mm256_set1_epi32(p.azp[m0 + m]);
        const __m256i inner = _mm256_sub_epi32(_mm256_sub_epi32(iacc[m][h], _mm256_mullo_epi32(zv, A)),
                                               _mm256_mullo_epi32(qv, za));
        if (HOOK) {
          alignas(32) int32_t tmp[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), inner);
          store_hook(p, m0 + m, nb * kBlockN + 8 * h, g, tmp, 8);
        } else {
          facc[m][h] = _mm256_fmadd_ps(sv, _mm256_cvtepi32_ps(inner), facc[m][h]);
        }
      }
    }
  }
  if (!HOOK) {
    for (int m = 0; m < MR; ++m) {
      const __m256 sa = _mm256_set1_ps(p.ascale[m0 + m]);
      float* o = p.out + (m0 + m) * p.N + nb * kBlockN;
      _mm256_storeu_ps(o, _mm256_mul_ps(facc[m][0], sa));
      _mm256_storeu_ps(o + 8, _mm256_mul_ps(facc[m][1], sa));
    }
  }
}

// AVX512-VNNI: compiled everywhere, run only where the CPU reports avx512vnni.
// MR rows x 16 columns. The operands are swapped against the formulation above: the weight
// codes (0..15) are vpdpbusd's unsigned operand and the activations its signed one, as
// s = a - 128 (p.as8: the call's own codes XORed with 0x80 in place by run_gemm), because only the
// signed operand can be broadcast from memory inside the instruction (`m32{1to16}`); a
// separate vpbroadcastd per row and octet competes with vpdpbusd for the vector pipes (Zen5,
// 256x4096 g128 hot, M = 256, 1 thread: the old MR = 4 kernel ~2.9 vpdpbusd per ns, this one
// ~4.3, of the 7.35 an independent loop issues; op times minus the ~190 us quantizer). With dot(a, q) = dot(s, q) +
// 128 sum_k q and sum_k q = Qc + gs z, the group's compensation becomes
//     acc = dot(s, q) - z (A - 128 gs) - (za - 128) Qc     (same integers, exact).
// vpdpbusd has a latency of ~8 issue slots (Zen5: 1.09 ns vs 0.136 ns between issues,
// benchmarks/x86_dot_throughput.py), so up to 4 rows keep two chains per row (low nibbles,
// k 0-3 of each octet, and high nibbles, k 4-7), summed at the group's end; the large-M
// path runs MR = 8 tiles (8 chains; every unpacked weight vector feeds 8 rows).
// The dot products are inline asm: GCC copies each intrinsic accumulator through a spare
// register per instruction and does not fold the broadcast.
__attribute__((target("avx512f,avx512vnni"), always_inline)) static inline void dpbusd_bcast(__m512i& acc,
                                                                                         __m512i wq,
                                                                                         const uint8_t* s4) {
  asm("vpdpbusd %[s]%{1to16%}, %[w], %[acc]" : [acc] "+v"(acc) : [w] "v"(wq), [s] "m"(*reinterpret_cast<const int32_t*>(s4)));
}

template <int MR, bool HOOK>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void ukernel_vnni(const Args& p, int64_t m0,
                                                                                int64_t nb) {
  constexpr int NACC = MR <= 4 ? 2 : 1;
  const uint8_t* wb = p.w + nb * (p.K / kOctet) * kBlockBytes;
  const __m512i mask = _mm512_set1_epi8(0x0F);
  const uint8_t* a0 = p.as8 + m0 * p.K;
  const int64_t K = p.K;
  const int32_t bias = 128 * static_cast<int32_t>(p.gs);
  __m512 facc[MR];
  for (int m = 0; m < MR; ++m) facc[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.G; ++g) {
    __m512i iacc[MR][NACC];
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < NACC; ++j) iacc[m][j] = _mm512_setzero_si512();
    const uint8_t* wp = wb + g * (p.gs / kOctet) * kBlockBytes;
    const uint8_t* ap = a0 + g * p.gs;
    for (int64_t o = 0; o < p.gs / kOctet; ++o, wp += kBlockBytes, ap += kOctet) {
      _mm_prefetch(reinterpret_cast<const char*>(wp + kPrefetchBytes), _MM_HINT_T0);
      const __m512i w = _mm512_loadu_si512(wp);
      const __m512i lo = _mm512_and_si512(w, mask);                         // k 0-3 of 16 columns
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), mask);  // k 4-7
      for (int m = 0; m < MR; ++m) {
        dpbusd_bcast(iacc[m][0], lo, ap + m * K);
        dpbusd_bcast(iacc[m][NACC - 1], hi, ap + m * K + 4);
      }
    }
    const int64_t off = (nb * p.G + g) * kBlockN;
    const __m512i zv = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.wz + off)));
    const __m512i qv = _mm512_loadu_si512(p.wq + off);
    const __m512 sv = _mm512_loadu_ps(p.ws + off);
    for (int m = 0; m < MR; ++m) {
      const __m512i dot = NACC == 2 ? _mm512_add_epi32(iacc[m][0], iacc[m][NACC - 1]) : iacc[m][0];
      const __m512i A = _mm512_set1_epi32(p.gsum[(m0 + m) * p.G + g] - bias);
      const __m512i za = _mm512_set1_epi32(p.azp[m0 + m] - 128);
      const __m512i inner =
          _mm512_sub_epi32(_mm512_sub_epi32(dot, _mm512_mullo_epi32(zv, A)), _mm512_mullo_epi32(qv, za));
      if (HOOK) {
        alignas(64) int32_t tmp[16];
        _mm512_store_si512(tmp, inner);
        store_hook(p, m0 + m, nb * kBlockN, g, tmp, 16);
      } else {
        facc[m] = _mm512_fmadd_ps(sv, _mm512_cvtepi32_ps(inner), facc[m]);
      }
    }
  }
  if (!HOOK) {
    for (int m = 0; m < MR; ++m) {
      _mm512_storeu_ps(p.out + (m0 + m) * p.N + nb * kBlockN, _mm512_mul_ps(facc[m], _mm512_set1_ps(p.ascale[m0 + m])));
    }
  }
}
#endif

template <int MR, bool HOOK>
static void ukernel(int64_t isa, const Args& p, int64_t m0, int64_t nb) {
#if LOWBIT_X86
  if (isa == kAvx512Vnni) return ukernel_vnni<MR, HOOK>(p, m0, nb);
  if (isa == kAvx2) return ukernel_avx2<MR, HOOK>(p, m0, nb);
#endif
  ukernel_scalar<MR, HOOK>(p, m0, nb);
}

// Rows per micro-kernel call: 8 with AVX512-VNNI (32 zmm registers hold 8 accumulators
// and 8 float sums), 4 otherwise (AVX2's 16 ymm registers).
static int64_t max_mr(int64_t isa) { return isa == kAvx512Vnni ? kMaxMRVnni : kMaxMR; }

template <bool HOOK>
static void tile(int64_t isa, const Args& p, int64_t m0, int64_t rows, int64_t nb) {
#if LOWBIT_X86
  if (rows > kMaxMR) {  // only with AVX512-VNNI (max_mr)
    switch (rows) {
      case 5: return ukernel_vnni<5, HOOK>(p, m0, nb);
      case 6: return ukernel_vnni<6, HOOK>(p, m0, nb);
      case 7: return ukernel_vnni<7, HOOK>(p, m0, nb);
      default: return ukernel_vnni<8, HOOK>(p, m0, nb);
    }
  }
#endif
  switch (rows) {
    case 1: return ukernel<1, HOOK>(isa, p, m0, nb);
    case 2: return ukernel<2, HOOK>(isa, p, m0, nb);
    case 3: return ukernel<3, HOOK>(isa, p, m0, nb);
    default: return ukernel<4, HOOK>(isa, p, m0, nb);
  }
}

template <bool HOOK>
static void gemm(int64_t isa, const Args& p) {
  const int64_t NB = p.N / kBlockN;
  const int64_t mr = max_mr(isa);
  if (p.M <= mr) {
    // Small M (decode): every packed weight byte is read once and applied to all rows;
    // threads split the N blocks, each streaming a contiguous slice of qdata.
    at::parallel_for(0, NB, 1, [&](int64_t b, int64_t e) {
      for (int64_t nb = b; nb < e; ++nb) tile<HOOK>(isa, p, 0, p.M, nb);
    });
    return;
  }
  // Large M: a task owns kChunkBlocks blocks of N (kept in L2) and runs every row tile
  // of mr rows over them; activations rows are reused across the chunk's blocks.
  const int64_t chunks = (NB + kChunkBlocks - 1) / kChunkBlocks;
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t nb_end = std::min(NB, (ch + 1) * kChunkBlocks);
      for (int64_t m0 = 0; m0 < p.M; m0 += mr) {
        const int64_t rows = std::min(mr, p.M - m0);
        for (int64_t nb = ch * kChunkBlocks; nb < nb_end; ++nb) tile<HOOK>(isa, p, m0, rows, nb);
      }
    }
  });
}

// ------------------------------------------------------------------ op entry points

static void check_inputs(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale,
                         const at::Tensor& zero_point, const at::Tensor& qsum, int64_t gs) {
  TORCH_CHECK(x.dim() == 2, "lowbit da8w4: x must be 2-D [M, K], got ", x.dim(), "-D");
  TORCH_CHECK(x.is_contiguous(), "lowbit da8w4: x must be contiguous; call .contiguous()");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "lowbit da8w4: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(gs > 0 && gs % 16 == 0, "lowbit da8w4: group_size must be a positive multiple of 16, got ", gs);
  TORCH_CHECK(qdata.scalar_type() == at::kByte && qdata.dim() == 3 && qdata.size(2) == kBlockBytes &&
                  qdata.is_contiguous(),
              "lowbit da8w4: qdata must be contiguous uint8 [N/16, K/8, 64], got ", qdata.scalar_type(), " ",
              qdata.sizes());
  const int64_t K = x.size(1);
  TORCH_CHECK(qdata.size(1) * kOctet == K, "lowbit da8w4: x has K=", K, " but qdata holds K=", qdata.size(1) * kOctet);
  TORCH_CHECK(K % gs == 0, "lowbit da8w4: K=", K, " is not a multiple of group_size=", gs);
  const int64_t NB = qdata.size(0), G = K / gs;
  auto check_param = [&](const at::Tensor& t, at::ScalarType dt, const char* name) {
    TORCH_CHECK(t.scalar_type() == dt && t.dim() == 3 && t.size(0) == NB && t.size(1) == G && t.size(2) == kBlockN &&
                    t.is_contiguous(),
                "lowbit da8w4: ", name, " must be contiguous ", dt, " [", NB, ", ", G, ", 16], got ",
                t.scalar_type(), " ", t.sizes());
  };
  check_param(scale, at::kFloat, "scale");
  check_param(zero_point, at::kByte, "zero_point");
  check_param(qsum, at::kInt, "qsum");
}

static Args make_args(const ActQ& aq, const at::Tensor& qdata, const at::Tensor& scale, const at::Tensor& zero_point,
                      const at::Tensor& qsum, int64_t M, int64_t K, int64_t gs) {
  Args p{};
  p.a = aq.codes.data_ptr<uint8_t>();
  p.gsum = aq.gsum.data_ptr<int32_t>();
  p.azp = aq.zp.data_ptr<int32_t>();
  p.ascale = aq.scale.data_ptr<float>();
  p.w = qdata.data_ptr<uint8_t>();
  p.ws = scale.data_ptr<float>();
  p.wz = zero_point.data_ptr<uint8_t>();
  p.wq = qsum.data_ptr<int32_t>();
  p.M = M;
  p.N = qdata.size(0) * kBlockN;
  p.K = K;
  p.gs = gs;
  p.G = K / gs;
  return p;
}

// Both entry points, after check_inputs: quantize the activations and run the GEMM into
// out (float32 [M, N]; with HOOK the int32 group accumulators [M, N, G]).
template <bool HOOK>
static void run_gemm(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale,
                     const at::Tensor& zero_point, const at::Tensor& qsum, int64_t group_size, bool symmetric,
                     int64_t isa, const at::Tensor& out) {
  const int64_t M = x.size(0), K = x.size(1);
  if (M == 0) return;
  const ActQ aq = quantize_act(x, group_size, symmetric, isa);
  Args p = make_args(aq, qdata, scale, zero_point, qsum, M, K, group_size);
  if (isa == kAvx512Vnni) {
    // The VNNI kernel's signed activations (ukernel_vnni), made in place: the codes are this
    // call's own. K % 16 == 0 (check_inputs), so the rows are whole 8-byte words.
    uint8_t* codes = aq.codes.data_ptr<uint8_t>();
    at::parallel_for(0, M * K / 8, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        uint64_t v;
        std::memcpy(&v, codes + 8 * i, 8);
        v ^= 0x8080808080808080ULL;
        std::memcpy(codes + 8 * i, &v, 8);
      }
    });
    p.as8 = codes;
    p.a = nullptr;
  }
  if constexpr (HOOK) {
    p.acc_out = out.data_ptr<int32_t>();
  } else {
    p.out = out.data_ptr<float>();
  }
  gemm<HOOK>(isa, p);
}

at::Tensor da8w4_linear(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale,
                        const at::Tensor& zero_point, const at::Tensor& qsum, int64_t group_size, bool symmetric,
                        int64_t isa) {
  check_inputs(x, qdata, scale, zero_point, qsum, group_size);
  isa = resolve_isa(isa);
  at::Tensor out = at::empty({x.size(0), qdata.size(0) * kBlockN}, x.options().dtype(at::kFloat));
  run_gemm<false>(x, qdata, scale, zero_point, qsum, group_size, symmetric, isa, out);
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

// Test hook: the compensated int32 group accumulators acc[m, n, g] the GEMM computes.
at::Tensor da8w4_group_acc(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale,
                           const at::Tensor& zero_point, const at::Tensor& qsum, int64_t group_size, bool symmetric,
                           int64_t isa) {
  check_inputs(x, qdata, scale, zero_point, qsum, group_size);
  isa = resolve_isa(isa);
  at::Tensor acc = at::zeros({x.size(0), qdata.size(0) * kBlockN, x.size(1) / group_size}, x.options().dtype(at::kInt));
  run_gemm<true>(x, qdata, scale, zero_point, qsum, group_size, symmetric, isa, acc);
  return acc;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> da8w4_quantize_act(const at::Tensor& x, int64_t group_size,
                                                                              bool symmetric, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "lowbit da8w4: x must be contiguous 2-D");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "lowbit da8w4: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(group_size > 0 && group_size % 16 == 0 && x.size(1) % group_size == 0, "lowbit da8w4: K=",
              x.size(1), " must be a multiple of group_size=", group_size, ", itself a multiple of 16");
  ActQ r = quantize_act(x, group_size, symmetric, resolve_isa(isa));
  return {r.codes, r.scale, r.zp, r.gsum};
}

int64_t da8w4_best_isa() { return best_isa(); }

}  // namespace lowbit_da8w4

TORCH_LIBRARY(lowbit_ext, m) {
  m.def(
      "da8w4_linear(Tensor x, Tensor qdata, Tensor scale, Tensor zero_point, Tensor qsum, int group_size, "
      "bool symmetric, int isa=-1) -> Tensor");
  m.def(
      "da8w4_group_acc(Tensor x, Tensor qdata, Tensor scale, Tensor zero_point, Tensor qsum, int group_size, "
      "bool symmetric, int isa=-1) -> Tensor");
  m.def("da8w4_quantize_act(Tensor x, int group_size, bool symmetric, int isa=-1) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("da8w4_best_isa() -> int", &lowbit_da8w4::da8w4_best_isa);
}

TORCH_LIBRARY_IMPL(lowbit_ext, CPU, m) {
  m.impl("da8w4_linear", &lowbit_da8w4::da8w4_linear);
  m.impl("da8w4_group_acc", &lowbit_da8w4::da8w4_group_acc);
  m.impl("da8w4_quantize_act", &lowbit_da8w4::da8w4_quantize_act);
}
