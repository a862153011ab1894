"""``lowbit.tune_cuda()``: measure this GPU's crossovers between lowbit's CUDA paths and cache them.

Each CUDA op with two paths switches at a batch size M (lowbit/ops/cuda.py):

* ``CUDA_W8A16_TRITON_MAX_M``: int8/float8 weight-only, Triton GEMV/tile kernel up to
  M, dequantize + cuBLAS above;
* ``CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M`` (sm89+): float8 row-wise dynamic, Triton e4m3
  GEMM up to M, ``torch._scaled_mm`` above;
* ``CUDA_INT4_TILED_MAX_M``: int4 tiled, ATen's tinygemm up to M, Triton dequantize +
  cuBLAS above.

Both paths of each op are timed at every M on a layer of the given shape, each call a
replay of a CUDA graph over rotated weight copies (cold weights, no launch overhead),
next to bf16 ``F.linear``. The crossover (the largest M up to which the first path is
never slower) is saved as JSON under the cache directory, one file per GPU name,
compute capability and torch version, and ``lowbit/ops/cuda.py`` uses it instead of
its H200 table from then on, in this and later processes.

    lowbit tune --device cuda --shape 4096x4096
"""

from __future__ import annotations

import json
import logging
import statistics
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .errors import UnsupportedError
from .ops.cuda import _index, cuda_tune_cache_path, load_cuda_tuned
from .tune import path_time_table

__all__ = ["CudaTuneResult", "cuda_tune_cache_path", "format_cuda_tune_result", "load_cuda_tuned", "tune_cuda"]

logger = logging.getLogger(__name__)

DEFAULT_MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# threshold name -> (op timed, the dtype of its codes, minimum compute capability)
THRESHOLDS = {
    "CUDA_W8A16_TRITON_MAX_M": ("int8_weight_only_linear", "int8", (8, 0)),
    "CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M": ("float8_dynamic_linear", "float8", (8, 9)),
    "CUDA_INT4_TILED_MAX_M": ("int4_tiled_cuda_mm", "int4", (8, 0)),
}
_FORCE_FIRST, _FORCE_SECOND = 1 << 30, 0  # threshold values that pin one path at every M


@dataclass
class CudaTuneResult:
    gpu: str
    arch: str
    torch_version: str
    shape: tuple[int, int]  # (N, K)
    ms: list[int]
    bf16_us: list[float]
    times_us: dict[str, dict[str, list[float]]]  # threshold -> path ("first"/"second") -> per M
    thresholds: dict[str, int]
    slower_than_bf16: dict[str, list[int]] = field(default_factory=dict)  # threshold -> Ms
    path: str | None = None


def _weights(kind: str, n: int, k: int, device, gen) -> tuple:
    w = (torch.randn(n, k, device=device, generator=gen) * 0.02).to(torch.bfloat16)
    if kind == "int4":
        from .tensors import Int4TiledCudaTensor

        t = Int4TiledCudaTensor.from_float(w, group_size=128)
        return (t.qdata, t.scale_and_zero, 128)
    scale = (w.abs().amax(dim=1, keepdim=True).float() / (127.0 if kind == "int8" else 448.0)).clamp(min=1e-8)
    q = (w.float() / scale)
    q = q.round().clamp(-127, 127).to(torch.int8) if kind == "int8" else q.to(torch.float8_e4m3fn)
    return (q, scale)


