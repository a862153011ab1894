// The instruction-set levels of lowbit's integer CPU kernels (da8w4_cpu.cpp,
// int8_vnni_cpu.cpp), detected once at run time: the .so is built without -march and
// must load on any x86-64 CPU (and compile on others), each loop carrying its own
// __attribute__((target(...))).
#pragma once

#include <cstdint>

namespace lowbit_isa {

enum VnniIsa : int64_t { kAuto = -1, kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2 };

// kAvx512Vnni needs avx512f + avx512bw (masked byte loads) + avx512vnni; kAvx2 needs AVX2 and FMA.
inline int64_t best_vnni_isa() {
#if defined(__x86_64__) || defined(_M_X64)
  static const int64_t isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vnni"))
      return static_cast<int64_t>(kAvx512Vnni);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return static_cast<int64_t>(kAvx2);
    return static_cast<int64_t>(kScalar);
  }();
  return isa;
#else
  return kScalar;
#endif
}

}  // namespace lowbit_isa
