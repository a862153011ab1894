"""The bad-input matrix every packed format's conformance tests inherit.

``BadInputMatrix`` (mixed into ``FormatConformance``) feeds each format's ``F.linear``
what careless or adversarial callers pass: M = 0, 0-D/1-D/3-D/4-D inputs, transposed,
sliced and stride-0 inputs, K tails (K % 16, K % 32 != 0), misaligned storage (data
pointer 8 bytes off, as safetensors files can give), every activation dtype, NaN/Inf
rows. The expected result is the reference output or a clear ``ValueError``/``TypeError``,
never a crash or garbage.

The memory-safety cases (layouts, K tails, misaligned weights and activations) run in a
fresh interpreter (``run_isolated``): a kernel that segfaults fails that format's test
instead of killing the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from ..primitives import sqnr
from ..tensors.base import UnsupportedOpError
from .weights import make_weight

__all__ = ["BadInputMatrix", "misaligned", "run_isolated"]

# safetensors aligns tensor data to 8 bytes; 8 is the offset that real files produce.
MISALIGN_BYTES = 8


def misaligned(t: torch.Tensor, offset: int = MISALIGN_BYTES) -> torch.Tensor:
    """A contiguous copy of ``t`` whose data pointer is ``offset`` bytes past a 64-byte boundary."""
    nbytes = t.numel() * t.element_size()
    raw = torch.empty(nbytes + 64 + offset, dtype=torch.uint8, device=t.device)
    start = (-raw.data_ptr()) % 64 + offset  # first byte at 64k + offset
    out = raw[start:start + nbytes].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


def run_isolated(code: str, env: dict[str, str] | None = None, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run ``code`` with this interpreter in a subprocess (cwd and ``sys.path`` kept)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=full_env, timeout=timeout
    )


# K tails tried by the memory-safety matrix (K % 16 and K % 32 != 0, and aligned ones).
K_TAILS = (100, 104, 120, 136, 264)
# Batch rows of the memory-safety matrix: both sides of the kernels' GEMV/GEMM switches.
RISKY_M = (1, 3, 17)
# What a refused input may raise (lowbit's UnsupportedError is a ValueError).
_CLEAR_ERRORS = (ValueError, TypeError)

_ISOLATED = r"""
import importlib, json, sys
sys.path[:0] = {path!r}
cls = getattr(importlib.import_module({module!r}), {name!r})
print("RESULT " + json.dumps(cls()._memory_safety_results({device!r})))
"""


class BadInputMatrix:
    """Bad-input tests for ``FormatConformance`` subclasses (uses ``build``, ``make``,
    ``reference_linear``, ``shapes``, ``min_linear_sqnr`` and ``weight_dtype``)."""

    # Dtypes offered as activations: each must give a correct output or a clear error.
    bad_input_act_dtypes: ClassVar[tuple] = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32)
    # True where one activation scale covers the whole batch (NaN/Inf rows then reach every row).
    per_tensor_activation_scale: ClassVar[bool] = False

    # ------------------------------------------------------------------ helpers

    def _bad_input_setup(self, device):
        shape = self.shapes[0]
        _, t = self.build(shape, device)
        try:
            F.linear(torch.zeros(1, shape[1], dtype=self.weight_dtype, device=device), t)
        except UnsupportedOpError as e:
            pytest.skip(f"{type(t).__name__} has no linear (storage format): {e}")
        return shape, t

    def _check_or_refused(self, x, t, bias=None, what="") -> str:
        """'ok' if F.linear matches the reference, 'refused' on a clear error; else fails."""
        try:
            y = F.linear(x, t, bias)
        except _CLEAR_ERRORS:
            return "refused"
        ref = self.reference_linear(x.contiguous(), t, bias)
        assert y.shape == ref.shape and y.dtype == ref.dtype, (what, y.shape, ref.shape, y.dtype, ref.dtype)
        if y.numel():
            s = float(sqnr(ref.float(), y.float()))
            assert s >= self.min_linear_sqnr, f"{what}: SQNR {s:.1f} dB vs the reference"
        return "ok"

    # ------------------------------------------------------------------ in-process cases

    @pytest.mark.parametrize("lead", [(0,), (2, 0), (0, 3)], ids=["m0", "2x0", "0x3"])
    def test_bad_input_empty_batch(self, device, lead):
        shape, t = self._bad_input_setup(device)
        x = torch.randn(*lead, shape[1]).to(self.weight_dtype).to(device)
        bias = torch.randn(shape[0]).to(self.weight_dtype).to(device)
        y = F.linear(x, t, bias)
        assert y.shape == (*lead, shape[0]) and y.dtype == x.dtype

    @pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 2, 3)], ids=["1d", "2d", "3d", "4d"])
    def test_bad_input_rank(self, device, lead):
        shape, t = self._bad_input_setup(device)
        x = torch.randn(*lead, shape[1]).to(self.weight_dtype).to(device)
        assert self._check_or_refused(x, t, what=f"input {tuple(x.shape)}") == "ok"

    def test_bad_input_zero_d(self, device):
        _, t = self._bad_input_setup(device)
        with pytest.raises(ValueError, match="0-D"):
            F.linear(torch.tensor(1.0, dtype=self.weight_dtype, device=device), t)

    def test_bad_input_wrong_features(self, device):
        shape, t = self._bad_input_setup(device)
        with pytest.raises(_CLEAR_ERRORS):
            F.linear(torch.randn(2, shape[1] + 16).to(self.weight_dtype).to(device), t)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32],
                             ids=["float32", "float16", "bfloat16", "float64", "int32"])
    def test_bad_input_activation_dtype(self, device, dtype):
        shape, t = self._bad_input_setup(device)
        x = (torch.randn(3, shape[1]) * (1 if dtype.is_floating_point else 10)).to(dtype).to(device)
        if not dtype.is_floating_point:
            with pytest.raises(TypeError):
                F.linear(x, t)
            return
        self._check_or_refused(x, t, what=f"{dtype} input")

    def test_bad_input_nonfinite_rows_stay_in_their_rows(self, device):
        # A NaN/Inf row may give NaN in that row only (per-token activation quantization
        # included); every finite row must still match the reference.
        if self.per_tensor_activation_scale:
            pytest.skip("one activation scale for the whole batch: a NaN/Inf anywhere reaches every row")
        shape, t = self._bad_input_setup(device)
        x = torch.randn(4, shape[1]).to(self.weight_dtype).to(device)
        x[1, 3] = float("nan")
        x[2, 5] = float("inf")
        try:
            y = F.linear(x, t)
        except _CLEAR_ERRORS:
            return
        finite = [0, 3]
        ref = self.reference_linear(x[finite], t)
        assert torch.isfinite(y[finite]).all()
        assert float(sqnr(ref.float(), y[finite].float())) >= self.min_linear_sqnr

    # ------------------------------------------------------------------ memory safety (isolated)

    def _memory_safety_results(self, device) -> dict[str, str]:
        """Run every memory-safety case here; {case: 'ok' | 'refused' | 'FAIL ...'}."""
        out: dict[str, str] = {}

        def case(name, fn):
            try:
                out[name] = fn()
            except AssertionError as e:
                out[name] = f"FAIL {e}"
            except Exception as e:  # noqa: BLE001 - reported as a failure of this case
                out[name] = f"FAIL {type(e).__name__}: {str(e)[:300]}"

        shape, t = self._bad_input_setup(device)
        n, k = shape
        dt = self.weight_dtype
        big = torch.randn(8, 2 * k + 16).to(dt).to(device)
        layouts = {
            "transposed": lambda: torch.randn(k, 5).to(dt).to(device).t(),
            "row-sliced": lambda: big[1:6, :k],
            "col-sliced": lambda: big[:5, 16:16 + k],
            "strided-cols": lambda: big[:5, : 2 * k : 2],
            "stride0-rows": lambda: torch.randn(1, k).to(dt).to(device).expand(5, k),
            "misaligned-x": lambda: misaligned(torch.randn(5, k).to(dt).to(device)),
        }
        for name, make_x in layouts.items():
            case(name, lambda make_x=make_x, name=name: self._check_or_refused(make_x(), t, what=name))
        # Misaligned stored tensors (a weight read from a safetensors file).
        fields = {f: getattr(t, f) for f in t.data_fields if getattr(t, f) is not None}
        t_mis = t._replace(lambda v: misaligned(v) if v.numel() else v)
        assert all(getattr(t_mis, f).data_ptr() % 64 == 8 for f in fields if fields[f].numel())
        for m in RISKY_M:
            x = torch.randn(m, k).to(dt).to(device)
            case(f"misaligned-weight-m{m}", lambda x=x, m=m: self._check_or_refused(x, t_mis, what=f"misaligned weight M={m}"))
        for kt in K_TAILS:
            def tail(kt=kt):
                w = make_weight((n, kt), dt, "cpu").to(device)
                if type(t).supports(w, torch.device(device)) is not None:
                    return "refused"
                try:
                    tt = self.make(w)
                except _CLEAR_ERRORS:
                    return "refused"
                for m in RISKY_M:
                    self._check_or_refused(torch.randn(m, kt).to(dt).to(device), tt, what=f"K={kt} M={m}")
                return "ok"
            case(f"k{kt}", tail)
        return out

    def test_bad_input_memory_safety_isolated(self, device):
        """Layouts, K tails and misaligned storage, in a subprocess (a segfault fails here)."""
        self._bad_input_setup(device)  # skips where the format cannot run
        test_dir = os.path.dirname(os.path.abspath(sys.modules[type(self).__module__].__file__))
        code = _ISOLATED.format(path=[test_dir], module=type(self).__module__, name=type(self).__name__, device=device)
        proc = run_isolated(code)
        assert proc.returncode == 0, (
            f"{type(self).__name__}: the memory-safety matrix died with rc={proc.returncode} "
            f"(negative: killed by signal {-proc.returncode})\n{proc.stderr[-3000:]}"
        )
        results = json.loads(proc.stdout.split("RESULT ", 1)[1])
        failed = {k: v for k, v in results.items() if v not in ("ok", "refused")}
        assert not failed, failed
        assert results.get("misaligned-weight-m1") == "ok", results  # storage must not be refused
