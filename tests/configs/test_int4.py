import logging
import os
import tempfile

import pytest
import torch
from torch import nn

import lowbit
from lowbit import Int4Packing, Int4WeightOnlyConfig
from lowbit.configs.int4 import int4_class_for, int4_group_size_for
from lowbit.errors import UnsupportedError
from lowbit.tensors import Int4MarlinTensor, Int4PlainTensor, Int4TinygemmCpuTensor


class _SmolBlock(nn.Module):
    """The linear shapes of one SmolLM2-135M decoder layer (hidden 576, MLP 1536)."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(576, 576, bias=False), nn.Linear(576, 192, bias=False)
        self.v_proj, self.o_proj = nn.Linear(576, 192, bias=False), nn.Linear(576, 576, bias=False)
        self.gate_proj, self.up_proj = nn.Linear(576, 1536, bias=False), nn.Linear(576, 1536, bias=False)
        self.down_proj = nn.Linear(1536, 576, bias=False)

    def forward(self, x):
        a = self.o_proj(self.q_proj(x) + torch.cat([self.k_proj(x), self.v_proj(x), self.k_proj(x)], -1))
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(a)) * self.up_proj(a))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(group_size=48), "group_size must be one of"),
        (dict(zero_point="none"), "zero_point must be"),
        (dict(qparams="gptq"), "qparams must be"),
        (dict(packing="cuda_magic"), "packing must be one of"),
    ],
    ids=["group", "zero_point", "qparams", "packing"],
)
def test_invalid_config_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Int4WeightOnlyConfig(**kwargs)


def test_config_round_trips_and_packing_strings_are_stable():
    cfg = Int4WeightOnlyConfig(group_size=64, zero_point="int", qparams="hqq", packing="tinygemm_cpu")
    assert cfg.packing is Int4Packing.TINYGEMM_CPU
    d = cfg.to_dict()
    assert d["packing"] == "tinygemm_cpu"
    assert lowbit.BaseConfig.from_dict(d) == cfg
    assert [p.value for p in Int4Packing] == [
        "auto", "tinygemm_cpu", "tiled_cuda", "marlin", "xpu", "xpu_float_zp", "plain", "triton_cuda",
    ]


@pytest.mark.parametrize("kind", ["float", "int"])
def test_auto_on_cpu_is_tinygemm(kind):
    assert int4_class_for("cpu", kind, "auto") is Int4TinygemmCpuTensor
    assert int4_class_for("cpu", kind, "plain") is Int4PlainTensor


@pytest.mark.parametrize(
    "device,packing,match",
    [("cuda", "tinygemm_cpu", "runs on 'cpu'"), ("meta", "auto", "no int4 format"), ("cpu", "marlin", "runs on 'cuda'")],
    ids=["wrong_device", "no_auto", "cuda_only_packing"],
)
def test_unservable_combination_raises_unsupported(device, packing, match):
    with pytest.raises(UnsupportedError, match=match):
        int4_class_for(device, "float", packing)


@pytest.mark.parametrize("k,group,want", [(576, 128, 64), (1536, 128, 128), (96, 256, 32), (576, 32, 32)], ids=str)
def test_k_policy_picks_largest_dividing_group(k, group, want):
    assert int4_group_size_for(k, group) == want


def test_k_policy_raises_when_nothing_divides():
    with pytest.raises(UnsupportedError, match="in_features=100"):
        int4_group_size_for(100, 128, "layers.0.proj")


def test_smollm2_shaped_block_quantizes_fully_with_group_128(caplog):
    torch.manual_seed(0)
    m = _SmolBlock().to(torch.bfloat16)
    x = torch.randn(3, 576, dtype=torch.bfloat16)
    ref = m(x)
    with caplog.at_level(logging.INFO, logger="lowbit.configs.int4"):
        report = lowbit.quantize_(m, Int4WeightOnlyConfig(group_size=128))
    assert not report.skipped and len(report.quantized) == 7
    assert m.q_proj.weight.group_size == 64 and m.down_proj.weight.group_size == 128
    assert "group_size=64" in report.quantized["q_proj"]
    assert "in_features=576 of q_proj; using group_size=64" in caplog.text
    assert lowbit.sqnr(ref.float(), m(x).float()) > 15


def test_unservable_layer_is_skipped_with_named_reason():
    m = nn.Sequential(nn.Linear(100, 64), nn.Linear(64, 32)).to(torch.bfloat16)
    before = m[0].weight.detach().clone()
    report = lowbit.quantize_(m, Int4WeightOnlyConfig())
    assert list(report.quantized) == ["1"]
    assert "0" in report.skipped and "in_features=100" in report.skipped["0"]
    assert torch.equal(m[0].weight, before)


def test_int_zero_point_layer_runs_on_cpu():
    torch.manual_seed(0)
    m = nn.Linear(256, 64).to(torch.bfloat16)
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    ref = m(x)
    lowbit.quantize_(m, Int4WeightOnlyConfig(zero_point="int"))
    assert isinstance(m.weight, Int4TinygemmCpuTensor)
    assert lowbit.sqnr(ref.float(), m(x).float()) > 15


def test_plain_packing_stores_without_kernel_and_loads_repacked():
    m = nn.Linear(256, 64, bias=False).to(torch.bfloat16)
    lowbit.quantize_(m, Int4WeightOnlyConfig(group_size=64, packing="plain"))
    assert isinstance(m.weight, Int4PlainTensor)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        lowbit.save_file(m, path)
        fresh = lowbit.load_into(nn.Linear(256, 64, bias=False).to(torch.bfloat16), path)
    assert isinstance(fresh.weight, Int4TinygemmCpuTensor)
    assert torch.equal(fresh.weight.dequantize(), m.weight.dequantize())


def test_int_only_format_refuses_float_zero_points():
    from lowbit.configs import int4 as cfg_mod

    assert int4_class_for("cuda", "int", "marlin") is Int4MarlinTensor
    with pytest.raises(UnsupportedError, match="cannot represent float"):
        int4_class_for("cuda", "float", "marlin")
    codes = torch.zeros(64, 128, dtype=torch.uint8)
    with pytest.raises(UnsupportedError, match="applies int zero points"):
        cfg_mod.int4_from_codes(Int4MarlinTensor, codes, torch.ones(64, 1), torch.zeros(64, 1), "float",
                                group_size=128, shape=(64, 128), dtype=torch.float32)


def test_marlin_with_float_zero_point_is_a_config_error():
    with pytest.raises(ValueError, match="zero_point='int'"):
        Int4WeightOnlyConfig(packing="marlin")
    assert Int4WeightOnlyConfig(packing="marlin", zero_point="int").packing is Int4Packing.MARLIN


def test_format_table_is_derived_from_class_declarations():
    from lowbit.tensors.int4_common import int4_formats

    table = int4_formats()
    assert set(table) == set(Int4Packing) - {Int4Packing.AUTO}
    for packing, cls in table.items():
        assert cls.int4_packing is packing
        if cls.int4_auto:
            kind = cls.zero_point_kind
            assert int4_class_for(cls.kernel_device, kind, "auto") is cls, (packing, kind)
