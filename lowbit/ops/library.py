"""Schemas and fake (meta) implementations of lowbit's custom ops, in one place.

One section per op family (int8, int4 weight-only, DA8W4). Each op's pure-PyTorch
implementation is in ``reference.py``, its device kernels in ``cpu.py``/``cuda.py``/``xpu.py``.
"""

from __future__ import annotations

import torch

__all__ = ["define", "kernel", "register_device_kernel", "register_traced_kernel"]

_LIB = torch.library.Library("lowbit", "DEF")  # noqa: TOR901 - lowbit owns this namespace


def define(schema: str):
    """Define ``lowbit::<schema>`` and register the decorated function as its fake impl."""
    name = schema.split("(", 1)[0]
    _LIB.define(schema)

    def decorator(fake):
        torch.library.register_fake(f"lowbit::{name}", lib=_LIB)(fake)
        return fake

    return decorator


# (op, device type) -> the Python kernel registered for it (ops/cpu.py, cuda.py, xpu.py),
# keyed by the op handle (``torch.ops.lowbit.<name>``) the tensors call.
_DEVICE_KERNELS: dict[tuple[object, str], object] = {}


def register_device_kernel(name: str, device_type: str):
    """Register ``fn`` as ``lowbit::<name>``'s kernel for ``device_type`` (and remember it)."""

    def decorator(fn):
        torch.library.register_kernel(f"lowbit::{name}", device_type)(fn)
        _DEVICE_KERNELS[(getattr(torch.ops.lowbit, name), device_type)] = fn
        return fn

    return decorator


# (op, device type) -> what a traced (torch.compile) graph records instead of the opaque
# custom op: a function that picks the kernel at trace time and calls it directly.
_TRACED_KERNELS: dict[tuple[object, str], object] = {}


def register_traced_kernel(name: str, device_type: str):
    """Register ``fn`` as what torch.compile graphs record for ``lowbit::<name>`` on
    ``device_type``: ``fn`` takes the op's arguments, decides the path from static facts
    (shapes, dtypes, the dispatch table) and calls an ATen/extension op that has a fake
    implementation, or the custom op itself where it cannot decide. The graph then calls
    the kernel directly, without the Python body of the op on every step."""

    def decorator(fn):
        _TRACED_KERNELS[(getattr(torch.ops.lowbit, name), device_type)] = fn
        return fn

    return decorator


def kernel(op, device_type: str):
    """What a packed tensor's linear calls for ``op`` (``torch.ops.lowbit.<name>``; a name
    string also works). Eager: the device's Python kernel directly, which skips 20-35 us
    of dispatcher hops per call (measured on a 2-core Zen3; a third of a small layer's
    time at M=1). Under torch.compile: the op's traced kernel where one is registered
    (:func:`register_traced_kernel`), else the custom op (its fake impl lets the graph
    capture it)."""
    if isinstance(op, str):
        op = getattr(torch.ops.lowbit, op)
    # Any tracing (dynamo, or AOT's fake/proxy/functional dispatch modes, which on torch
    # 2.11 re-run the subclass code with is_compiling() False) must see a traceable call.
    if torch.compiler.is_compiling():
        return _TRACED_KERNELS.get((op, device_type), op)
    if torch._C._len_torch_dispatch_stack():
        # A compile's AOT tracing (a tracing context is set) records the traced kernel;
        # any other dispatch mode (a user's, a test's op recorder) sees the custom op.
        tracing = torch._guards.TracingContext.try_get() is not None
        return _TRACED_KERNELS.get((op, device_type), op) if tracing else op
    return _DEVICE_KERNELS.get((op, device_type), op)


def _linear_out(x, n):
    return x.new_empty((x.shape[0], n))


# ---------------------------------------------------------------------- int8


# x [M, K] float, qdata [N, K] int8, scale [N, 1] float32 -> [M, N] in x.dtype
@define("int8_weight_only_linear(Tensor x, Tensor qdata, Tensor scale) -> Tensor")
def _int8_weight_only_linear_fake(x, qdata, scale):
    torch._check(x.dim() == 2 and qdata.dim() == 2, lambda: "x and qdata must be 2-D")
    torch._check(x.shape[1] == qdata.shape[1], lambda: f"K mismatch: x {x.shape}, qdata {qdata.shape}")
    return _linear_out(x, qdata.shape[0])


# Same operands; x is quantized per token to int8 inside the op.
@define("int8_dynamic_linear(Tensor x, Tensor qdata, Tensor scale) -> Tensor")
def _int8_dynamic_linear_fake(x, qdata, scale):
    torch._check(x.dim() == 2 and qdata.dim() == 2, lambda: "x and qdata must be 2-D")
    torch._check(x.shape[1] == qdata.shape[1], lambda: f"K mismatch: x {x.shape}, qdata {qdata.shape}")
    return _linear_out(x, qdata.shape[0])


# ---------------------------------------------------------------------- int4 weight-only
# All take x [M, K] float and return [M, N] in x.dtype; the weight layouts are in
# lowbit/packing/int4.py, int4_tiled.py, int4_marlin.py and int4_xpu.py.


def _int4_out(x, n, k):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D [M, K], got {x.dim()}-D")
    torch._check(x.shape[1] == k, lambda: f"K mismatch: x has {x.shape[1]} columns, the weight has K={k}")
    return x.new_empty((x.shape[0], n))


# qdata int32 [N/8, K/(ikt*16), 32, ikt/2], scale_and_zero bf16 [K/gs, N, 2]
@define("int4_tiled_cuda_mm(Tensor x, Tensor qdata, Tensor scale_and_zero, int group_size) -> Tensor")
def _int4_tiled_cuda_mm_fake(x, qdata, scale_and_zero, group_size):
    torch._check(qdata.dim() == 4, lambda: "qdata must be the 4-D tiled layout")
    return _int4_out(x, qdata.shape[0] * 8, qdata.shape[1] * qdata.shape[3] * 2 * 16)


