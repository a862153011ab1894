"""The conformance suite every packed format's tests subclass.

A format's test module declares::

    class TestInt8WeightOnly(FormatConformance):
        tensor_cls = Int8Tensor
        shapes = [(64, 256), (96, 512)]        # (N, K) weights
        act_dtypes = [torch.bfloat16, torch.float32]
        min_linear_sqnr = 40.0                 # kernel vs reference linear, dB

and overrides ``make`` when ``from_float`` needs arguments. ``tests/conftest.py``
parametrizes ``shape``, ``act_dtype`` and ``device`` from these attributes, and skips a
device with the reason ``tensor_cls.supports`` gives (requirement-based skips).
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ..primitives import sqnr
from ..serialization import load_file, save_file
from ..tensors.base import LowbitTensor, UnsupportedOpError
from .bad_input import BadInputMatrix
from .contract import ContractMixin
from .weights import make_weight

__all__ = ["FormatConformance", "make_weight", "skip_unless_supported", "assert_same_tensor"]


def _skip_unless_device(device) -> None:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    if dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        pytest.skip("no Intel XPU on this machine")


def skip_unless_supported(tensor_cls: type[LowbitTensor], weight: torch.Tensor, device) -> None:
    """pytest.skip with ``tensor_cls.supports``'s reason if the format cannot run here."""
    _skip_unless_device(device)
    dev = torch.device(device)
    reason = tensor_cls.supports(weight, dev)
    if reason is not None:
        pytest.skip(f"{tensor_cls.__name__}: {reason}")


def assert_same_tensor(a: LowbitTensor, b: LowbitTensor) -> None:
    """Same class, metadata and bit-identical stored tensors."""
    assert type(a) is type(b), (type(a), type(b))
    assert a._meta_key() == b._meta_key(), (a, b)
    for n in a.data_fields:
        x, y = getattr(a, n), getattr(b, n)
        assert (x is None) == (y is None), n
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, (n, x.dtype, y.dtype, x.shape, y.shape)
            assert torch.equal(x.cpu().view(torch.uint8) if x.element_size() == 1 else x.cpu(), y.cpu().view(torch.uint8) if y.element_size() == 1 else y.cpu()), n


