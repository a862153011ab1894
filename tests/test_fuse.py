"""``lowbit.fuse_projections``: same codes, same outputs, fewer linears, checkpoints, errors."""

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.fuse import FusedSlice, fuse_projections, is_fused

transformers = pytest.importorskip("transformers", reason="fuse_projections works on transformers models")

CONFIGS = {
    "int8-wo": lowbit.Int8WeightOnlyConfig(),
    "int8-dyn": lowbit.Int8DynamicActivationInt8WeightConfig(),
    "int4-g32": lowbit.Int4WeightOnlyConfig(group_size=32),
    "int4-g64-hqq-plain": lowbit.Int4WeightOnlyConfig(group_size=64, qparams="hqq", packing="plain"),
    "da8w4-g32": lowbit.Int8DynamicActivationInt4WeightConfig(group_size=32),
    "cast-fp32": lowbit.FloatCastConfig(torch.float32),
}
# Formats whose linear has a CPU kernel (plain int4 is storage only).
RUNNABLE = [k for k in CONFIGS if "plain" not in k]


def tiny_llama(layers=2, bias=False, dtype=torch.bfloat16):
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        attention_bias=bias, mlp_bias=bias,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval().to(dtype)


def _linears(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n]


def test_fuse_float_model_same_logits_and_4_linears_per_layer():
    model = tiny_llama(bias=True, dtype=torch.float32)
    ids = torch.randint(0, 128, (2, 9))
    ref = model(ids).logits
    report = fuse_projections(model)
    assert sorted(report.fused) == sorted(
        [f"model.layers.{i}.self_attn.qkv_proj" for i in range(2)] + [f"model.layers.{i}.mlp.gate_up_proj" for i in range(2)]
    )
    assert report.linear_calls_saved == 6
    assert len(_linears(model)) == 2 * 4
    assert is_fused(model)
    torch.testing.assert_close(model(ids).logits, ref, rtol=1e-5, atol=1e-5)


def _fused_and_parts(cfg):
    """The same tiny model quantized with ``cfg``: fused first, and as it is."""
    model = tiny_llama()
    parts = copy.deepcopy(model)
    lowbit.quantize_(model, cfg, fuse_projections=True)
    lowbit.quantize_(parts, cfg)
    return model, parts


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_weight_has_the_codes_of_the_parts(name):
    model, parts = _fused_and_parts(CONFIGS[name])
    for i in range(2):
        attn, attn_p = model.model.layers[i].self_attn, parts.model.layers[i].self_attn
        mlp, mlp_p = model.model.layers[i].mlp, parts.model.layers[i].mlp
        for fused, pieces in ((attn.qkv_proj, [attn_p.q_proj, attn_p.k_proj, attn_p.v_proj]),
                              (mlp.gate_up_proj, [mlp_p.gate_proj, mlp_p.up_proj])):
            assert type(fused.weight) is type(pieces[0].weight)
            want = torch.cat([p.weight.dequantize() for p in pieces])
            torch.testing.assert_close(fused.weight.dequantize(), want, rtol=0, atol=0)


@pytest.mark.parametrize("name", RUNNABLE)
def test_fused_quantized_model_computes_the_unfused_one(name):
    model, parts = _fused_and_parts(CONFIGS[name])
    ids = torch.randint(0, 128, (1, 7))
    with torch.no_grad():
        got, want = model(ids).logits.float(), parts(ids).logits.float()
    # Same codes; only the GEMM's blocking over N may differ (float summation order).
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    assert lowbit.sqnr(want, got) > 40


# int8-wo is left out until main's load_file aligns what safetensors returns: ATen's int8
# GEMV segfaults on its 8-byte-aligned buffers, fused or not (the "rel" branch fixes it).
@pytest.mark.parametrize("name", ["int8-dyn", "int4-g32", "da8w4-g32"])
def test_fused_checkpoint_loads_into_a_fresh_fused_model(name, tmp_path):
    model = tiny_llama()
    lowbit.quantize_(model, CONFIGS[name], fuse_projections=True)
    path = tmp_path / "m.safetensors"
    lowbit.save_file(model, str(path))
    fresh = tiny_llama()
    torch.manual_seed(1)
    for p in fresh.parameters():  # different float weights: everything must come from the file
        p.data.normal_()
    fuse_projections(fresh)
    lowbit.load_into(fresh, str(path))
    assert type(fresh.model.layers[0].self_attn.qkv_proj.weight) is type(model.model.layers[0].self_attn.qkv_proj.weight)
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_slices_called_alone_or_out_of_order_are_still_right():
    model = tiny_llama(layers=1, dtype=torch.float32)
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, 3, 128)
    want = [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]
    fuse_projections(model)
    assert isinstance(attn.k_proj, FusedSlice)
    torch.testing.assert_close(attn.v_proj(x), want[2])
    torch.testing.assert_close(attn.q_proj(x), want[0])
    torch.testing.assert_close(attn.k_proj(x.clone()), want[1])  # a new input is recomputed


def test_unknown_architecture_is_refused():
    cfg = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=64)
    model = transformers.GPT2LMHeadModel(cfg)
    with pytest.raises(ValueError, match="Llama-family.*gpt2"):
        fuse_projections(model)
    with pytest.raises(ValueError, match="Llama-family"):
        lowbit.quantize_(model, lowbit.Int8WeightOnlyConfig(), fuse_projections=True)


def test_plain_module_is_refused():
    with pytest.raises(ValueError, match="model_type None"):
        fuse_projections(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(TypeError, match="nn.Module"):
        fuse_projections("model")


def test_quantized_model_is_refused_and_left_unchanged():
    model = tiny_llama(layers=1)
    lowbit.quantize_(model, lowbit.Int8WeightOnlyConfig())
    before = {n: type(m).__name__ for n, m in model.named_modules()}
    with pytest.raises(ValueError, match="already quantized.*fuse the float model"):
        fuse_projections(model)
    assert {n: type(m).__name__ for n, m in model.named_modules()} == before


def test_fusing_twice_is_refused():
    model = tiny_llama(layers=1)
    fuse_projections(model)
    with pytest.raises(ValueError, match="already fused"):
        fuse_projections(model)


def test_forward_that_feeds_parts_different_inputs_is_refused(monkeypatch):
    model = tiny_llama(layers=1)
    attn_cls = type(model.model.layers[0].self_attn)
    import lowbit.fuse as F

    real = F._forward_source
    monkeypatch.setattr(
        F, "_forward_source",
        lambda cls: "q = self.q_proj(h)\nk = self.k_proj(other)\nv = self.v_proj(h)" if cls is attn_cls else real(cls),
    )
    with pytest.raises(ValueError, match=r"does not call self.q_proj\(x\), self.k_proj\(x\), self.v_proj\(x\)"):
        fuse_projections(model)
    assert not is_fused(model)
