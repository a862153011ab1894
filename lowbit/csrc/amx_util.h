// AMX tile helpers shared by lowbit's tile kernels (int4_amx_cpu.cpp, int8_amx_cpu.cpp):
// run-time detection (CPUID + the Linux kernel's permission for the tile data state), the
// 64-byte tile configuration, and a 16 x 16 transpose of 32-bit words.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LOWBIT_AMX_X86 1
#else
#define LOWBIT_AMX_X86 0
#endif
#if LOWBIT_AMX_X86 && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define LOWBIT_AMX 1
#else
#define LOWBIT_AMX 0
#endif

namespace lowbit_amx {

#if LOWBIT_AMX
// True when CPUID reports AMX-TILE, the requested AMX-BF16 / AMX-INT8 unit and AVX512F/BW
// (every tile kernel's conversion loops), and the kernel grants this process the tile data
// state (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); fails without AMX support).
inline bool detect(bool need_bf16, bool need_int8) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = (d >> 24) & 1, bf16 = (d >> 22) & 1, int8 = (d >> 25) & 1;
  const bool avx512 = ((b >> 16) & 1) && ((b >> 30) & 1);
  if (!tile || !avx512 || (need_bf16 && !bf16) || (need_int8 && !int8)) return false;
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

#define LOWBIT_AMX_TILE_TARGET __attribute__((target("amx-tile")))

// Load `cfg` into the tile configuration register.
LOWBIT_AMX_TILE_TARGET inline void load_config(const TileConfig& cfg) {
  // GCC 12 treats ldtilecfg as not reading its operand and dropped the stores that filled
  // cfg (the tiles then stayed unconfigured: SIGILL at the first tile instruction); the
  // barrier keeps them.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

LOWBIT_AMX_TILE_TARGET inline void release() { _tile_release(); }
#endif

#if LOWBIT_AMX_X86
// In-register transpose of 16 rows of 16 32-bit words: four rounds of interleaving row i
// with row i + 8 (a perfect shuffle; four of them transpose a 16x16 matrix).
__attribute__((target("avx512f"))) inline void transpose16_ps(__m512 v[16]) {
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int round = 0; round < 4; ++round) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_permutex2var_ps(v[i], lo, v[i + 8]);
      t[2 * i + 1] = _mm512_permutex2var_ps(v[i], hi, v[i + 8]);
    }
    for (int i = 0; i < 16; ++i) v[i] = t[i];
  }
}
#endif

}  // namespace lowbit_amx
