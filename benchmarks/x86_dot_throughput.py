"""Issue rate of the vector instructions lowbit's int4 CPU GEMV loops are built from.

    python3 benchmarks/x86_dot_throughput.py

Why: the AVX512-BF16 loop does 2 MACs per lane per `vdpbf16ps`, the AVX512F loop 1 per
`vfmadd231ps`; which one wins depends on how fast the core issues each (ops/cpu_paths.py
INT4_GEMV_LOOP). Each row times a loop of independent instructions (no dependency between
them beyond each accumulator's own chain; 8 or 24 chains, so latency does not bind where
the issue rate is below 1 per 3 cycles) and a single chain (latency). Needs a C++ compiler;
rows this CPU cannot run are left out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils import cpp_extension

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common as C  # noqa: E402

_SRC = r"""
#include <torch/extension.h>
#include <chrono>
#define R8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define R24(X) R8(X) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)
#define DP(j) "vdpbf16ps %%zmm30, %%zmm31, %%zmm" #j "\n"
#define FZ(j) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #j "\n"
#define FY(j) "vfmadd231ps %%ymm14, %%ymm15, %%ymm" #j "\n"
#define TL(j) "vpternlogd $0xEA, %%zmm30, %%zmm31, %%zmm" #j "\n"
#define VN(j) "vpdpbusd %%zmm30, %%zmm31, %%zmm" #j "\n"
// vpdpbusd with its activation operand broadcast from memory ({1to16}), as lowbit's DA8W4
// and int8 kernels issue it: 8 chains, each with its own 4 bytes.
#define VB(j) "vpdpbusd " #j "*4(%0)%{1to16%}, %%zmm31, %%zmm" #j "\n"
#define TIME(BODY, PER)                                                             \
  [&] {                                                                           \
    auto t0 = std::chrono::steady_clock::now();                                   \
    for (int64_t i = 0; i < n; ++i) asm volatile(BODY ::"r"(buf) : "memory");     \
    auto t1 = std::chrono::steady_clock::now();                                   \
    return std::chrono::duration<double>(t1 - t0).count() / n / (PER) * 1e9;      \
  }()

// ns per instruction: [dpbf16 x24, dpbf16 latency, fma zmm x8, fma zmm latency, fma ymm x8, ternlog zmm x8,
//                      dpbusd x24, dpbusd latency, dpbusd with broadcast memory operand x8]
std::vector<double> run(int64_t n, bool bf16, bool vnni) {
  std::vector<double> r(9, -1.0);
  alignas(64) static int32_t buf[16] = {};
  if (bf16) {
    r[0] = TIME(R24(DP), 24);
    r[1] = TIME(DP(0) DP(0) DP(0) DP(0), 4);
  }
  r[2] = TIME(R8(FZ), 8);
  r[3] = TIME(FZ(0) FZ(0) FZ(0) FZ(0), 4);
  r[4] = TIME(R8(FY), 8);
  r[5] = TIME(R8(TL), 8);
  if (vnni) {
    r[6] = TIME(R24(VN), 24);
    r[7] = TIME(VN(0) VN(0) VN(0) VN(0), 4);
    r[8] = TIME(R8(VB), 8);
  }
  return r;
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("run", &run); }
"""


def main() -> int:
    if not torch.cpu._is_avx512_supported():
        print("this CPU has no AVX512: nothing to time", file=sys.stderr)
        return 1
    bf16 = torch.cpu._is_avx512_bf16_supported()
    vnni = torch.cpu._is_vnni_supported()
    mod = cpp_extension.load_inline(
        "lowbit_x86_dot_throughput", cpp_sources=_SRC, extra_cflags=["-O2", "-mavx512f", "-mavx512bf16", "-mavx512vnni"],
        verbose=False,
    )
    runs = [mod.run(20_000_000, bf16, vnni) for _ in range(3)]
    best = [min(r[i] for r in runs) for i in range(9)]  # fastest of 3: least disturbed by other work
    names = [
        ("vdpbf16ps zmm, 24 chains (issue rate)", 32), ("vdpbf16ps zmm, 1 chain (latency)", 32),
        ("vfmadd231ps zmm, 8 chains (issue rate)", 16), ("vfmadd231ps zmm, 1 chain (latency)", 16),
        ("vfmadd231ps ymm, 8 chains (issue rate)", 8), ("vpternlogd zmm, 8 chains (issue rate)", 0),
        ("vpdpbusd zmm, 24 chains (issue rate)", 64), ("vpdpbusd zmm, 1 chain (latency)", 64),
        ("vpdpbusd zmm, m32{1to16}, 8 chains (issue rate)", 64),
    ]
    rows = []
    for (name, macs), ns in zip(names, best):
        if ns < 0:
            continue
        rows.append([name, f"{ns:.3f}", f"{macs / ns:.0f}" if macs and "issue" in name else "-"])
    info = C.machine_description(torch.device("cpu"))
    print("\n".join(f"- {k}: {v}" for k, v in info.items()))
    print("- fastest of 3 runs of 20M loop iterations\n")
    print(C.md_table(["instruction", "ns per instruction", "MACs per ns"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
