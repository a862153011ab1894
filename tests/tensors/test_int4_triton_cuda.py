"""Int4TritonCudaTensor: conformance on CUDA (Triton kernels) and stored on CPU (reference
op), checkpoint round trips through Int4PlainTensor, config/auto selection, errors."""

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.configs.int4 import int4_class_for
from lowbit.tensors import Int4PlainTensor, Int4TritonCudaTensor
from lowbit.testing import FormatConformance, make_weight


class TestInt4TritonCuda(FormatConformance):
    tensor_cls = Int4TritonCudaTensor
    triton_op = True
    fuzz_group_sizes = (32, 64, 128, 256)
    fuzz_n_multiple = 8  # N % 8 (32-byte rows of int32 words)
    shapes = [(64, 256), (96, 320), (256, 1024)]  # K = 320: padded to 384 inside qdata
    devices = ["cuda"]
    act_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    batch_sizes = [1, 3, 8, 9, 33, 300]  # GEMV, tensor-core split-K, large-M tiles
    min_linear_sqnr = 42.0

    def make(self, w):
        return Int4TritonCudaTensor.from_float(w, group_size=64)  # divides K = 320


class TestInt4TritonCudaStoredOnCpu(FormatConformance):
    """Stored on CPU (build, save, load); F.linear runs the reference op there."""

    tensor_cls = Int4TritonCudaTensor
    shapes = [(64, 256), (24, 320)]
    devices = ["cpu"]
    kernel_devices = ("cuda",)
    triton_op = True
    fuzz_group_sizes = (32, 64, 128, 256)
    fuzz_n_multiple = 8  # N % 8 (32-byte rows of int32 words)
    batch_sizes = [1, 7]
    min_linear_sqnr = 45.0

    def make(self, w):
        return Int4TritonCudaTensor.from_float(w, group_size=64)


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_codes_round_trip_bit_exact(group_size):
    w = make_weight((48, 512))
    t = Int4TritonCudaTensor.from_float(w, group_size=group_size)
    codes, scale, zero = t.to_codes()
    t2 = Int4TritonCudaTensor.from_codes(codes, scale, zero, group_size=group_size, shape=w.shape, dtype=w.dtype)
    assert all(torch.equal(getattr(t, f), getattr(t2, f)) for f in t.data_fields)
    ref = lowbit.ops.reference.dequantize_int4_float_zp(codes, scale, zero, group_size)
    assert torch.equal(t.dequantize(torch.float32), ref)


def test_checkpoint_is_plain_and_reloads_as_this_format_on_cuda():
    t = Int4TritonCudaTensor.from_float(make_weight((64, 256)))
    ck = t.to_checkpoint()
    assert isinstance(ck, Int4PlainTensor) and ck.zero_point_kind == "float"
    assert int4_class_for("cuda", "float", "triton_cuda") is Int4TritonCudaTensor


def test_int_zero_point_config_converts_to_float():
    m = torch.nn.Linear(256, 64, bias=False).to(torch.bfloat16)
    w = m.weight.detach().clone()
    codes, scale, zero = lowbit.tensors.int4_plain.quantize_int4(w, 128, "int")
    from lowbit.configs.int4 import int4_from_codes

    t = int4_from_codes(Int4TritonCudaTensor, codes, scale, zero, "int", group_size=128, shape=w.shape, dtype=w.dtype)
    exact = lowbit.ops.reference.dequantize_int4_int_zp(codes, scale, zero, 128)
    assert lowbit.sqnr(exact, t.dequantize(torch.float32)) > 45


def test_errors():
    with pytest.raises(ValueError, match="N % 8"):
        Int4TritonCudaTensor.from_float(make_weight((12, 256)))
    with pytest.raises(ValueError, match="group_size"):
        Int4TritonCudaTensor.from_float(make_weight((16, 256)), group_size=48)
    with pytest.raises(ValueError, match="2-D"):
        Int4TritonCudaTensor.from_float(make_weight((16, 256)).reshape(2, 8, 256))
    assert "CUDA" in Int4TritonCudaTensor.supports(make_weight((64, 256)), "cpu")
    assert "out_features % 8" in Int4TritonCudaTensor.supports(make_weight((12, 256)), "cuda")
    t = Int4TritonCudaTensor.from_float(make_weight((64, 256)))
    with pytest.raises(ValueError, match="features"):
        F.linear(torch.randn(2, 128, dtype=torch.bfloat16), t)


def test_opcheck_reference_on_cpu():
    t = Int4TritonCudaTensor.from_float(make_weight((64, 256)), group_size=64)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.lowbit.int4_triton_cuda_mm, (x, t.qdata, t.scale, t.zero_point, 64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_graph_runs_the_triton_kernels():
    from torch._inductor.utils import run_and_get_code

    t = Int4TritonCudaTensor.from_float(make_weight((256, 512)).cuda())
    m = torch.nn.Linear(512, 256, bias=False, device="cuda", dtype=torch.bfloat16)
    m.weight = torch.nn.Parameter(t, requires_grad=False)
    x = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)  # M = 1: the GEMV
    torch._dynamo.reset()
    with torch.no_grad():
        y, code = run_and_get_code(torch.compile(m, fullgraph=True), x)
    from lowbit.ops.triton_int4 import _pick

    kind = _pick(1, 256, 512, x.device)["kind"]  # the M = 1 kernel of the dispatch table
    assert f"{kind}_kernel" in "\n".join(code)  # inductor inlined the triton_op's kernel
    assert lowbit.sqnr(F.linear(x, t).float(), y.float()) > 40
