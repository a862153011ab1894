"""Which CPU kernel runs a quantized linear at a given batch size M, per class of CPU.

CPUs differ by an order of magnitude in what is fast: without native bf16 (AVX2 Zen3)
bf16 GEMMs are emulated and lowbit's fp32 paths win; with AMX or AVX512-BF16 (Zen4/Zen5),
bf16 ``F.linear`` is a fast oneDNN GEMM and from mid M only kernels that multiply at the
same rate (oneDNN's brgemm ukernel, fed with weights dequantized block by block:
lowbit/csrc/wo_gemm_cpu.cpp) keep up with it; and one ISA class can still differ by
vendor (VENDOR_TABLES) and by one vendor's generation (FAMILY_TABLES: Zen4 runs 512-bit
instructions as two halves, Zen5 at full width). So the dispatch is a table of crossovers per *ISA class* (:func:`isa_class`), each measured on a machine of
that class (the table says where), and :func:`lowbit.tune` can replace it with crossovers
measured on the user's own machine, cached per CPU model + torch version + ISA class.

A table maps an op to ``[(max_m, path), ...]`` sorted by ``max_m`` (``None`` = no limit):
the first entry with ``M <= max_m`` names the path. Every path is a real quantized kernel
(never a bf16 ``F.linear`` on a dequantized copy of the whole weight); one that this process
cannot run (no extension, no brgemm ukernel) is replaced by the generic table's choice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
from pathlib import Path

import torch

from ._ext import cache_dir, load_cpu_extension

__all__ = [
    "DEFAULT_TABLES",
    "FEW_THREAD_TABLES",
    "INT8_AMX_SMALL_LAYER",
    "OPS",
    "VENDOR_TABLES",
    "FAMILY_TABLES",
    "cpu_family",
    "PATHS",
    "active_table",
    "choose_path",
    "clear_tuned_cache",
    "cpu_vendor",
    "forced_path",
    "int4_amx_available",
    "int4_gemv_best_isa",
    "int8_amx_available",
    "da8w4_amx_available",
    "int4_gemv_isa",
    "isa_class",
    "load_tuned_table",
    "path_available",
    "tune_cache_path",
]

logger = logging.getLogger(__name__)

# op name -> the paths it has (ops/cpu.py runs them; lowbit/tune.py times them).
PATHS: dict[str, tuple[str, ...]] = {
    # lowbit C++ int4 GEMV | ATen tinygemm | lowbit brgemm (oneDNN's ukernel: AMX tiles, or
    # AVX512-BF16 without AMX) | dequantize + fp32/bf16 GEMM | lowbit AMX kernel on the raw
    # codes, group scales on the tile sums (int4_amx_cpu.cpp)
    "int4_tinygemm_cpu_linear": ("gemv", "tinygemm", "brgemm", "dequant_gemm", "amx"),
    # ATen int8 GEMV | lowbit brgemm, bf16 operands (AMX or AVX512-BF16) | dequantize + GEMM
    # | lowbit C++ GEMV on the row-major codes, fp32 x (int8_wo_gemv.cpp: AVX512 / AVX2)
    "int8_weight_only_linear": ("gemv", "brgemm", "dequant_gemm", "cpp_gemv"),
    # ATen int8 GEMV on the codes | lowbit u8s8 brgemm (AMX or AVX512-VNNI) | fp32 GEMM on the codes
    # | torch._int_mm (oneDNN s8s8s32; fast with VNNI, a slow loop on AVX2)
    # | lowbit C++ int8 x int8 GEMM on the row-major codes (int8_vnni_cpu.cpp: AVX512-VNNI)
    # | lowbit AMX-INT8 tile kernel on the row-major codes (int8_amx_cpu.cpp)
    "int8_dynamic_linear": ("gemv", "brgemm", "fp32_gemm", "int_mm", "vnni", "amx"),
    # lowbit C++ AVX512-VNNI / AVX2 kernel (da8w4_cpu.cpp) | lowbit u8s8 brgemm per group
    # | lowbit bf16 brgemm on the activation codes, group scales folded into the weight block
    # | lowbit AMX-INT8 tile kernel on the unpacked codes, per-group epilogue (da8w4_amx_cpu.cpp)
    "da8w4_linear": ("vnni", "brgemm", "bf16_brgemm", "amx"),
}
OPS = tuple(PATHS)

# ---------------------------------------------------------------------- generic (non-AMX) thresholds

# Batch rows up to which the int8 GEMV kernel (`aten._weight_int8pack_mm`) beats
# dequantize + fp32 GEMM on CPU. benchmarks/results/amd-epyc-2t.md (2-core AVX2 Zen3):
# 4096x4096 GEMV 24.6 ms vs 44 ms at M=64, 97 ms vs 82 ms at M=256; 11008x4096 71 vs
# 155 ms at M=64, 373 vs 235 ms at M=256. The crossover lies between 64 and 256.
CPU_INT8_GEMV_MAX_M = 128

# Batch rows up to which lowbit's int8 weight-only GEMV (lowbit/csrc/int8_wo_gemv.cpp, AVX2
# loop here) runs instead of ATen's. On the 2-core AVX2 Zen3 (2026-12-03, a one-file
# prototype of the same M = 1 loop, 2 threads, us, ATen vs lowbit): 49152x576 4,542 vs
# 3,385, 576x576 22.6 vs 13.8, 3072x576 146 vs 57, 4096x4096 1,367 vs 584. Both AVX2 loops
# on the 2-core Sapphire Rapids VM (ATEN_CPU_CAPABILITY=avx2, 2 threads, rotated copies):
# M=1 4096x4096 804 vs 687, 49152x576 2,499 vs 1,314, 576x576 26 vs 12, 1536x576 76 vs
# 26; M=4 1,209 vs 1,142, 3,583 vs 1,956, 34 vs 37, 69 vs 53. NOT measured on an AVX2
# machine at M = 2..4.
CPU_INT8_CPP_GEMV_MAX_M = 4


# Batch rows up to which `aten._weight_int4pack_mm_for_cpu` (tinygemm) runs; above it
# the weight is dequantized (in its packed block order) into an fp32 batched GEMM on
# CPUs without native bf16. Measured on the 2-core AVX2 Zen3 while shared with other
# jobs (4096x4096, g=128, bf16 activations; numbers noisy, +-50%): tinygemm costs about
# the same per 4-row block at any M (~1.5 ms / 4 rows at 2 threads, compute-bound), the
# dequantize + GEMM path costs ~60 ms of dequantization plus the fp32 GEMM. 1 thread:
# M=64 tinygemm 101-124 ms vs 195-244; M=128 249-254 vs 295-300; M=256 510 vs 444.
# The crossover is between 128 and 256; both paths beat emulated-bf16 F.linear 3-5x there.
CPU_INT4_TINYGEMM_MAX_M = 128


# Batch rows up to which the C++ GEMV (shared weight conversion, 4-row tiles) runs instead
# of ATen's tinygemm. Measured on the 2-core Zen3 (otherwise idle), 4096x4096 g128 bf16,
# 2 threads, cold weights (40 copies rotated), median of 5, op alone: M=1 0.38 ms vs ATen
# 1.18; M=2 0.59 vs 1.21; M=4 0.88 vs 1.57; M=8 1.74 vs 3.14; M=16 3.4 vs 6.5; M=32 6.6
# vs 12.4; M=64 13.1 vs 25.0 (1 thread: M=1 0.70 ms, M=4 1.65 ms). Not measured above 64.
CPU_INT4_GEMV_MAX_M = 64


@functools.cache
def int4_gemv_available() -> bool:
    """True once lowbit's C++ CPU extension is built with the M = 1 int4 GEMV in it.

    The GEMV (lowbit/csrc/int4_tinygemm_gemv.cpp) computes the same function as
    tinygemm, ~3x faster at M = 1 (ATen's kernel pays for 4 rows at M = 1). It ships with
    the extension that ops/_ext.py builds; without that extension, tinygemm runs.
    Measured at M = 1, 4096x4096 g128, cold, idle 2-core Zen3: 0.70 ms at 1 thread,
    0.38 ms at 2 threads (22 GB/s of packed weights); ATen tinygemm 2.3-2.4 ms, bf16
    F.linear 3.3 ms at 1 thread.
    """
    return bool(load_cpu_extension()) and hasattr(torch.ops.lowbit_ext, "int4_tinygemm_gemv")


_probed_amx: dict[str, bool] = {}


def _amx_op_available(op: str, probe: str, fake) -> bool:
    ok = _probed_amx.get(op)
    if ok is None:
        ok = bool(load_cpu_extension()) and hasattr(torch.ops.lowbit_ext, op) and bool(
            getattr(torch.ops.lowbit_ext, probe)())
        if ok:
            torch.library.register_fake(f"lowbit_ext::{op}")(fake)
        _probed_amx[op] = ok
    return ok


def int4_amx_available() -> bool:
    """True once the extension is built with ``lowbit_ext::int4_tinygemm_amx`` and this process
    may use AMX-BF16 tiles (lowbit/csrc/int4_amx_cpu.cpp asks the kernel once); the op's fake
    implementation for torch.compile is registered then too."""
    return _amx_op_available("int4_tinygemm_amx", "int4_amx_available",
                             lambda x, qdata, scale_and_zero, group_size: x.new_empty((x.shape[0], qdata.shape[0])))


def int8_amx_available() -> bool:
    """The same for ``lowbit_ext::int8_amx_gemm`` (AMX-INT8 tiles, lowbit/csrc/int8_amx_cpu.cpp)."""
    return _amx_op_available(
        "int8_amx_gemm", "int8_amx_available",
        lambda xq, q, xs, ws, out_bf16: xq.new_empty((xq.shape[0], q.shape[0]),
                                                     dtype=torch.bfloat16 if out_bf16 else torch.float32))


def da8w4_amx_available() -> bool:
    """The same for ``lowbit_ext::da8w4_amx_gemm`` (DA8W4 on AMX-INT8 tiles, lowbit/csrc/da8w4_amx_cpu.cpp)."""
    return _amx_op_available(
        "da8w4_amx_gemm", "da8w4_amx_available",
        lambda codes, ascale, azp, qdata, scale, zero_point, qsum, group_size, out_bf16: codes.new_empty(
            (codes.shape[0], qdata.shape[0] * 16), dtype=torch.bfloat16 if out_bf16 else torch.float32))


# Which inner loop of the int4 GEMV (ops/cpu.py INT4_GEMV_ISAS) each ISA class runs.
# AMX class (Sapphire Rapids): the fp32-FMA AVX512F loop. Measured on the 2-core SPR VM,
# 1 thread, hot weights (1 MiB, in L2), 4096-wide rows, ns per 64 weight bytes: M=1
# avx512 3.0, avx512_bf16 5.4, avx2 6.7; M=4 avx512 9.7, avx512_bf16 15.3, avx2 15.6.
# `vdpbf16ps` zmm issues ~4x slower than `vfmadd231ps` zmm on that core (benchmarks/
# x86_dot_throughput.py: 0.75-0.9 vs 0.19-0.2 ns quiet), so its 2 MACs per lane cost more. AVX512-BF16 without AMX (Zen4/Zen5, where `vdpbf16ps`
# issues like an FMA): the bf16 loop, 2 MACs per lane for half the FMA uops; NOT measured
# (no such machine was available), chosen from the instruction tables. AVX512 without
# bf16: the AVX512F loop (not measured either). 32-row ("avx2") packings always take the
# AVX2 loop in C++, whatever this says.
INT4_GEMV_LOOP = {
    "amx": "avx512",
    "avx512_bf16": "avx512_bf16",
    "avx512": "avx512",
    "avx2": "avx2",
    "other": "scalar",
}


# The GEMV's inner loops (the `isa` argument of lowbit_ext::int4_tinygemm_gemv; -1 = auto,
# the best this CPU runs). avx512 (fp32 FMA) and avx512_bf16 (`vdpbf16ps` on x rounded to
# bf16) serve the "avx512" (64-row) layout; the "avx2" layout always takes the AVX2 loop.
INT4_GEMV_ISAS = {"scalar": 0, "avx2": 1, "avx512": 2, "avx512_bf16": 3}


@functools.cache
def int4_gemv_best_isa() -> int:
    """The widest GEMV inner loop this CPU can run (an ``INT4_GEMV_ISAS`` value); -1 without the extension."""
    if not int4_gemv_available():
        return -1
    return int(torch.ops.lowbit_ext.int4_gemv_best_isa())


@functools.cache
def int4_gemv_isa() -> int:
    """The int4 GEMV inner loop for this machine's class (an ``INT4_GEMV_ISAS`` value), capped
    at what the CPU runs."""
    return min(INT4_GEMV_ISAS[INT4_GEMV_LOOP[isa_class()]], int4_gemv_best_isa())


_INF = None  # max_m of a table's last entry


def _generic_table() -> dict[str, list[tuple[int | None, str]]]:
    """The table for CPUs without AMX, from the measured thresholds above.

    Built when asked from the thresholds above. Measured on a 2-core AVX2 Zen3 (benchmarks/results/
    amd-epyc-2t.md and the comments at the thresholds in ops/cpu.py).
    """
    return {
        "int4_tinygemm_cpu_linear": [
            (CPU_INT4_GEMV_MAX_M, "gemv"),
            (CPU_INT4_TINYGEMM_MAX_M, "tinygemm"),
            (_INF, "dequant_gemm"),
        ],
        "int8_weight_only_linear": [
            (CPU_INT8_CPP_GEMV_MAX_M, "cpp_gemv"),
            (CPU_INT8_GEMV_MAX_M, "gemv"),
            (_INF, "dequant_gemm"),
        ],
        "int8_dynamic_linear": [(CPU_INT8_GEMV_MAX_M, "gemv"), (_INF, "fp32_gemm")],
        "da8w4_linear": [(_INF, "vnni")],
    }


# AMX class (Sapphire Rapids and later Xeons). Measured with `lowbit tune` on the 16-core
# AMX Xeon of the GPU host (family 6 model 207, torch 2.11), 4096x4096, cold weights:
# benchmarks/results/intel-xeon-model207-amx-16c-tune-{2,16}t.md. Times in us, 2 threads
# (16 threads in brackets), bf16 F.linear for reference:
#   int4 M=1: tinygemm 617 (151), lowbit GEMV 692 (161), brgemm 1,237 (464); bf16 2,575 (593)
#        M=4: tinygemm 1,094 (292), brgemm 1,227 (473); M=8: tinygemm 2,256 (525), brgemm 1,322 (496)
#   int8 weight-only M=4: GEMV 1,362 (266), brgemm 1,629 (526); M=8: GEMV 2,493 (558), brgemm 1,591 (534)
#   int8 dynamic M=2: GEMV 1,136 (375), brgemm 1,451 (400); M=4: GEMV 1,370 (381), brgemm 1,438 (350)
# At 16 threads every brgemm path showed a ~450 us floor (cause not established; see the
# scratch buffers in wo_gemm_cpu.cpp), so from M = 8 on no path beat bf16 F.linear there.
# DA8W4 until 2026-12-04: the VNNI kernel up to M = 16, then bf16 brgemm on the activation codes with the
# group scales folded into the weight block (the per-group u8s8 brgemm pays a C reload and
# an fp32 epilogue per group and never wins). `lowbit tune --threads 2` on the 2-core AMX VM
# of 2026-12-03 (benchmarks/results/intel-xeon-vm-2c-amx-tune-2t-2026-12-03.md), 4096x4096
# cold, us (x bf16): M=16 vnni 994 (1.62x), bf16_brgemm 1,429 (1.13x); M=32 1,748 (1.01x)
# vs 1,518 (1.17x); M=64 3,225 vs 2,015 (1.31x); M=256 12,117 (0.46x) vs 5,508 (1.02x);
# u8s8 brgemm per group 15,165 (0.37x). NOT measured at 16 threads.
# From M = 9 on, since 2026-12-04: lowbit's AMX-INT8 kernel (da8w4_amx_cpu.cpp: the codes
# unpacked once per call as q - z bytes, tdpbssd, per-group fp32 epilogue). `lowbit.tune(ops=
# ("da8w4_linear",), threads=2)` on the 2-core SPR VM, g128 (g32 for 960x576), cold, us at M =
# 1 / 4 / 8 / 16 / 64 / 256 / 512, amx vs vnni vs bf16_brgemm (bf16 F.linear):
#   4096x4096   671 / 653 / 660 / 684 / 1,168 / 4,398 / 5,940 vs 403 / 447 / 628 / 973 / 3,109 /
#               11,816 / 23,830 vs ... 1,307 / 1,926 / 5,318 / 10,150 (1,475 / 1,454 / 1,464 / 1,496 /
#               2,443 / 4,984 / 9,638)
#   11008x4096  amx ... 1,707 / 2,931 / 7,912 / 14,348 vs bf16_brgemm 3,821 / 4,817 / 14,302 / 27,267
#               (bf16 3,702 / 6,189 / 13,775 / 25,801)
#   4096x11008  amx ... 1,680 / 2,905 / 8,928 / 17,895 vs bf16_brgemm 4,542 / 8,804 / 16,090 / 27,928
#               (bf16 3,664 / 7,414 / 12,591 / 22,117)
#   960x576 g32 amx 42 / 35 / 38 / 41 / 96 / 300 / 595 vs vnni 20 / 21 / 33 / 55 vs bf16_brgemm
#               ... 54 / 103 / 241 / 452 (bf16 90 / 63 / 60 / 60 / 83 / 167 / 264)
# (benchmarks/results/intel-xeon-vm-2c-amx-da8w4-amx-2026-12-04.md). The 16-core host, same
# call (benchmarks/results/intel-xeon-model207-amx-16c-da8w4-amx-2026-12-04.md), us at M = 4 /
# 8 / 16 / 64 / 256, amx vs vnni: 2 threads 4096x4096 982 / 715 / 789 / 1,381 / 4,063 vs 723 /
# 1,070 / 1,206 / 3,933 / 15,086; 16 threads 282 / 293 / 313 / 477 / 1,290 vs 98 / 157 / 309 /
# 999 / 3,587, 11008x4096 at M = 16 806 vs 719, 4096x11008 603 vs 684: the VNNI kernel to M = 16
# at 16 threads, to M = 4 at few threads (_AMX_TABLE_FEW_THREADS).
DA8W4_AMX: list[tuple[int | None, str]] = [(16, "vnni"), (_INF, "amx")]
_DA8W4_AMX_FEW_THREADS: list[tuple[int | None, str]] = [(4, "vnni"), (_INF, "amx")]
# int4 up to M = 8: lowbit's GEMV with its AVX512F loop (INT4_GEMV_LOOP), which replaced the
# tinygemm rows above. Measured on the 2-core SPR dev VM (torch 2.13, 1 thread, 512x4096
# g128 hot in L2, min of 9 passes; the VM was shared, load ~3): us per call
#   M=1: GEMV 108, tinygemm 164, brgemm 862;  M=2: 146, 240, 882;  M=4: 319, 434, 930;
#   M=8: 387, 493, 554;  M=16: 683, 1,845, 456.
# Cold, 4096x4096, 2 threads (benchmarks/results/intel-xeon-spr-vm-2c-int4-gemv.md, run B,
# load 1.4-2.5), median us: M=1 GEMV 574, tinygemm 713, brgemm 2,635, bf16 2,339;
# M=4 1,086, 1,460, 2,985; M=8 2,140, 2,953, 2,715; M=16 5,089, 5,949, 3,383.
# From M = 5 to 32: lowbit's AMX kernel on the raw codes (int4_amx_cpu.cpp), 2026-12-04.
# `lowbit.tune(ops=("int4_tinygemm_cpu_linear",), threads=2)` on the 2-core SPR VM, g128,
# cold, us at M = 4 / 8 / 16 / 32 / 64 (benchmarks/results/intel-xeon-vm-2c-amx-int4-amx-2026-12-04.md):
#   4096x4096   GEMV 605 / 1,053 / 1,992 / 3,829; amx 746 / 771 / 873 / 1,133 / 1,811;
#               brgemm 1,322 / 1,056 / 1,584 / 1,714 / 2,651; bf16 1,351 / 1,333 / 1,356 / 1,501 / 2,169
#   11008x4096  GEMV 1,591 / 2,858; amx 2,003 / 2,187 / 2,321 / 2,997 / 4,672; brgemm 3,086 /
#               3,019 / 3,259 / 3,365 / 4,318
#   4096x11008  amx 2,166 / 2,295 / 2,591 / 3,671 / 6,050; brgemm 3,161 / 3,097 / 3,537 / 3,808 / 4,851
# At 16 threads (the 16-core host, same call, 4096x4096, us at M = 4 / 8 / 16 / 32: amx 187 /
# 196 / 276 / 468, brgemm 310 / 306 / 313 / 391, GEMV 205 / 390; benchmarks/results/
# intel-xeon-model207-amx-16c-linear-2026-12-04.md) brgemm wins from M = 32: the AMX kernel
# runs up to M = 16 there and up to 32 at few threads (_AMX_TABLE_FEW_THREADS).
_AMX_INT4: list[tuple[int | None, str]] = [(4, "gemv"), (16, "amx"), (_INF, "brgemm")]
_AMX_INT4_FEW_THREADS: list[tuple[int | None, str]] = [(4, "gemv"), (32, "amx"), (_INF, "brgemm")]
_AMX_TABLE: dict[str, list[tuple[int | None, str]]] = {
    "int4_tinygemm_cpu_linear": _AMX_INT4,
    # int8 weight-only up to M = 4: ATen's GEMV at many threads (_AMX_INT8_WO_FEW_THREADS below
    # at few): on the 16-core host at 16 threads (2026-12-04, benchmarks/results/
    # intel-xeon-model207-amx-16c-int8-gemv-2026-12-04.md), us at M = 1, ATen vs lowbit's GEMV:
    # 4096x4096 250 vs 283, 576x576 17.0 vs 29.3, 49152x576 590 vs 398.
    "int8_weight_only_linear": [(4, "gemv"), (_INF, "brgemm")],
    # int8 dynamic: torch._int_mm (oneDNN, AMX int8) from M = 2. `lowbit tune` on the host,
    # 4096x4096 cold, us, int_mm vs brgemm (benchmarks/results/
    # intel-xeon-model207-amx-16c-tune-{2,16}t-int_mm-2026-12-02.md): 16 threads M=4 407 vs
    # 618, M=16 586 vs 884, M=64 820 vs 1,346, M=256 1,888 vs 2,753 (bf16 ~550-2,280); 2
    # threads within noise of each other (M=16 2,019 vs 1,789, M=128 5,368 vs 5,973). M=1:
    # GEMV 1,844 / 516 vs int_mm 1,957 / 527. Up to M = 8 lowbit's VNNI GEMM
    # (int8_vnni_cpu.cpp) since: `lowbit tune` on the host 2026-12-02 16:40
    # (benchmarks/results/intel-xeon-model207-amx-16c-tune-{2,16}t-vnni-2026-12-02.md), 2 / 16
    # threads, M=1: 866 / 244 vs int_mm 1,524 / 472; M=8: 989 / 267 vs 1,392 / 398;
    # M=16: 1,545 / 474 vs 1,471 / 443.
    # ... and lowbit's AMX-INT8 kernel (int8_amx_cpu.cpp) from M = 9 to 128, brgemm above, since
    # `lowbit.tune(ops=("int8_dynamic_linear",), threads=16)` on the host 2026-12-04 (us at M = 16 /
    # 64 / 256 / 512, amx vs torch._int_mm vs brgemm; bf16): 4096x4096 182 / 333 / 1,208 / 4,160
    # vs 301 / 573 / 1,523 / 5,675 vs 361 / 595 / 1,532 / 2,676 (463 / 784 / 2,145 / 4,268);
    # 11008x4096 424 / 967 / 4,040 / 12,909 vs 582 / 1,136 / 8,955 / 15,397 vs 716 / 1,216 /
    # 3,857 / 7,281 (benchmarks/results/intel-xeon-model207-amx-16c-int8-amx-2026-12-04.md).
    "int8_dynamic_linear": [(8, "vnni"), (128, "amx"), (_INF, "brgemm")],
    "da8w4_linear": DA8W4_AMX,
}
# The AMX table at few torch threads (<= FEW_THREADS): int8 dynamic on lowbit's u8s8 brgemm
# instead of torch._int_mm above M = 8. `lowbit tune --threads 2`, 4096x4096 cold, us,
# brgemm vs int_mm (bf16 in brackets): the 16-core host (benchmarks/results/
# intel-xeon-model207-amx-16c-tune-2t-2026-12-02d.md) M=128 3,273 vs 5,239 (7,003), M=256
# 5,970 vs 10,501 (14,276); the 2-core AMX VM of 2026-12-03, with the brgemm scratch 64-byte
# aligned (benchmarks/results/intel-xeon-vm-2c-amx-tune-2t-2026-12-03.md) M=16 1,102 vs
# 1,744 (1,610), M=64 1,663 vs 2,330 (2,637), M=256 4,418 vs 5,715 (5,591). At 16 threads
# int_mm stays ahead (M=256 1,390 vs 2,277 on the host, before the alignment fix).
FEW_THREADS = 4
# int8 weight-only at few threads: up to M = 4 lowbit's GEMV (int8_wo_gemv.cpp, AVX512 loop)
# instead of ATen's. `lowbit.tune(ops=("int8_weight_only_linear",), threads=2)` on the 2-core
# SPR VM (2026-12-04; benchmarks/results/intel-xeon-vm-2c-amx-int8-gemv-2026-12-04.md has the
# interleaved benchmark), cold, us, M = 1 / 4 / 8, lowbit GEMV vs ATen GEMV vs brgemm (bf16):
#   4096x4096  690 / 798 / 1,244 vs 724 / 892 / 1,785 vs 1,042 / 987 / 996 (1,342-1,377)
#   49152x576  1,361 / 1,592 / 2,401 vs 2,254 / 2,968 / 5,742 vs 2,455 / 2,477 / 2,602
#   576x576    13 / 19 / 35 vs 21 / 31 / 54 vs 32 / 33 / 34 (42-66)
# and the 16-core host at 2 threads, M = 1: 4096x4096 1,223 vs 1,261, 49152x576 1,856 vs
# 3,551, 576x576 35.4 vs 41.5 (bf16 2,811 / 5,820 / 88).
_AMX_INT8_WO_FEW_THREADS: list[tuple[int | None, str]] = [(4, "cpp_gemv"), (_INF, "brgemm")]
# int8 dynamic at few threads: lowbit's VNNI GEMM up to M = 2, then lowbit's AMX-INT8 kernel
# (int8_amx_cpu.cpp) up to M = 512, the u8s8 brgemm above. `lowbit.tune(ops=
# ("int8_dynamic_linear",), threads=2)` on the 2-core SPR VM (2026-12-04,
# benchmarks/results/intel-xeon-vm-2c-amx-int8-amx-2026-12-04.md), cold, us at
# M = 1 / 4 / 16 / 64 / 256 / 512, amx vs brgemm vs vnni (bf16):
#   4096x4096   715 / 722 / 721 / 890 / 2,982 / 7,452 vs 939 / 915 / 984 / 1,429 / 3,450 / 6,537
#               vs 635 / 712 / 1,104 / 3,104 (1,397 / 1,402 / 1,491 / 2,434 / 4,569 / 8,628)
#   11008x4096  1,823 / 1,699 / 1,660 / 2,191 / 6,683 / 19,084 vs 2,424 / 2,247 / 2,419 / 3,382 /
#               8,448 / 16,563 (bf16 ... 5,860 / 12,541 / 23,382)
#   960x576     49 / 38 / 38 / 54 / 137 / 255 vs 56 / 47 / 55 / 84 / 222 / 414 vs 33 / 35 (bf16 93 /
#               73 / 64 / 89 / 166 / 280)
# Above M = 128 brgemm is faster on long rows and large layers (the VM, 4096x11008, M = 128 /
# 256: amx 5,493 / 14,122-18,017 vs brgemm 6,501 / 10,613; the 16-core host at 2 threads,
# M = 512: 4096x4096 amx 15,208 vs brgemm 11,660, 11008x4096 71,307 vs 41,181), the AMX kernel
# on small layers (960x576 at M = 512: 817 vs 1,118, bf16 865), where brgemm is slower than
# bf16: so there layers of at most INT8_AMX_SMALL_LAYER weights stay on the AMX kernel (ops/cpu.py).
_AMX_INT8_DYN_FEW_THREADS: list[tuple[int | None, str]] = [(2, "vnni"), (128, "amx"), (_INF, "brgemm")]
# Weights (N x K) up to which int8 dynamic stays on the AMX kernel where the table says brgemm
# (measured: 960x576 and 576x576 faster there at M = 512 on the VM and the host, 4096x4096 not).
INT8_AMX_SMALL_LAYER = 1 << 21
_AMX_TABLE_FEW_THREADS: dict[str, list[tuple[int | None, str]]] = {
    **_AMX_TABLE,
    "int4_tinygemm_cpu_linear": _AMX_INT4_FEW_THREADS,
    "int8_weight_only_linear": _AMX_INT8_WO_FEW_THREADS,
    "int8_dynamic_linear": _AMX_INT8_DYN_FEW_THREADS,
    "da8w4_linear": _DA8W4_AMX_FEW_THREADS,
}

# AVX512-BF16/VNNI without AMX. Measured with `lowbit tune --threads 2` (two runs) on a
# 2-core Intel Xeon VM, family 6 model 207 (Emerald Rapids) with AMX hidden by the
# hypervisor, torch 2.13, 4096x4096, cold weights (benchmarks/results/
# intel-xeon-emr-vm-2c-noamx-tune-2t.md). us, run 1 / run 2:
#   int4 M=8: GEMV 2,468 / 2,423, tinygemm 3,984 / 2,275; M=16: 4,782 / 4,733 vs 4,205 / 4,753;
#        M=256: tinygemm 72,614 / 70,998, GEMV 124,255 / 77,179 (bf16 73,397 / 59,322)
#   int8 weight-only M=256: GEMV 75,282 / 73,355, dequant + GEMM 74,402 / 91,873
#   int8 dynamic M=1: torch._int_mm 967 (separate script) / 1,127, GEMV 1,302 / 1,275;
#        M=4: 2,104 vs GEMV 1,737; M=64: 4,174 vs 20,965; M=256: 12,711 vs 80,375
# Not measured on Zen4/Zen5, where bf16 F.linear and oneDNN's int8 GEMM differ.
_AVX512_BF16_TABLE: dict[str, list[tuple[int | None, str]]] = {
    "int4_tinygemm_cpu_linear": [(8, "gemv"), (_INF, "tinygemm")],
    # lowbit's int8 GEMV up to M = 4 as on the 2-core SPR VM (_AMX_INT8_WO_FEW_THREADS): the
    # same cores; NOT re-measured on this VM.
    "int8_weight_only_linear": [(4, "cpp_gemv"), (_INF, "gemv")],
    "int8_dynamic_linear": [(1, "int_mm"), (4, "gemv"), (_INF, "int_mm")],
    "da8w4_linear": [(_INF, "vnni")],
}

# AVX512-BF16/VNNI without AMX on AMD Zen5 (family 26), where bf16 F.linear is 3-7x faster
# than on the Emerald Rapids VM above (256x4096x4096: 10.2-11 ms vs 59-78 ms, 2 threads) and
# oneDNN's brgemm ukernel runs on AVX512-BF16 / VNNI without AMX (wo_gemm_cpu.cpp,
# brgemm_caps). Measured with `lowbit tune --threads 2` on a 2-core Zen5 VM (torch 2.13,
# 4096x4096, cold weights; benchmarks/results/amd-zen5-2c-tune-2t.md), us (x bf16):
#   int4 M=64: GEMV 2,730 (1.31x), brgemm 2,979; M=128: 5,320 vs 5,457; M=256: brgemm 10,485
#        (1.03x), GEMV 10,663, tinygemm 27,647
#   int8 weight-only M=4: GEMV 771, brgemm 1,019; M=8: 1,375 vs 1,234; M=256: brgemm 12,991
#        (bf16 10,769; interleaved A/B runs put it at 1.02x), GEMV 41,000
#   int8 dynamic (lowbit's VNNI GEMM, int8_vnni_cpu.cpp): M=1 503, M=16 778, M=128 3,415 vs
#        brgemm 3,827 and torch._int_mm 4,259; M=256: brgemm 7,030, VNNI 7,757
# Re-measured 2026-12-07 (`lowbit tune --threads 2`, same VM class, family 26 model 2; benchmarks/
# results/amd-zen5-2c-tune-2t-2026-12-07.md), 4096x4096 cold, us (x bf16):
#   int8 weight-only, lowbit's GEMV (int8_wo_gemv.cpp) vs ATen's vs brgemm: M=1 513 (3.52x) vs
#        918 vs 938; M=4 505 vs 1,066 vs 938; M=8 892 vs 1,635 vs 1,182; M=16 1,856 vs brgemm 1,544
#   int4 M=64: GEMV 3,087, brgemm 3,234; M=128: GEMV 6,569, brgemm 5,806 (bf16 6,456)
_ZEN_AVX512_BF16_TABLE: dict[str, list[tuple[int | None, str]]] = {
    "int4_tinygemm_cpu_linear": [(64, "gemv"), (_INF, "brgemm")],
    "int8_weight_only_linear": [(8, "cpp_gemv"), (_INF, "brgemm")],
    "int8_dynamic_linear": [(128, "vnni"), (_INF, "brgemm")],
    "da8w4_linear": [(_INF, "vnni")],
}

# AVX512-BF16/VNNI without AMX on AMD Zen4 (family 25): 512-bit instructions run as two
# 256-bit halves, so the multiply-bound paths give out at smaller M than on Zen5. Measured
# with `lowbit tune --threads 2` on a 2-core Zen4 VM (family 25 model 17, torch 2.13,
# 4096x4096, cold weights, noisy; benchmarks/results/amd-zen4-2c-tune-2t-2026-12-04.md),
# us (x bf16):
#   int4 M=32: GEMV 3,513 (1.22x), brgemm 3,637; M=64: GEMV 7,077 (0.95x), brgemm 6,110
#        (1.10x); M=256: brgemm 21,678 (1.00x); the Zen5 table's GEMV to M=128 put
#        4096x11008 M=64 at 0.91x in benchmarks/linear.py
#   int8 weight-only M=1: lowbit GEMV 883 (2.73x), ATen's 988; M=4: 1,166 vs 1,285; M=8:
#        brgemm 1,879 vs 1,916; M=256: brgemm 21,945 (0.99x)
#   int8 dynamic M=1: torch._int_mm 635, VNNI 743; M=32: VNNI 2,241, brgemm 2,317; M=64:
#        brgemm 3,802 (1.76x), VNNI 4,222. After the VNNI GEMM's one-tile prefetch and the
#        fused call (same VM, forced paths interleaved, median of 7): 4096x4096 M=1 VNNI 610,
#        torch._int_mm 671; 11008x4096 M=1 1,665 vs 1,821
#   int8 weight-only after the GEMV's far L2 prefetch (benchmarks/int8_vnni_cpu.py
#        --weight-only, 2 threads; benchmarks/results/int8-gemv-prefetch-2026-12-04.md),
#        GEMV / brgemm / bf16 at M = 4, 8, 16: 4096x4096 903 / 1,319 / 2,010, 1,509 / 1,713 /
#        2,283, 3,056 / 2,243 / 2,777; 11008x4096 2,509 / 3,695 / 5,091, 3,986 / 4,420 /
#        5,887, 7,844 / 5,944 / 7,199: the GEMV to M=8 (M = 5..8: a 4-row tile plus one of 1-4 rows)
_ZEN4_AVX512_BF16_TABLE: dict[str, list[tuple[int | None, str]]] = {
    "int4_tinygemm_cpu_linear": [(32, "gemv"), (_INF, "brgemm")],
    "int8_weight_only_linear": [(8, "cpp_gemv"), (_INF, "brgemm")],
    "int8_dynamic_linear": [(32, "vnni"), (_INF, "brgemm")],
    "da8w4_linear": [(_INF, "vnni")],
}

# ISA class -> table (None: the generic one, see _generic_table). AVX512 without bf16
# uses the generic table: no machine of that class was available to measure on.
DEFAULT_TABLES = {
    "amx": _AMX_TABLE,
    "avx512_bf16": _AVX512_BF16_TABLE,
    "avx512": None,
    "avx2": None,
    "other": None,
}
# ISA class -> the table used instead of DEFAULT_TABLES' at <= FEW_THREADS torch threads.
FEW_THREAD_TABLES = {
    "amx": _AMX_TABLE_FEW_THREADS,
}
# (ISA class, CPU vendor) -> table, where one class runs differently on the two vendors'
# cores; looked up before DEFAULT_TABLES.
VENDOR_TABLES = {
    ("avx512_bf16", "amd"): _ZEN_AVX512_BF16_TABLE,
}
# (ISA class, CPU vendor, CPU family) -> table, where one vendor's generations of a class
# differ; looked up before VENDOR_TABLES.
FAMILY_TABLES = {
    ("avx512_bf16", "amd", 25): _ZEN4_AVX512_BF16_TABLE,
}


@functools.cache
def cpu_family() -> int | None:
    """The CPU's family number (/proc/cpuinfo 'cpu family'; AMD Zen4 25, Zen5 26), or None."""
    from ..device_caps import cpuinfo_field

    value = cpuinfo_field("cpu family")
    return int(value) if value and value.isdigit() else None


@functools.cache
def cpu_vendor() -> str:
    """'amd', 'intel' or 'other', from the CPU's vendor id (/proc/cpuinfo on Linux)."""
    from ..device_caps import cpuinfo_field

    return {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(cpuinfo_field("vendor_id") or "", "other")


@torch._dynamo.assume_constant_result
@functools.cache
def isa_class() -> str:
    """The CPU's class for kernel choice: 'amx', 'avx512_bf16', 'avx512', 'avx2' or 'other'.

    Probed through ATen's CPU detection at first call (never at import).
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "x64"):
        return "other"
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    if torch.cpu._is_avx512_bf16_supported():
        return "avx512_bf16"
    if torch.cpu._is_avx512_supported():
        return "avx512"
    if torch.cpu._is_avx2_supported():
        return "avx2"
    return "other"


@functools.cache
def _brgemm_caps() -> int:
    """Bit 1: bf16 brgemm, bit 2: u8s8 brgemm usable (AMX through oneDNN); 0 without the extension."""
    if not load_cpu_extension() or not hasattr(torch.ops.lowbit_ext, "brgemm_caps"):
        return 0
    return int(torch.ops.lowbit_ext.brgemm_caps())


def path_available(op: str, path: str) -> bool:
    """True where this process can run ``path`` for ``op``."""
    if path not in PATHS.get(op, ()):
        return False
    if path in ("brgemm", "bf16_brgemm"):
        need = 2 if op in ("int8_dynamic_linear", "da8w4_linear") and path == "brgemm" else 1
        return bool(_brgemm_caps() & need)
    if op == "int4_tinygemm_cpu_linear" and path == "gemv":
        return int4_gemv_available()
    if op == "int4_tinygemm_cpu_linear" and path == "amx":
        from ..packing.int4 import tinygemm_cpu_layout

        return tinygemm_cpu_layout() == "avx512" and int4_amx_available()
    if op == "int8_weight_only_linear" and path == "cpp_gemv":
        from .cpu_int8_gemv import INT8_GEMV_ISAS, int8_gemv_best_isa

        return int8_gemv_best_isa() >= INT8_GEMV_ISAS["avx2"]  # the scalar loop is only a reference
    if op == "int8_dynamic_linear" and path == "amx":
        return int8_amx_available()
    if op == "da8w4_linear" and path == "amx":
        return da8w4_amx_available()
    if op == "int8_dynamic_linear" and path == "vnni":
        from .cpu_int8_vnni import INT8_VNNI_ISAS, int8_vnni_best_isa

        # Its AVX2 loop (vpmaddwd) is correct but no faster than ATen's GEMV; tables use the
        # AVX512-VNNI loop only.
        return int8_vnni_best_isa() >= INT8_VNNI_ISAS["avx512_vnni"]
    return True


def _lookup(table, op: str, m: int) -> str:
    for max_m, path in table[op]:
        if max_m is None or m <= max_m:
            return path
    return table[op][-1][1]


def active_table() -> tuple[dict[str, list[tuple[int | None, str]]], str]:
    """(table, where it comes from) for this machine: tuned cache, else the class default."""
    tuned = load_tuned_table()
    if tuned is not None:
        return tuned, f"lowbit.tune() cache {tune_cache_path()}"
    cls, vendor, family = isa_class(), cpu_vendor(), cpu_family()
    table = FAMILY_TABLES.get((cls, vendor, family))
    if table is not None:
        return table, f"default table for class {cls} on {vendor} CPUs of family {family}"
    table = VENDOR_TABLES.get((cls, vendor))
    if table is not None:
        return table, f"default table for class {cls} on {vendor} CPUs"
    if torch.get_num_threads() <= FEW_THREADS and cls in FEW_THREAD_TABLES:
        return FEW_THREAD_TABLES[cls], f"default table for class {cls} at <= {FEW_THREADS} threads"
    table = DEFAULT_TABLES.get(cls)
    if table is None:
        return _generic_table(), f"generic table (class {cls})"
    return table, f"default table for class {cls}"


# op -> path forced by :func:`forced_path` (lowbit.tune and the tests time/check each path).
_override: dict[str, str] = {}


@contextlib.contextmanager
def forced_path(op: str, path: str):
    """Run ``op`` on ``path`` at every M inside the block (it must be available here)."""
    if path not in PATHS.get(op, ()):
        raise ValueError(f"lowbit: {op!r} has no path {path!r}; its paths: {PATHS.get(op)}")
    if not path_available(op, path):
        raise ValueError(f"lowbit: path {path!r} of {op!r} cannot run on this machine (class {isa_class()})")
    old = _override.get(op)
    _override[op] = path
    try:
        yield
    finally:
        if old is None:
            _override.pop(op, None)
        else:
            _override[op] = old


# (op, m, torch threads) -> path: every packed CPU linear asks, and the answer (the tuned
# cache's location reads two environment variables) cost ~7 us of a 2-core Zen3 guest's
# ~50 us small-layer call. Cleared with the tuned table (clear_tuned_cache, lowbit.tune):
# $LOWBIT_CACHE_DIR / $LOWBIT_NO_TUNE_CACHE changes take effect after that call (the
# tests, which patch the tables, clear it around each test: tests/conftest.py).
_chosen: dict[tuple, str] = {}


def choose_path(op: str, m: int) -> str:
    """The path ``op`` runs at batch size ``m`` on this machine."""
    if op in _override:
        return _override[op]
    key = (op, m, torch.get_num_threads())
    path = _chosen.get(key)
    if path is None:
        if len(_chosen) > 4096:  # one entry per distinct M seen: keep it bounded
            _chosen.clear()
        path = _chosen[key] = _choose_path(op, m)
    return path


def _choose_path(op: str, m: int) -> str:
    table, _ = active_table()
    path = _lookup(table, op, m) if op in table else None
    if path is not None and path_available(op, path):
        return path
    path = _lookup(_generic_table(), op, m)
    if op == "int4_tinygemm_cpu_linear" and path == "gemv" and not path_available(op, "gemv"):
            path = "tinygemm" if m <= CPU_INT4_TINYGEMM_MAX_M else "dequant_gemm"
    return path


# ---------------------------------------------------------------------- tuned tables


def _cpu_model() -> str:
    from ..autoquant.bench import _cpu_model_name

    return _cpu_model_name()


def tune_cache_path() -> Path:
    """Where :func:`lowbit.tune` keeps this machine's table: one file per CPU model, torch
    version, ISA class and torch thread count (crossovers move with the threads), under ``$LOWBIT_CACHE_DIR`` (or ``~/.cache/lowbit``) ``/tune``."""
    return _tune_cache_path(torch.get_num_threads(), os.environ.get("LOWBIT_CACHE_DIR"), os.environ.get("HOME"))


@functools.lru_cache(maxsize=64)
def _tune_cache_path(threads: int, _cache_env: str | None, _home: str | None) -> Path:
    # Memoized per thread count and cache location: every packed CPU linear asks for its
    # path, and building this name (CPU model, pathlib) took ~40% of a small layer's call.
    raw = f"{_cpu_model()}-torch{torch.__version__}-{isa_class()}-{threads}t"
    name = "".join(c if c.isalnum() or c in "-._" else "_" for c in raw)
    return cache_dir().parent / "tune" / f"{name}.json"


_loaded: dict[str, object] = {}


def load_tuned_table() -> dict[str, list[tuple[int | None, str]]] | None:
    """This machine's tuned table, or None (no cache, or a cache that does not parse)."""
    path = tune_cache_path()
    key = str(path)
    if key in _loaded:
        return _loaded[key]  # type: ignore[return-value]
    table = None
    if os.environ.get("LOWBIT_NO_TUNE_CACHE", "") in ("", "0") and path.is_file():
        try:
            data = json.loads(path.read_text())
            table = {
                op: [(None if e[0] is None else int(e[0]), str(e[1])) for e in entries]
                for op, entries in data["table"].items()
                if op in PATHS and all(e[1] in PATHS[op] for e in entries) and entries
            }
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            logger.warning("lowbit: ignoring the unreadable tune cache %s (%s); rerun lowbit.tune()", path, e)
            table = None
    _loaded[key] = table
    return table


def clear_tuned_cache() -> None:
    """Forget the tuned table loaded in this process (the file stays) and the paths chosen
    from it; the next linear reads ``$LOWBIT_CACHE_DIR`` / ``$LOWBIT_NO_TUNE_CACHE`` again."""
    _loaded.clear()
    _chosen.clear()