def _graph_us(calls, reps: int) -> float:
    """Median microseconds per call of ``calls`` (one per weight copy), replayed in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for c in calls:  # warm-up outside the graph: Triton compiles, cuBLAS picks kernels
            c()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times)


def tune_cuda(
    shape: tuple[int, int] = (4096, 4096),
    ms: tuple[int, ...] = DEFAULT_MS,
    device: torch.device | str | int | None = None,
    cold_mib: int = 512,
    reps: int = 5,
    save: bool = True,
) -> CudaTuneResult:
    """Time both paths of each CUDA op at each M on an ``shape`` (N, K) layer; save and return the crossovers."""
    n, k = shape
    if n < 1 or k < 1 or n % 64 or k % 128:
        raise ValueError(f"lowbit.tune_cuda: shape must be (N a multiple of 64, K a multiple of 128), got {shape}")
    if not ms or any(m < 1 for m in ms):
        raise ValueError(f"lowbit.tune_cuda: ms must be positive batch sizes, got {ms}")
    if not torch.cuda.is_available():
        raise UnsupportedError("lowbit tune --device cuda needs a CUDA GPU; none is visible to this torch "
                               f"({torch.__version__}); run it on the machine that will serve the model")
    from .ops import cuda as cuda_ops

    index = _index(device)
    dev = torch.device("cuda", index)
    arch = cuda_ops._arch(index)
    cap = torch.cuda.get_device_capability(index)
    gen = torch.Generator(device=dev).manual_seed(0)
    ms = sorted(set(ms))
    w = (torch.randn(n, k, device=dev, generator=gen) * 0.02).to(torch.bfloat16)
    copies_bf16 = max(2, min(64, (cold_mib << 20) // w.nbytes))
    wb = [w.clone() for _ in range(copies_bf16)]
    xs = {m: torch.randn(m, k, device=dev, generator=gen).to(torch.bfloat16) for m in ms}
    bf16_us = [_graph_us([lambda x=xs[m], wc=wc: F.linear(x, wc) for wc in wb], reps) for m in ms]
    del wb
    times: dict[str, dict[str, list[float]]] = {}
    with warnings.catch_warnings():
        _time_paths(times, ms, xs, n, k, dev, gen, arch, cap, cold_mib, reps, cuda_ops)
    thresholds, slower = {}, {}
    for name, paths in times.items():
        top = 0
        for i, m in enumerate(ms):
            if paths["first"][i] <= paths["second"][i]:
                top = m
            else:
                break
        thresholds[name] = top
        best = [min(paths["first"][i], paths["second"][i]) for i in range(len(ms))]
        slow = [m for i, m in enumerate(ms) if best[i] > bf16_us[i]]
        if slow:
            slower[name] = slow
            logger.warning("lowbit.tune_cuda: %s's op is slower than bf16 F.linear at M=%s on this GPU",
                           THRESHOLDS[name][0], slow)
    result = CudaTuneResult(gpu=torch.cuda.get_device_name(index), arch=arch, torch_version=torch.__version__,
                            shape=(n, k), ms=ms, bf16_us=bf16_us, times_us=times, thresholds=thresholds,
                            slower_than_bf16=slower)
    if save:
        path = cuda_tune_cache_path(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(result), indent=1))
        tmp.replace(path)
        result.path = str(path)
        cuda_ops.apply_tuned_thresholds(index, reload=True)
        logger.info("lowbit.tune_cuda: thresholds saved to %s", path)
    return result


def _time_paths(times, ms, xs, n, k, dev, gen, arch, cap, cold_mib, reps, cuda_ops) -> None:
    """Both paths of each threshold at each M (each pinned by setting the threshold), into ``times``."""
    for name, (op, kind, min_cap) in THRESHOLDS.items():
        if cap < min_cap:
            logger.info("lowbit.tune_cuda: %s skipped (needs compute capability %s, this GPU has %s)", name, min_cap, cap)
            continue
        args0 = _weights(kind, n, k, dev, gen)
        nbytes = sum(a.nbytes for a in args0 if isinstance(a, torch.Tensor))
        copies = max(2, min(64, (cold_mib << 20) // nbytes))
        argsets = [args0] + [tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args0)
                             for _ in range(copies - 1)]
        kernel = getattr(cuda_ops, op)
        table = getattr(cuda_ops, name)
        old = table.get(arch)
        times[name] = {}
        try:
            warnings.simplefilter("ignore", RuntimeWarning)  # the ops' "slower than bf16" notes: timing says it
            for path, pin in (("first", _FORCE_FIRST), ("second", _FORCE_SECOND)):
                table[arch] = pin
                times[name][path] = [_graph_us([lambda x=xs[m], a=a, f=kernel: f(x, *a) for a in argsets], reps)
                                     for m in ms]
        finally:
            if old is None:
                table.pop(arch, None)
            else:
                table[arch] = old
        del argsets


def format_cuda_tune_result(r: CudaTuneResult) -> str:
    """Markdown: per op, both paths' time per M and the ratio to bf16 F.linear; the crossovers."""
    lines = [
        f"# lowbit tune --device cuda: {r.gpu} ({r.arch}), torch {r.torch_version}, N x K = {r.shape[0]} x {r.shape[1]}",
        "",
        "CUDA-graph replays over rotated weight copies (cold weights).",
        "",
        *path_time_table("threshold", r.ms, r.bf16_us, r.times_us, ",.1f"),
    ]
    lines += ["", "Crossovers (first path up to M):", ""]
    lines += [f"- {name} = {m}" for name, m in r.thresholds.items()]
    for name, slow in r.slower_than_bf16.items():
        lines.append(f"- SLOWER than bf16 F.linear: {THRESHOLDS[name][0]} at M = {slow}")
    if r.path:
        lines.append(f"\nSaved to {r.path}")
    return "\n".join(lines)
