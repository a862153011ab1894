"""The contract every packed format's conformance suite inherits (``FormatConformance``).

On top of the suite's round trips, a format class is checked for:

* ``torch.library.opcheck`` of the custom op its ``F.linear`` calls (schema, fake impl,
  AOT dispatch) and that op's presence in the ``torch.compile(fullgraph=True)`` graph;
* M = 0, 1-D, 3-D and non-contiguous inputs, in each supported activation dtype;
* save / load in a fresh process, bit-exact;
* ``.to()`` to every device present and back, codes preserved;
* fuzzed shapes (hypothesis: M 1..300, K a multiple of the group, N a multiple of the
  packing tile, every group size) against the pure-PyTorch reference, with the error
  bound the test class declares (``fuzz_min_sqnr``).

Devices: ``devices`` lists where the suite runs; ``kernel_devices`` (device types) says
where the format's kernel runs, so ``supports()`` must accept the weight there; on the
others (storage devices) the tensor is built and checked without that check and
``F.linear`` runs the reference op. No suite overrides ``build`` to bypass a skip.

``missing_conformance(tests_dir)`` lists the formats in ``format_registry`` that no test
class under ``tests_dir`` covers (a meta-test asserts it is empty).
"""

from __future__ import annotations

import ast
import math
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from functorch.compile import make_boxed_func
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import UnsupportedError
from ..primitives import sqnr
from ..serialization import load_file, save_file
from ..tensors.base import format_registry

__all__ = ["ContractMixin", "missing_conformance", "lowbit_ops_called"]

