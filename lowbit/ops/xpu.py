"""Intel GPU (XPU) kernels of lowbit's ops: PyTorch's ATen int4 kernels for XPU.

UNTESTED ON HARDWARE: no Intel GPU was available when these were written. The layouts
they assume are documented (with their sources) in ``lowbit/packing/int4_xpu.py``, and
the pure-PyTorch references in ``reference.py`` are tested on CPU. The kernels are only
reached when the tensors live on an ``xpu`` device.
"""

from __future__ import annotations

import torch

from .library import register_device_kernel

aten = torch.ops.aten

# Activation dtypes the XPU int4 kernels take directly; float32 is cast to the scale dtype.
_XPU_ACT_DTYPES = (torch.float16, torch.bfloat16)


def _register(name):
    return register_device_kernel(name, "xpu")


def _act(x, param_dtype):
    return (x if x.dtype in _XPU_ACT_DTYPES else x.to(param_dtype)).contiguous()


@_register("int4_xpu_mm")
def int4_xpu_mm(x, qdata, scale, zero_point, group_size):
    xa = _act(x, scale.dtype)
    y = aten._weight_int4pack_mm_with_scales_and_zeros(xa, qdata, group_size, scale.to(xa.dtype), zero_point)
    return y.to(x.dtype)


@_register("int4_xpu_float_zp_mm")
def int4_xpu_float_zp_mm(x, qdata, scale_and_zero, group_size):
    xa = _act(x, scale_and_zero.dtype)
    y = aten._weight_int4pack_mm(xa, qdata, group_size, scale_and_zero.to(xa.dtype))
    return y.to(x.dtype)
