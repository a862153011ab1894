// Exact int8 x int8 GEMM on AMX-INT8 tiles for lowbit's int8 dynamic linear, reading the
// weight codes in place (row-major [N, K], as Int8Tensor stores them):
//
//   int8_amx_gemm(xq int8 [M, K], q int8 [N, K], xs fp32 [M], ws fp32 [N], out_bf16)
//       -> [M, N] fp32 (bf16 with out_bf16) = float(sum_k xq[m, k] q[n, k]) * xs[m] * ws[n]
//
// Why: the u8s8 brgemm path (wo_gemm_cpu.cpp) converts each weight block to the VNNI-4
// layout per call and calls oneDNN's ukernel per 32-row x 64-column block; on the small
// layers of a 0.1-1B model that call overhead made int8 dynamic slower than bf16 F.linear at
// prefill (SmolLM2's 960x576 at M = 512, 2-core SPR VM: 441 us vs 231). Here the product is
// computed transposed, C^T = q xq^T, with `tdpbssd` (signed x signed bytes, exact int32): the
// A operand is the weight itself (16 rows x 64 bytes straight from q, no conversion), the B
// operand the activations' 4-byte k groups transposed once per call ([K/4][Mp][4]), and a
// 2 x 2 block of C tiles (32 weight rows x 32 activation rows) reuses each loaded tile twice.
// The epilogue transposes each 16 x 16 int32 tile in registers and writes the scaled rows.
//
// Serves K % 64 == 0 and N % 16 == 0 (the tile's k step and height; ops/cpu.py sends other
// shapes to other paths), any M (padded to 32 with zero rows in the transposed copy).
// Exact: int32 sums of int8 products, as the other int8 dynamic kernels.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "amx_util.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace lowbit_int8_amx {

constexpr int64_t kPairChunk = 8;  // weight-row pairs (32 rows each) per cache block
constexpr int64_t kMBlock = 64;    // activation rows per cache block (a multiple of 32)

static bool amx_ok() {
#if LOWBIT_AMX
  static const bool ok = lowbit_amx::detect(/*need_bf16=*/false, /*need_int8=*/true);
  return ok;
#else
  return false;
#endif
}

bool int8_amx_available() { return amx_ok(); }

#if LOWBIT_AMX
#define LOWBIT_I8AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-int8")))

// tmm0-3: C (16 x 16 int32), tmm4-5: A (16 weight rows x 64 bytes), tmm6-7: B (16 k-quads x
// 16 activation rows x 4 bytes).
LOWBIT_I8AMX_TARGET static void configure_tiles() {
  lowbit_amx::TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  lowbit_amx::load_config(cfg);
}

// Rows m0 .. m0 + 15 of y (those < M) from one C^T tile (Ct: [16 n][16 m] int32, row stride
// 16): y[m, n0 + j] = float(Ct[j][m]) * xs[m] * ws[n0 + j].
LOWBIT_I8AMX_TARGET static void write_tile(const int32_t* Ct, int64_t m0, int64_t M, int64_t n0, int64_t N,
                                           const float* xs, const float* ws, float* yf, uint16_t* yb) {
  __m512 v[16];
  for (int j = 0; j < 16; ++j) v[j] = _mm512_castsi512_ps(_mm512_loadu_si512(Ct + 16 * j));
  lowbit_amx::transpose16_ps(v);  // v[m]: the 16 columns of activation row m0 + m
  const __m512 w = _mm512_loadu_ps(ws + n0);
  for (int64_t m = 0; m < 16 && m0 + m < M; ++m) {
    const __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_castps_si512(v[m])),
                                                 _mm512_set1_ps(xs[m0 + m])), w);
    if (yf) {
      _mm512_storeu_ps(yf + (m0 + m) * N + n0, f);
    } else {
      const __m256bh h = _mm512_cvtneps_pbh(f);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(yb + (m0 + m) * N + n0), reinterpret_cast<const __m256i&>(h));
    }
  }
}