# qdata int32 [K/16, 2N], scale [K/gs, N] (Marlin order), zero_point int32 [K/gs, N/8]
@define("int4_marlin_mm(Tensor x, Tensor qdata, Tensor scale, Tensor zero_point, int group_size) -> Tensor")
def _int4_marlin_mm_fake(x, qdata, scale, zero_point, group_size):
    torch._check(qdata.dim() == 2, lambda: "qdata must be 2-D [K/16, 2N]")
    return _int4_out(x, qdata.shape[1] // 2, qdata.shape[0] * 16)


# qdata int32 [N, K/8], scale [K/gs, N], zero_point int8 [K/gs, N]
@define("int4_xpu_mm(Tensor x, Tensor qdata, Tensor scale, Tensor zero_point, int group_size) -> Tensor")
def _int4_xpu_mm_fake(x, qdata, scale, zero_point, group_size):
    torch._check(qdata.dim() == 2, lambda: "qdata must be 2-D [N, K/8]")
    return _int4_out(x, qdata.shape[0], qdata.shape[1] * 8)


# qdata int32 [N, K/8], scale_and_zero [K/gs, N, 2]
@define("int4_xpu_float_zp_mm(Tensor x, Tensor qdata, Tensor scale_and_zero, int group_size) -> Tensor")
def _int4_xpu_float_zp_mm_fake(x, qdata, scale_and_zero, group_size):
    torch._check(qdata.dim() == 2, lambda: "qdata must be 2-D [N, K/8]")
    return _int4_out(x, qdata.shape[0], qdata.shape[1] * 8)


# Groupwise int4, float zero point, tinygemm CPU layout (lowbit/tensors/int4_tinygemm_cpu.py).
# x [M, K] float; qdata uint8 [Np, K // 2] packed for `layout` (Np = N rounded up to 16);
# scale_and_zero [K // group_size, Np, 2] float -> [M, out_features] in x.dtype.
@define(
    "int4_tinygemm_cpu_linear(Tensor x, Tensor qdata, Tensor scale_and_zero, int group_size, "
    "int out_features, str layout) -> Tensor"
)
def _int4_tinygemm_cpu_linear_fake(x, qdata, scale_and_zero, group_size, out_features, layout):
    torch._check(x.dim() == 2 and qdata.dim() == 2, lambda: "x and qdata must be 2-D")
    torch._check(x.shape[1] == 2 * qdata.shape[1], lambda: f"K mismatch: x {x.shape}, qdata {qdata.shape}")
    torch._check(
        scale_and_zero.dim() == 3 and scale_and_zero.shape[1] == qdata.shape[0],
        lambda: f"scale_and_zero must be [K // group_size, {qdata.shape[0]}, 2], got {scale_and_zero.shape}",
    )
    torch._check(out_features <= qdata.shape[0], lambda: f"out_features {out_features} > packed rows {qdata.shape[0]}")
    return _linear_out(x, out_features)


# ---------------------------------------------------------------------- DA8W4


# DA8W4 (lowbit/tensors/int4_vnni_cpu.py): x [M, K] float32/bfloat16 is quantized per
# token to 8 bits inside the op; qdata uint8 [N/16, K/8, 64] packed int4 codes; scale
# float32, zero_point uint8, qsum int32, each [N/16, K/group_size, 16]. -> [M, N] in x.dtype
@define(
    "da8w4_linear(Tensor x, Tensor qdata, Tensor scale, Tensor zero_point, Tensor qsum, "
    "int group_size, str act_mapping) -> Tensor"
)
def _da8w4_linear_fake(x, qdata, scale, zero_point, qsum, group_size, act_mapping):
    torch._check(
        x.dim() == 2 and qdata.dim() == 3, lambda: f"x must be 2-D and qdata 3-D, got {x.dim()}, {qdata.dim()}"
    )
    torch._check(
        x.dtype in (torch.float32, torch.bfloat16), lambda: f"x must be float32 or bfloat16, got {x.dtype}"
    )
    torch._check(x.shape[1] == qdata.shape[1] * 8, lambda: f"K mismatch: x {x.shape}, qdata {qdata.shape}")
    torch._check(
        act_mapping in ("asymmetric", "symmetric"),
        lambda: f"act_mapping must be 'asymmetric' or 'symmetric', got {act_mapping!r}",
    )
    return x.new_empty((x.shape[0], qdata.shape[0] * 16))


# ---------------------------------------------------------------------- float8 (e4m3) formats
# lowbit/tensors/float8.py. x [M, K] float; qdata float8_e4m3fn [N, K] -> [M, N] in x.dtype.
# Weight-only: scale float32 [N, 1]. Dynamic row-wise: x quantized per token to e4m3 inside
# the op, scale [N, 1]. Dynamic per-tensor: x quantized with one scale, scale [1, 1].


def _float8_linear_fake(x, qdata, scale):
    torch._check(x.dim() == 2 and qdata.dim() == 2, lambda: "x and qdata must be 2-D")
    torch._check(x.shape[1] == qdata.shape[1], lambda: f"K mismatch: x {x.shape}, qdata {qdata.shape}")
    torch._check(qdata.dtype == torch.float8_e4m3fn, lambda: f"qdata must be float8_e4m3fn, got {qdata.dtype}")
    return _linear_out(x, qdata.shape[0])


for _name in ("float8_weight_only_linear", "float8_dynamic_linear", "float8_dynamic_per_tensor_linear"):
    define(f"{_name}(Tensor x, Tensor qdata, Tensor scale) -> Tensor")(_float8_linear_fake)
