"""``static_compiled_decode``: one compiled decode graph across generate calls of other lengths."""

import copy

import pytest
import torch

import lowbit
from lowbit.decode import count_compiles, static_compiled_decode

transformers = pytest.importorskip("transformers", reason="static_compiled_decode drives transformers' generate")


def tiny_llama(dtype=torch.bfloat16):
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval().to(dtype)


def _generate(model, prompt_len, n):
    ids = torch.randint(0, 128, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    with torch.inference_mode():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0)


@pytest.mark.parametrize(
    "name, cfg",
    [("int8-wo", lowbit.Int8WeightOnlyConfig()), ("int4-g32", lowbit.Int4WeightOnlyConfig(group_size=32))],
    ids=["int8-wo", "int4-g32"],
)
def test_two_generate_calls_of_other_lengths_compile_once(name, cfg):
    # float32: the static cache pads attention to max_cache_len, which in bf16 rounds
    # differently from the eager dynamic cache and can flip a near-tie of a random model's
    # greedy argmax; in float32 both paths give the same tokens.
    model = tiny_llama(torch.float32)
    lowbit.quantize_(model, cfg, fuse_projections=True)
    eager = copy.deepcopy(model)
    static_compiled_decode(model, max_cache_len=48, backend="aot_eager")  # AOT traces the custom ops' fake impls
    torch._dynamo.reset()
    before = count_compiles()
    calls = [(5, 6), (11, 9), (3, 4)]
    outs = [_generate(model, p, n) for p, n in calls]
    assert count_compiles() - before == 1, "the decode step recompiled"
    for (p, n), out in zip(calls, outs):
        assert torch.equal(out, _generate(eager, p, n))  # greedy tokens of the eager model


def test_without_a_fixed_cache_length_the_second_call_recompiles():
    # What the helper prevents: transformers sizes the static cache per call.
    from transformers.generation import CompileConfig

    model = tiny_llama()
    lowbit.quantize_(model, lowbit.Int8WeightOnlyConfig())
    cc = CompileConfig(fullgraph=True, mode="default", backend="eager")
    cc._compile_all_devices = True
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = cc
    torch._dynamo.reset()
    before = count_compiles()
    _generate(model, 5, 6)
    _generate(model, 11, 9)
    assert count_compiles() - before == 2


@pytest.mark.parametrize("bad", [0, 1, 2.5, True, "64"], ids=["zero", "one", "float", "bool", "str"])
def test_bad_cache_length(bad):
    with pytest.raises(ValueError, match="max_cache_len must be an integer"):
        static_compiled_decode(tiny_llama(), bad)


def test_not_a_generative_model():
    with pytest.raises(TypeError, match="generative model"):
        static_compiled_decode(torch.nn.Linear(2, 2), 16)


def test_module_guards_are_skipped_by_default_and_kept_on_request():
    model = tiny_llama()
    skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
    static_compiled_decode(model, max_cache_len=32)
    cc = model.generation_config.compile_config
    if skip is not None:
        assert cc.mode is None and cc.options["guard_filter_fn"] is skip
        assert "get_compiled_call" in vars(model)  # the model's own step (lowbit.decode._own_compiled_call)
    static_compiled_decode(model, max_cache_len=32, skip_module_guards=False)
    cc = model.generation_config.compile_config
    assert cc.mode == "default" and not cc.options and "get_compiled_call" not in vars(model)
    with pytest.raises(ValueError, match="skip_module_guards=False"):
        static_compiled_decode(model, max_cache_len=32, mode="max-autotune")
    static_compiled_decode(model, max_cache_len=32, cpp_wrapper=True)
    assert model.generation_config.compile_config.options["cpp_wrapper"] is True
    with pytest.raises(ValueError, match="cpp_wrapper=True needs backend='inductor'"):
        static_compiled_decode(model, max_cache_len=32, cpp_wrapper=True, backend="aot_eager")