// xt[kq][m] = the 4-byte group kq of activation row m (xw: M rows of KQ words; xt: KQ rows of
// Mp words, rows past M left zero), 16 x 16 words at a time through registers, the last
// partial block of rows word by word.
LOWBIT_I8AMX_TARGET static void transpose_activations(const uint32_t* xw, int64_t M, int64_t KQ, int64_t Mp,
                                                      uint32_t* xt) {
  const int64_t mv = M / 16 * 16;
  for (int64_t m0 = 0; m0 < mv; m0 += 16)
    for (int64_t k0 = 0; k0 < KQ; k0 += 16) {  // KQ % 16 == 0 (K % 64 == 0)
      __m512 v[16];
      for (int i = 0; i < 16; ++i) v[i] = _mm512_castsi512_ps(_mm512_loadu_si512(xw + (m0 + i) * KQ + k0));
      lowbit_amx::transpose16_ps(v);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(xt + (k0 + i) * Mp + m0, _mm512_castps_si512(v[i]));
    }
  for (int64_t m = mv; m < M; ++m)
    for (int64_t kq = 0; kq < KQ; ++kq) xt[kq * Mp + m] = xw[m * KQ + kq];
}

// NT weight-row tiles (1 or 2) starting at row n0 against the pairs of activation tiles in
// rows [mb, me) (multiples of 32).
template <int NT>
LOWBIT_I8AMX_TARGET static void rows_amx(const int8_t* q, int64_t K, int64_t n0, const uint8_t* xt, int64_t Mp,
                                         int64_t mb, int64_t me, int64_t M, int64_t N, const float* xs,
                                         const float* ws, int32_t* Ct, float* yf, uint16_t* yb) {
  const int8_t* a0 = q + n0 * K;
  const int8_t* a1 = q + (n0 + 16) * K;
  for (int64_t m0 = mb; m0 < me; m0 += 32) {
    _tile_zero(0);
    _tile_zero(1);
    if (NT == 2) {
      _tile_zero(2);
      _tile_zero(3);
    }
    for (int64_t k = 0; k < K; k += 64) {
      const uint8_t* b = xt + ((k / 4) * Mp + m0) * 4;  // 16 k-quad rows of Mp * 4 bytes
      _tile_loadd(4, a0 + k, K);
      _tile_loadd(6, b, Mp * 4);
      _tile_loadd(7, b + 64, Mp * 4);
      _tile_dpbssd(0, 4, 6);
      _tile_dpbssd(1, 4, 7);
      if (NT == 2) {
        _tile_loadd(5, a1 + k, K);
        _tile_dpbssd(2, 5, 6);
        _tile_dpbssd(3, 5, 7);
      }
    }
    _tile_stored(0, Ct, 64);
    _tile_stored(1, Ct + 256, 64);
    write_tile(Ct, m0, M, n0, N, xs, ws, yf, yb);
    write_tile(Ct + 256, m0 + 16, M, n0, N, xs, ws, yf, yb);
    if (NT == 2) {
      _tile_stored(2, Ct, 64);
      _tile_stored(3, Ct + 256, 64);
      write_tile(Ct, m0, M, n0 + 16, N, xs, ws, yf, yb);
      write_tile(Ct + 256, m0 + 16, M, n0 + 16, N, xs, ws, yf, yb);
    }
  }
}
#endif

