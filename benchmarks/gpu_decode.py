"""Decode speed of a Llama-shaped model with random weights: bf16 vs lowbit formats.

One greedy decode step (batch B, one new token per sequence, transformers' static KV cache)
is captured in a CUDA graph and replayed, so the table measures the GPU kernels of a real
decode step (every linear, attention, norms, the LM head and argmax) without Python or
launch overhead; the eager column times the same step called from Python. Weights are
random (shapes decide the speed, not values), initialised on the device with a fixed seed.

    python3 -m benchmarks.gpu_decode --model llama-1b --batches 1,32 --out results.md
    python3 -m benchmarks.gpu_decode --model smollm2 --batches 1,8

Models (``--model``):

* ``llama-1b``: hidden 2048, 16 layers, 32 heads / 8 KV heads (GQA), MLP 8192, vocab 32000,
  untied head (Llama-3.2-1B's body with a Llama-2 vocabulary);
* ``smollm2``: SmolLM2-135M's shape (hidden 576, 30 layers, 9 / 3 heads, MLP 1536, vocab
  49152, tied head): at this size decode is bound by kernel count, not weight bytes.

Rows: ``bf16`` (the float model), and lowbit configs applied with ``quantize_`` (the LM head
stays bf16 unless the row says ``head``). Ratios are bf16 time / row time (> 1: faster).
On a machine without CUDA the script runs eagerly on the CPU (a smoke test, not a result).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from benchmarks.common import machine_description, md_table

log = logging.getLogger("gpu_decode")

MODELS = {
    "llama-1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
}


def _rows():
    import lowbit

    return {
        "bf16": (None, False),
        "int4-g128": (lowbit.Int4WeightOnlyConfig(group_size=128), False),
        "int4-g128-fused": (lowbit.Int4WeightOnlyConfig(group_size=128), True),
        "int4-g128-triton-fused": (lowbit.Int4WeightOnlyConfig(group_size=128, packing="triton_cuda"), True),
        "int8-weight-only-fused": (lowbit.Int8WeightOnlyConfig(), True),
        "float8-weight-only-fused": (lowbit.Float8WeightOnlyConfig(), True),
        "float8-dyn-row-fused": (lowbit.Float8DynamicActivationFloat8WeightConfig(granularity="row"), True),
    }


def build_model(name: str, device: torch.device, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(max_position_embeddings=4096, **MODELS[name])
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model.eval()


class DecodeStep:
    """One greedy decode step over a static cache, on fixed input/position buffers."""

    def __init__(self, model, batch: int, prompt: int, max_len: int, device: torch.device):
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=g).to(device)
        with torch.no_grad():
            out = model(input_ids=ids, cache_position=torch.arange(prompt, device=device),
                        past_key_values=self.cache, use_cache=True)
        self.ids = out.logits[:, -1:].argmax(-1)
        self.pos = torch.tensor([prompt], device=device)

    def __call__(self):
        out = self.model(input_ids=self.ids, cache_position=self.pos, past_key_values=self.cache, use_cache=True)
        self.ids.copy_(out.logits[:, -1:].argmax(-1))
        self.pos.add_(1)


def time_step(step: DecodeStep, steps: int, device: torch.device) -> tuple[float | None, float, str]:
    """(graph seconds per step or None, eager seconds per step, note)."""
    with torch.no_grad():
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        eager = (time.perf_counter() - t0) / steps
        if device.type != "cuda":
            return None, eager, "cpu: eager only"
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    step()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
        except Exception as e:  # noqa: BLE001 - reported in the table, eager still timed
            return None, eager, f"graph capture failed: {type(e).__name__}: {str(e)[:80]}"
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / steps)
        return statistics.median(times), eager, ""


def run(model_name: str, batches: list[int], rows: list[str], steps: int, prompt: int, device: torch.device):
    import lowbit

    table = _rows()
    results: dict[tuple[str, int], tuple[float | None, float, str]] = {}
    for row in rows:
        cfg, fused = table[row]
        model = build_model(model_name, device)
        if cfg is not None:
            lowbit.quantize_(model, cfg, fuse_projections=fused)
        for b in batches:
            step = DecodeStep(model, b, prompt, prompt + steps * 7 + 16, device)
            results[(row, b)] = time_step(step, steps, device)
            log.info("%s B=%d: %s", row, b, results[(row, b)])
            del step
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def render(model_name: str, batches, rows, results, device) -> str:
    info = machine_description(device)
    head = ["row"] + [f"B={b}: graph ms/step (x bf16)" for b in batches] + [f"B={b}: eager ms/step" for b in batches]
    body = []
    notes = []
    for row in rows:
        cells, eager_cells = [], []
        for b in batches:
            g, e, note = results[(row, b)]
            gb, eb, _ = results[("bf16", b)] if ("bf16", b) in results else (None, None, "")
            cells.append("-" if g is None else f"{g * 1e3:.3f}" + (f" ({gb / g:.2f}x)" if gb else ""))
            eager_cells.append(f"{e * 1e3:.3f}" + (f" ({eb / e:.2f}x)" if eb else ""))
            if note:
                notes.append(f"- {row} B={b}: {note}")
        body.append([row] + cells + eager_cells)
    lines = [f"## Decode step, {model_name} (random weights), {info.get('device', device.type)}", "",
             "; ".join(f"{k}: {v}" for k, v in info.items()), "", md_table(head, body)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="llama-1b")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--rows", default=",".join(["bf16", "int4-g128", "int4-g128-fused", "int8-weight-only-fused"]),
                   help="comma-separated rows: " + ", ".join(_rows()))
    p.add_argument("--steps", type=int, default=32, help="decode steps per timing")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens (prefilled eagerly)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="also write the markdown table here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = a.rows.split(",")
    unknown = sorted(set(rows) - set(_rows()))
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {sorted(_rows())}")
    if "bf16" not in rows:
        rows = ["bf16", *rows]
    batches = [int(b) for b in a.batches.split(",")]
    device = torch.device(a.device)
    results = run(a.model, batches, rows, a.steps, a.prompt, device)
    text = render(a.model, batches, rows, results, device)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