def _aot_forward_ops(fn, x) -> set[str]:
    from torch._dynamo.testing import AotEagerAndRecordGraphs

    rec = AotEagerAndRecordGraphs()
    torch._dynamo.reset()
    torch.compile(fn, backend=rec, fullgraph=True)(x)
    return {str(n.target) for g in rec.fw_graphs for n in g.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("m", [1, 3])
def test_compiled_graph_calls_the_int4_cpu_kernel_directly(m):
    # The traced kernel (ops/library.py register_traced_kernel): with the tinygemm path
    # chosen, the graph holds ATen's int4 kernel itself, not lowbit's Python op (with the
    # GEMV chosen, the extension's GEMV op); other paths keep the custom op. All give the
    # eager answer.
    from lowbit.ops.cpu_paths import forced_path, path_available

    lin = torch.nn.Linear(256, 200, bias=False).to(torch.bfloat16)  # 200: padded rows are sliced off
    lowbit.quantize_(lin, lowbit.Int4WeightOnlyConfig(group_size=32))
    x = torch.randn(m, 256, dtype=torch.bfloat16)
    op = "int4_tinygemm_cpu_linear"
    with forced_path(op, "tinygemm"):
        eager = lin(x)
        ops = _aot_forward_ops(lin, x)
        assert "aten._weight_int4pack_mm_for_cpu.default" in ops and f"lowbit.{op}.default" not in ops, ops
        assert torch.equal(torch.compile(lin, backend="aot_eager", fullgraph=True)(x), eager)
    if path_available(op, "gemv"):  # lowbit's GEMV is traced as the extension's op itself
        with forced_path(op, "gemv"):
            ops = _aot_forward_ops(lin, x)
            assert "lowbit_ext.int4_tinygemm_gemv.default" in ops and f"lowbit.{op}.default" not in ops, ops
            assert torch.equal(torch.compile(lin, backend="aot_eager", fullgraph=True)(x), lin(x))
    with forced_path(op, "dequant_gemm"):
        ops = _aot_forward_ops(lin, x)
        assert f"lowbit.{op}.default" in ops, ops
        assert torch.equal(torch.compile(lin, backend="aot_eager", fullgraph=True)(x), lin(x))


@pytest.mark.parametrize("skip", [True, False], ids=["module-guards-skipped", "all-guards"])
def test_two_models_of_one_class_in_one_process(skip):
    # A float and a fused int8 Llama (same class) each get their own compiled step and their
    # own eager answer, with the module guards (dynamo tells them apart) and without them
    # (each model has a step of its own; sharing transformers' compiled call without the
    # guards failed with KeyError: 'weight').
    a, b = tiny_llama(torch.float32), tiny_llama(torch.float32)
    lowbit.quantize_(b, lowbit.Int8WeightOnlyConfig(), fuse_projections=True)
    want = [_generate(copy.deepcopy(m), 5, 4) for m in (a, b)]
    for m in (a, b):
        static_compiled_decode(m, max_cache_len=48, backend="aot_eager", skip_module_guards=skip)
    torch._dynamo.reset()
    assert [torch.equal(_generate(m, 5, 4), w) for m, w in zip((a, b), want)] == [True, True]
    c = copy.deepcopy(a)  # a copy runs its own step too
    with torch.no_grad():
        c.lm_head.weight.mul_(-1)
    assert not torch.equal(_generate(c, 5, 4), want[0]) and torch.equal(_generate(a, 5, 4), want[0])


def test_a_compiled_decode_model_survives_torch_save_and_load():
    # The model's get_compiled_call (lowbit.decode._OwnCompiledCall) pickles as "the same for
    # the loaded model"; as a bound method it failed at load (no attribute '_own_compiled_call').
    import io

    model = tiny_llama(torch.float32)
    static_compiled_decode(model, max_cache_len=48, backend="aot_eager")
    want = _generate(model, 5, 4)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert vars(loaded)["get_compiled_call"].model is loaded
    assert torch.equal(_generate(loaded, 5, 4), want)


@pytest.mark.parametrize("change", ["replace-parameter", "quantize-a-layer"])
def test_a_model_changed_after_compiling_gets_a_new_step(change):
    # What the skipped module guards would have caught: a parameter replaced, a layer
    # quantized (its weight becomes a packed tensor: another graph), train/eval.
    model = tiny_llama(torch.float32)
    static_compiled_decode(model, max_cache_len=48, backend="aot_eager")
    torch._dynamo.reset()
    first = _generate(model, 5, 4)
    if change == "replace-parameter":
        other = tiny_llama(torch.float32)
        torch.nn.init.normal_(other.lm_head.weight, std=0.5)
        model.lm_head.weight = torch.nn.Parameter(other.lm_head.weight.detach().clone())
    else:
        lowbit.quantize_(model.model.layers[0].mlp, lowbit.Int4WeightOnlyConfig(group_size=32))
    want = _generate(copy.deepcopy(model), 5, 4)  # (the copy compiles a step of its own)
    before = count_compiles()
    got = _generate(model, 5, 4)
    assert count_compiles() - before == 1 and torch.equal(got, want)
    if change == "replace-parameter":
        assert not torch.equal(got, first)
    model.train()
    assert torch.equal(_generate(model, 5, 4), want) and count_compiles() - before == 2


# ---------------------------------------------------------------------- decode attention


def _attention_inputs(q_len, dtype=torch.float32):
    g = torch.Generator().manual_seed(q_len)
    b, h, hk, kv, d = 2, 6, 2, 11, 16
    query = torch.randn(b, h, q_len, d, generator=g).to(dtype)
    key = torch.randn(b, hk, kv, d, generator=g).to(dtype)
    value = torch.randn(b, hk, kv, d, generator=g).to(dtype)
    mask = torch.ones(b, 1, q_len, kv, dtype=torch.bool)
    mask[0, :, :, 7:] = False  # unfilled static-cache slots
    mask[1, :, :, :2] = False  # left padding
    module = torch.nn.Module()
    module.num_key_value_groups = h // hk
    module.is_causal = True
    module.training = False
    return module, query, key, value, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_math_decode_attention_matches_sdpa(dtype):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from lowbit.decode import _math_decode_attention

    module, q, k, v, mask = _attention_inputs(1, dtype)
    got, _ = _math_decode_attention(module, q, k, v, mask, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert got.shape == ref.shape == (2, 1, 6, 16)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)
    # A mask shared by the batch (batch dim 1) broadcasts like SDPA's.
    got, _ = _math_decode_attention(module, q, k, v, mask[:1], scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask[:1], scaling=0.3)
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)
    # A per-head mask, or a float one, is left to SDPA: the same bits.
    per_head = mask.expand(2, 6, 1, 11).contiguous()
    assert torch.equal(_math_decode_attention(module, q, k, v, per_head)[0], sdpa_attention_forward(module, q, k, v, per_head)[0])
    additive = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, float("-inf"))
    assert torch.equal(_math_decode_attention(module, q, k, v, additive)[0], sdpa_attention_forward(module, q, k, v, additive)[0])
    # Several query tokens (prefill) run SDPA itself: the same bits.
    module, q, k, v, mask = _attention_inputs(3, dtype)
    got, _ = _math_decode_attention(module, q, k, v, mask, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert torch.equal(got, ref)


def test_decode_attention_setting():
    from lowbit.decode import DECODE_ATTENTION

    with pytest.raises(ValueError, match="decode_attention must be"):
        static_compiled_decode(tiny_llama(), 16, decode_attention="flash")
    model = tiny_llama()
    assert model.config._attn_implementation == "sdpa"
    static_compiled_decode(model, 16, decode_attention="sdpa")
    assert model.config._attn_implementation == "sdpa"
    static_compiled_decode(model, 16)  # auto: the math decode step on CPU
    assert model.config._attn_implementation == DECODE_ATTENTION
    assert all(m.config._attn_implementation == DECODE_ATTENTION for m in model.modules() if hasattr(m, "config"))
    eager = tiny_llama()
    eager.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="needs a model running transformers' SDPA"):
        static_compiled_decode(eager, 16, decode_attention="math")
    static_compiled_decode(eager, 16)  # auto leaves other implementations alone
    assert eager.config._attn_implementation == "eager"


def test_a_rejected_call_leaves_the_attention_alone():
    model = tiny_llama()
    with pytest.raises(ValueError, match="cpp_wrapper=True needs backend='inductor'"):
        static_compiled_decode(model, 16, cpp_wrapper=True, backend="aot_eager")
    assert model.config._attn_implementation == "sdpa"