at::Tensor int8_amx_gemm(const at::Tensor& xq, const at::Tensor& q, const at::Tensor& xs, const at::Tensor& ws,
                         bool out_bf16) {
  TORCH_CHECK(amx_ok(), "int8_amx_gemm: this CPU / kernel has no usable AMX-INT8");
  TORCH_CHECK(xq.scalar_type() == at::kChar && xq.dim() == 2 && xq.is_contiguous(),
              "int8_amx_gemm: xq must be contiguous int8 [M, K]");
  TORCH_CHECK(q.scalar_type() == at::kChar && q.dim() == 2 && q.is_contiguous() && q.size(1) == xq.size(1),
              "int8_amx_gemm: q must be contiguous int8 [N, K] with xq's K");
  const int64_t M = xq.size(0), K = xq.size(1), N = q.size(0);
  TORCH_CHECK(K % 64 == 0 && N % 16 == 0, "int8_amx_gemm: needs K % 64 == 0 and N % 16 == 0");
  TORCH_CHECK(xs.scalar_type() == at::kFloat && xs.is_contiguous() && xs.numel() == M &&
                  ws.scalar_type() == at::kFloat && ws.is_contiguous() && ws.numel() == N,
              "int8_amx_gemm: xs / ws must be contiguous float32 [M] / [N]");
  at::Tensor y = at::empty({M, N}, xq.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  if (M == 0 || N == 0) return y;
#if LOWBIT_AMX
  // The activations' 4-byte k groups transposed: xt[kq][m] = xq[m, 4 kq .. 4 kq + 3], M padded to 32.
  const int64_t Mp = (M + 31) / 32 * 32, KQ = K / 4;
  std::vector<uint32_t> xt(KQ * Mp, 0u);
  transpose_activations(reinterpret_cast<const uint32_t*>(xq.data_ptr<int8_t>()), M, KQ, Mp, xt.data());
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* xsp = xs.data_ptr<float>();
  const float* wsp = ws.data_ptr<float>();
  float* yf = out_bf16 ? nullptr : y.data_ptr<float>();
  uint16_t* yb = out_bf16 ? reinterpret_cast<uint16_t*>(y.data_ptr<c10::BFloat16>()) : nullptr;
  const uint8_t* xtp = reinterpret_cast<const uint8_t*>(xt.data());
  const int64_t pairs = N / 32, odd = (N % 32) / 16;
  // Cache blocking: a task walks chunks of kPairChunk weight-row pairs (256 rows: 1 MiB at
  // K = 4096, L2) and, per chunk, blocks of kMBlock activation rows (their transposed copy,
  // 256 KiB at K = 4096, L2): each weight byte leaves DRAM once and each activation block is
  // re-read from L2 once per pair. Without the blocking every pair re-read all of the
  // transposed activations (11008x4096 at M = 256, 2 threads: 12.6 ms, brgemm 7.9).
  at::parallel_for(0, pairs + odd, 1, [&](int64_t p0, int64_t p1) {
    configure_tiles();
    alignas(64) int32_t Ct[512];
    for (int64_t c0 = p0; c0 < p1; c0 += kPairChunk) {
      const int64_t c1 = std::min(p1, c0 + kPairChunk);
      for (int64_t mb = 0; mb < Mp; mb += kMBlock) {
        const int64_t me = std::min(Mp, mb + kMBlock);
        for (int64_t p = c0; p < c1; ++p) {
          if (p < pairs) rows_amx<2>(qp, K, 32 * p, xtp, Mp, mb, me, M, N, xsp, wsp, Ct, yf, yb);
          else rows_amx<1>(qp, K, 32 * p, xtp, Mp, mb, me, M, N, xsp, wsp, Ct, yf, yb);
        }
      }
    }
    lowbit_amx::release();
  });
#endif
  return y;
}

}  // namespace lowbit_int8_amx

TORCH_LIBRARY_FRAGMENT(lowbit_ext, m) {
  m.def("int8_amx_gemm(Tensor xq, Tensor q, Tensor xs, Tensor ws, bool out_bf16) -> Tensor");
  m.def("int8_amx_available() -> bool", &lowbit_int8_amx::int8_amx_available);
}

TORCH_LIBRARY_IMPL(lowbit_ext, CPU, m) { m.impl("int8_amx_gemm", &lowbit_int8_amx::int8_amx_gemm); }