class FormatConformance(ContractMixin, BadInputMatrix):
    """Tests every packed format must pass (see module docstring)."""

    tensor_cls: ClassVar[type[LowbitTensor]]
    shapes: ClassVar[list[tuple[int, int]]] = [(64, 256), (96, 512)]
    act_dtypes: ClassVar[list[torch.dtype]] = [torch.bfloat16, torch.float32]
    weight_dtype: ClassVar[torch.dtype] = torch.bfloat16
    devices: ClassVar[list[str]] = ["cpu", "cuda"]
    batch_sizes: ClassVar[list[int]] = [1, 7, 33]
    min_linear_sqnr: ClassVar[float] = 40.0

    # ------------------------------------------------------------------ hooks

    def make(self, w: torch.Tensor) -> LowbitTensor:
        return self.tensor_cls.from_float(w)

    def build(self, shape, device, dtype=None) -> tuple[torch.Tensor, LowbitTensor]:
        _skip_unless_device(device)
        w = make_weight(shape, dtype or self.weight_dtype, "cpu").to(device)
        self.skip_unless_runs(w, device)
        return w, self.make(w)

    def reference_linear(self, x, t: LowbitTensor, bias=None):
        """The numerics the kernel must match: float32 linear on the dequantized weight."""
        y = F.linear(x.float(), t.dequantize(torch.float32), None if bias is None else bias.float())
        return y.to(x.dtype)

    # ------------------------------------------------------------------ tests

    def test_dequantize_shape_dtype(self, shape, device):
        w, t = self.build(shape, device)
        d = t.dequantize()
        assert d.shape == w.shape and d.dtype == w.dtype and d.device == w.device
        assert sqnr(w.float(), d.float()) > 15.0  # any working quantizer clears this

    def test_linear_matches_reference(self, shape, act_dtype, device):
        _, t = self.build(shape, device, act_dtype)
        g = torch.Generator().manual_seed(1)
        for m in self.batch_sizes:
            x = torch.randn(m, shape[1], generator=g).to(act_dtype).to(device)
            y = F.linear(x, t)
            ref = self.reference_linear(x, t)
            assert y.shape == (m, shape[0]) and y.dtype == act_dtype
            assert sqnr(ref, y) >= self.min_linear_sqnr, (m, sqnr(ref, y))

    def test_linear_3d_and_bias(self, shape, device):
        _, t = self.build(shape, device)
        x = torch.randn(2, 5, shape[1]).to(self.weight_dtype).to(device)
        bias = torch.randn(shape[0]).to(self.weight_dtype).to(device)
        y = F.linear(x, t, bias)
        ref = self.reference_linear(x.reshape(-1, shape[1]), t, bias).reshape(2, 5, shape[0])
        assert y.shape == (2, 5, shape[0])
        assert sqnr(ref, y) >= self.min_linear_sqnr

    def test_flatten_unflatten(self, shape, device):
        _, t = self.build(shape, device)
        names, meta = t.__tensor_flatten__()
        t2 = type(t).__tensor_unflatten__({n: getattr(t, n) for n in names}, meta, t.shape, t.stride())
        assert_same_tensor(t, t2)
        assert meta == {**{n: getattr(t, n) for n in t.meta_fields}, "shape": tuple(t.shape), "dtype": t.dtype}

    def test_flatten_reads_plain_attributes(self, shape, device, monkeypatch):
        # Dynamo's guards call __tensor_flatten__ before every compiled call: it must not
        # go through __torch_function__ (``t.shape``/``t.dtype`` would).
        _, t = self.build(shape, device)
        want = t.__tensor_flatten__()
        calls = []
        base = type(t).__torch_function__.__func__

        def counting(cls, func, types, args=(), kwargs=None):
            calls.append(func)
            return base(cls, func, types, args, kwargs)

        monkeypatch.setattr(type(t), "__torch_function__", classmethod(counting))
        assert t.__tensor_flatten__() == want and calls == []
        # A tensor unpickled from before the plain copies existed still flattens right.
        del t.__dict__["_lb_shape"], t.__dict__["_lb_dtype"]
        assert t.__tensor_flatten__() == want

    def test_detach_clone_to_copy(self, shape, device):
        _, t = self.build(shape, device)
        assert_same_tensor(t, t.detach())
        c = t.clone()
        assert_same_tensor(t, c)
        assert all(getattr(c, n).data_ptr() != getattr(t, n).data_ptr() for n in t.data_fields if getattr(t, n) is not None)
        assert_same_tensor(t, t.to(device))
        _, other = self.build(shape, device)
        dst = self.make(make_weight(shape, self.weight_dtype, "cpu", seed=7).to(device))
        dst.copy_(other)
        assert_same_tensor(dst, other)

    def test_unimplemented_op_names_class(self, shape, device):
        _, t = self.build(shape, device)
        with pytest.raises(UnsupportedOpError, match=type(t).__name__):
            torch.ops.aten.add.Tensor(t, t)

    def test_save_load_weights_only(self, shape, device):
        _, t = self.build(shape, device)
        m = nn.Linear(shape[1], shape[0], bias=False, device=device)
        m.weight = nn.Parameter(t, requires_grad=False)
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        buf.seek(0)
        sd = torch.load(buf, weights_only=True)
        assert_same_tensor(t, sd["weight"])

    def test_safetensors_round_trip(self, shape, device):
        _, t = self.build(shape, device)
        m = nn.Linear(shape[1], shape[0], bias=False, device=device)
        m.weight = nn.Parameter(t, requires_grad=False)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.safetensors")
            save_file(m, path)
            sd = load_file(path, device)
        loaded = sd["weight"]
        # The contract: a file loads as the checkpoint form repacked for the device (the
        # tensor itself for formats that run there; the device's format for others).
        expected = t.to_checkpoint().from_checkpoint(torch.device(device))
        assert_same_tensor(loaded, expected)
        x = torch.randn(3, shape[1]).to(self.weight_dtype).to(device)
        assert torch.equal(F.linear(x, loaded), F.linear(x, expected))
        if type(expected) is type(t):
            assert torch.equal(loaded.dequantize(), t.dequantize())

    def test_compile_matches_eager(self, shape, device):
        _, t = self.build(shape, device)
        m = nn.Linear(shape[1], shape[0], device=device, dtype=self.weight_dtype)
        m.weight = nn.Parameter(t, requires_grad=False)
        x = torch.randn(4, shape[1]).to(self.weight_dtype).to(device)
        torch._dynamo.reset()
        with torch.no_grad():
            eager = m(x)
            compiled = torch.compile(m, fullgraph=True)(x)
        assert torch.allclose(compiled.float(), eager.float(), rtol=1e-2, atol=1e-2), (compiled - eager).abs().max()
        assert sqnr(eager, compiled) >= 40.0