_FUZZ = settings(max_examples=4, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class _RecordLowbitOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "lowbit":
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def lowbit_ops_called(fn, *args):
    """``[(op overload, args, kwargs)]`` of the ``lowbit::`` ops ``fn(*args)`` calls.

    Under a dispatch mode ``ops.library.kernel`` hands out the custom op (not the eager
    fast path), so every kernel call shows up here."""
    with _RecordLowbitOps() as rec:
        fn(*args)
    return rec.calls


def present_devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        out.append("xpu")
    return out


def missing_conformance(tests_dir) -> list[str]:
    """Names of ``format_registry`` classes no ``tensor_cls = X`` test class covers."""
    covered = set()
    for path in pathlib.Path(tests_dir).rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    names = [getattr(t, "id", None) for t in stmt.targets] if isinstance(stmt, ast.Assign) else []
                    if "tensor_cls" in names and isinstance(stmt.value, ast.Name):
                        covered.add(stmt.value.id)
    return sorted(c.__name__ for c in format_registry.values()
                  if c.__module__.startswith("lowbit.") and c.__name__ not in covered)


_LOAD_IN_FRESH_PROCESS = """
import sys, torch, lowbit
sd = lowbit.load_file(sys.argv[1], "cpu")
torch.save(dict(sd), sys.argv[2])
"""


class ContractMixin:
    """Contract tests (see module docstring); mixed into ``FormatConformance``."""

    kernel_devices: ClassVar[tuple[str, ...] | None] = None  # None: every device in ``devices``
    # opcheck's checks; float8 formats leave out test_schema (it multiplies the inputs, which
    # CPU float8 does not implement).
    opcheck_test_utils: ClassVar[tuple[str, ...]] = (
        "test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    triton_op: ClassVar[bool] = False  # the format's op is a torch.library.triton_op (traced into)
    has_linear: ClassVar[bool] = True  # False for storage formats (F.linear raises)
    uses_lowbit_op: ClassVar[bool] = True  # F.linear goes through one lowbit:: custom op
    # ATen ops a compiled graph may call instead of that op, where the op's traced kernel
    # (ops/library.py register_traced_kernel) picks one at trace time.
    traced_ops: ClassVar[tuple] = ()
    # Device types the format can move to; a move elsewhere must raise UnsupportedError
    # naming why (None: every present device).
    movable_to: ClassVar[tuple[str, ...] | None] = None
    fuzz_group_sizes: ClassVar[tuple[int | None, ...]] = (None,)  # None: the format has no group
    fuzz_n_multiple: ClassVar[int] = 16  # N multiple of the packing tile
    fuzz_k_multiple: ClassVar[int] = 32  # K multiple besides the group
    fuzz_min_sqnr: ClassVar[float | None] = None  # dB vs reference_linear; None: min_linear_sqnr
    fresh_process_check: ClassVar[bool] = True  # False on a second suite of the same format (a process costs s)

    # ------------------------------------------------------------------ hooks

    def skip_unless_runs(self, weight, device) -> None:
        """Skip a kernel device whose ``supports()`` refuses ``weight``; storage devices build."""
        dev = torch.device(device)
        if dev.type not in present_devices():
            pytest.skip(f"no {dev.type} device on this machine")
        if self.kernel_devices is None or dev.type in self.kernel_devices:
            reason = self.tensor_cls.supports(weight, dev)
            if reason is not None:
                pytest.skip(f"{self.tensor_cls.__name__}: {reason}")

    def make_grouped(self, w, group_size):
        """The tensor for ``w`` with ``group_size`` (fuzzing); default ``from_float``."""
        if group_size is None:
            return self.make(w)
        return self.tensor_cls.from_float(w, group_size=group_size)

    def _contract_tensor(self, device):
        return self.build(self.shapes[0], device)

    def _need_linear(self):
        if not self.has_linear:
            pytest.skip(f"{self.tensor_cls.__name__} has no linear (storage format)")

    # ------------------------------------------------------------------ tests

    def test_contract_opcheck(self, device):
        self._need_linear()
        _, t = self._contract_tensor(device)
        x = torch.randn(3, t.shape[1]).to(self.weight_dtype).to(device)
        calls = lowbit_ops_called(F.linear, x, t)
        if not self.uses_lowbit_op:
            assert not calls, calls
            pytest.skip(f"{self.tensor_cls.__name__} computes with ATen ops, no lowbit op")
        assert len(calls) == 1, [c[0] for c in calls]
        op, args, kwargs = calls[0]
        torch.library.opcheck(op, args, kwargs, test_utils=self.opcheck_test_utils)

    def test_contract_op_in_compiled_graph(self, device):
        self._need_linear()
        if not self.uses_lowbit_op:
            pytest.skip(f"{self.tensor_cls.__name__} computes with ATen ops, no lowbit op")
        _, t = self._contract_tensor(device)
        x = torch.randn(2, t.shape[1]).to(self.weight_dtype).to(device)
        (op, _, _), = lowbit_ops_called(F.linear, x, t)
        graphs = []

        def fw(gm, _inputs):
            graphs.append(gm)
            return make_boxed_func(gm.forward)

        m = nn.Linear(t.shape[1], t.shape[0], bias=False, device=device)
        m.weight = nn.Parameter(t, requires_grad=False)
        if self.triton_op and torch.device(device).type != "cuda":
            pytest.skip("a torch.library.triton_op is traced into its (reference) body off CUDA")
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(m, fullgraph=True, backend=aot_autograd(fw_compiler=fw))(x)
        targets = {n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"}
        if self.triton_op:
            # triton_op exposes its kernels to the compiler: the graph holds the Triton launches.
            assert any("triton_kernel_wrapper" in str(t) for t in targets), (op, targets)
        else:
            assert op in targets or any(t in targets for t in self.traced_ops), (op, targets)

    def test_contract_input_ranks_and_strides(self, act_dtype, device):
        self._need_linear()
        _, t = self.build(self.shapes[0], device, act_dtype)
        n, k = t.shape
        bound = self.min_linear_sqnr
        x2 = torch.randn(5, k).to(act_dtype).to(device)
        y1 = F.linear(x2[0], t)  # 1-D input -> 1-D output, same numbers as one row
        assert y1.shape == (n,) and torch.equal(y1, F.linear(x2[:1], t)[0])
        y0 = F.linear(x2[:0], t)  # an empty batch (M = 0)
        assert y0.shape == (0, n) and y0.dtype == act_dtype
        strided = torch.randn(5, 2 * k).to(act_dtype).to(device)[:, ::2]  # non-contiguous rows
        transposed = torch.randn(k, 5).to(act_dtype).to(device).t()
        x3 = torch.randn(2, k, 3).to(act_dtype).to(device).transpose(1, 2)  # non-contiguous 3-D
        for x in (strided, transposed, x3):
            assert not x.is_contiguous()
            y = F.linear(x, t)
            ref = self.reference_linear(x.reshape(-1, k).contiguous(), t).reshape(*x.shape[:-1], n)
            assert y.shape == (*x.shape[:-1], n) and y.dtype == act_dtype
            assert sqnr(ref, y) >= bound, (tuple(x.stride()), sqnr(ref, y))

    def test_contract_fresh_process_load_is_bit_exact(self, device):
        if torch.device(device).type != "cpu" or not self.fresh_process_check:
            pytest.skip("one fresh-process check per format, on CPU (another suite of this format runs it)")
        _, t = self._contract_tensor(device)
        m = nn.Linear(t.shape[1], t.shape[0], bias=False)
        m.weight = nn.Parameter(t, requires_grad=False)
        with tempfile.TemporaryDirectory() as d:
            src, out = os.path.join(d, "m.safetensors"), os.path.join(d, "back.pt")
            save_file(m, src)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parents[2])] + sys.path))
            subprocess.run([sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, src, out], check=True, env=env,
                           capture_output=True, timeout=300)
            fresh = torch.load(out, weights_only=True)["weight"]
            here = load_file(src, "cpu")["weight"]
        for other in (here, t.to_checkpoint().from_checkpoint(torch.device("cpu"))):
            assert type(fresh) is type(other) and fresh._meta_key() == other._meta_key()
            for name in fresh.data_fields:
                a, b = getattr(fresh, name), getattr(other, name)
                assert (a is None and b is None) or torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name

    def test_contract_to_every_present_device(self, device):
        _, t = self._contract_tensor(device)
        want = t.dequantize(torch.float32).cpu()
        for d in present_devices():
            if self.movable_to is not None and torch.device(d).type not in self.movable_to:
                with pytest.raises(UnsupportedError, match="cannot move"):
                    t.to(d)
                continue
            moved = t.to(d)
            assert moved.device.type == torch.device(d).type
            back = moved.to(device)
            got = back.dequantize(torch.float32).cpu()
            # Bit-exact, except int zero points repacked for a float-zero-point kernel on
            # the way (rounded to bf16: at most 1/64 of a quantization step).
            assert torch.equal(want, got) or sqnr(want, got) >= 40.0, (d, sqnr(want, got))

    def test_contract_fuzzed_shapes_match_reference(self, device):
        self._need_linear()
        self._contract_tensor(device)  # skips where the format cannot run at all
        bound = self.fuzz_min_sqnr if self.fuzz_min_sqnr is not None else self.min_linear_sqnr

        @_FUZZ
        @given(
            m=st.integers(1, 300),
            group=st.sampled_from(self.fuzz_group_sizes),
            n_tiles=st.integers(1, 4),
            k_units=st.integers(1, 4),
            seed=st.integers(0, 2**16),
        )
        def check(m, group, n_tiles, k_units, seed):
            unit = group or 1
            k_unit = unit * self.fuzz_k_multiple // math.gcd(unit, self.fuzz_k_multiple)
            n, k = n_tiles * self.fuzz_n_multiple, k_units * k_unit
            g = torch.Generator().manual_seed(seed)
            w = (torch.randn(n, k, generator=g) * 0.02).to(self.weight_dtype).to(device)
            if self.kernel_devices is None or torch.device(device).type in self.kernel_devices:
                kw = {} if group is None else {"group_size": group}
                assert self.tensor_cls.supports(w, torch.device(device), **kw) is None, (n, k, group)
            t = self.make_grouped(w, group)
            x = torch.randn(m, k, generator=g).to(self.weight_dtype).to(device)
            y = F.linear(x, t)
            ref = self.reference_linear(x, t)
            assert y.shape == (m, n)
            assert sqnr(ref, y) >= bound, (m, n, k, group, sqnr(ref, y))

        check()

