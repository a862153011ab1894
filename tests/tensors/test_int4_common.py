"""One portable int4 checkpoint: quantize on one device, save, load and run on another.

The CUDA cases skip without a GPU; they were run on an H100/H200 (see the issue notes).
"""

import os

import pytest
import torch
from torch import nn

import lowbit
from lowbit.tensors import Int4PlainTensor, Int4TiledCudaTensor, Int4TinygemmCpuTensor
from lowbit.testing import make_weight

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")


def _model(device, k=576, n=256):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(k, n), nn.SiLU(), nn.Linear(n, k, bias=False)).to(torch.bfloat16)
    with torch.no_grad():
        for lin in (m[0], m[2]):
            lin.weight.copy_(make_weight(tuple(lin.weight.shape), seed=lin.weight.shape[0]))
    return m.to(device)


def _dequantized_reference(m, x):
    """The float model the quantized weights encode, run in float32 on the CPU."""
    ref = nn.Sequential(nn.Linear(m[0].in_features, m[0].out_features), nn.SiLU(),
                        nn.Linear(m[2].in_features, m[2].out_features, bias=False))
    with torch.no_grad():
        ref[0].weight.copy_(m[0].weight.dequantize(torch.float32).cpu())
        ref[0].bias.copy_(m[0].bias.float().cpu())
        ref[2].weight.copy_(m[2].weight.dequantize(torch.float32).cpu())
    return ref(x.float().cpu())


@pytest.mark.parametrize("zero_point", ["float", "int"])
@pytest.mark.parametrize("src,dst", [("cpu", "cpu"), pytest.param("cpu", "cuda", marks=needs_cuda),
                                     pytest.param("cuda", "cpu", marks=needs_cuda)])
def test_save_on_one_device_load_on_another(tmp_path, src, dst, zero_point):
    m = _model(src)
    lowbit.quantize_(m, lowbit.Int4WeightOnlyConfig(group_size=128, zero_point=zero_point))
    path = os.fspath(tmp_path / "m.safetensors")
    lowbit.save_file(m, path)
    sd = lowbit.load_file(path, dst)
    # On disk: the portable codes, whatever the source device packed.
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        assert '"int4_plain"' in f.metadata()["lowbit"]
    want = Int4TinygemmCpuTensor if dst == "cpu" else Int4TiledCudaTensor
    assert isinstance(sd["0.weight"], want) and sd["0.weight"].device.type == dst
    # Same codes, same dequantized values on both devices (bit-exact).
    assert torch.equal(sd["0.weight"].dequantize().cpu(), m[0].weight.dequantize().cpu())
    m2 = _model(dst)
    m2.load_state_dict(sd, assign=True)
    x = torch.randn(5, 576, dtype=torch.bfloat16)
    ref = _dequantized_reference(m, x)
    assert lowbit.sqnr(ref, m(x.to(src)).float().cpu()) >= 40
    assert lowbit.sqnr(ref, m2(x.to(dst)).float().cpu()) >= 40


@needs_cuda
def test_model_to_other_device_repacks_and_agrees():
    m = _model("cpu")
    lowbit.quantize_(m, lowbit.Int4WeightOnlyConfig(group_size=128))
    x = torch.randn(3, 576, dtype=torch.bfloat16)
    y_cpu = m(x).float()
    codes_cpu = m[0].weight.to_codes()
    m.to("cuda")
    assert isinstance(m[0].weight, Int4TiledCudaTensor)
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(m[0].weight.to_codes(), codes_cpu))
    y_cuda = m(x.cuda()).float().cpu()
    assert lowbit.sqnr(y_cpu, y_cuda) >= 40
    m.to("cpu")
    assert isinstance(m[0].weight, Int4TinygemmCpuTensor)
    assert torch.equal(m(x).float(), y_cpu)


def test_plain_checkpoint_on_a_device_without_int4_format_raises_named_error():
    t = Int4PlainTensor.from_codes(
        torch.randint(0, 16, (64, 128), dtype=torch.uint8), torch.rand(64, 1) + 0.1, torch.rand(64, 1),
        group_size=128, shape=(64, 128), dtype=torch.bfloat16, zero_point_kind="float",
    )
    with pytest.raises(lowbit.UnsupportedError, match="'meta'"):
        t.from_checkpoint(torch.device("meta"))


@needs_cuda
def test_marlin_moved_off_cuda_unpacks_to_the_cpu_format():
    from lowbit.tensors import Int4MarlinTensor

    t = Int4MarlinTensor.from_float(make_weight((128, 256)).cuda(), group_size=128)
    c = t.to("cpu")
    assert isinstance(c, Int4TinygemmCpuTensor)
    # int zero point -> float zero point (8 - z) * scale in bf16: within 1/64 of a step.
    assert lowbit.sqnr(t.dequantize(torch.float32).cpu(), c.dequantize(torch.float32)) >= 45
