"""Dynamo guards of lowbit's compiled decode step: how many of each kind, what checking them
costs per step, and the decode speed they are part of.

    python3 benchmarks/decode_guards.py                  # SmolLM2 int4-g32 fused + int4 head, compiled
    python3 benchmarks/decode_guards.py --runs 7 --tokens 64 --dump guards.txt

The model is built as ``lowbit demo``'s ``int4-g32-fused-head-compiled`` row builds it
(bf16, ``fuse_projections``, the tied head untied and packed too, ``static_compiled_decode``
sized for the prompt + ``--tokens``). Before each ``generate`` dynamo evaluates the compiled
step's guards; this script keeps the guard manager and the frame's locals of the compile
(``torch._dynamo.guards.guard_manager_testing_hook_fn``, a testing hook of torch 2.13) and
times ``check`` on them after the warm-up: the same guards as every decode step evaluates.

Guard kinds are the leaf guards' class names (``LAMBDA_GUARD``: Python code; the others run
in C++). The Python guards' expressions are split by what they check: tensor-subclass
metadata (``___check_metadata_*``, one ``__tensor_flatten__`` call each), object aliasing
(``a is b``: one object reached through two attribute paths, all in one epilogue lambda),
other. "warm": ``check`` timed back to back; "caches flushed": torch's
``profile_guard_manager``, which flushes the CPU caches before each check, closer to a
decode step, where the weights stream through the caches between two checks.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_report, md_table  # noqa: E402

import lowbit  # noqa: E402
from lowbit import demo  # noqa: E402
from lowbit.decode import static_compiled_decode  # noqa: E402


def build(new_tokens: int, skip_module_guards: bool = False):
    """SmolLM2 as the demo's ``int4-g32-fused-head-compiled`` row: (model, chat prompt inputs)."""
    model, tokenizer = demo.load_model(torch.float32)
    model = model.to(torch.bfloat16)
    lowbit.fuse_projections(model)
    demo._untie_output_head(model)
    lowbit.quantize_(model, lowbit.Int4WeightOnlyConfig(group_size=32), filter_fn=demo._all_linears_filter(model))
    inputs = demo._prompt_ids(tokenizer, demo.PROMPT)
    static_compiled_decode(model, inputs["input_ids"].shape[1] + new_tokens, skip_module_guards=skip_module_guards)
    return model, inputs


def walk_guards(root) -> list:
    """Every leaf guard of a guard-manager tree (relational guards once), epilogue guards included."""
    seen, out = set(), []

    def visit(mgr):
        for g in mgr.get_leaf_guards():
            if id(g) not in seen:
                seen.add(id(g))
                out.append(g)
        for child in mgr.get_child_managers():
            visit(child)
        if hasattr(mgr, "get_key_value_managers"):  # DictGuardManager
            for key_mgr, val_mgr in mgr.get_key_value_managers().values():
                for m in (key_mgr, val_mgr):
                    if m is not None:
                        visit(m)

    visit(root)
    if hasattr(root, "get_epilogue_lambda_guards"):
        out.extend(root.get_epilogue_lambda_guards())
    return out


def python_check_kind(code: str) -> str:
    """What one Python guard expression checks (a LAMBDA_GUARD may hold several)."""
    if "_shared" in code:
        return "FusedSlice shared state (object aliasing)"
    if "check_metadata" in code:
        return "subclass metadata (__tensor_flatten__)"
    if " is " in code:
        return "other object aliasing"
    return "other"


def guard_table(root) -> tuple[collections.Counter, collections.Counter]:
    """(leaf guards by kind, Python guard expressions by what they check)."""
    kinds, python = collections.Counter(), collections.Counter()
    for g in walk_guards(root):
        kind = type(g).__name__
        kinds[kind] += 1
        if kind == "LAMBDA_GUARD":
            for part in g.verbose_code_parts():
                python[python_check_kind(part.split("#")[0])] += 1
    return kinds, python


@torch.inference_mode()  # as generate runs the step: grad mode is part of the guarded global state
def time_check(root, scope, calls: int, rounds: int) -> tuple[float, list[float]]:
    """Median seconds of one ``root.check(scope)`` (rounds of ``calls`` calls each)."""
    if not root.check(scope):
        reasons = root.check_verbose(scope).verbose_code_parts
        raise RuntimeError(f"the compiled step's guards fail on the locals they were built from: {reasons[:3]}")
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            root.check(scope)
        per_round.append((time.perf_counter() - t0) / calls)
    return statistics.median(per_round), per_round


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=64, help="new tokens per timed generate")
    p.add_argument("--runs", type=int, default=5, help="timed generate calls (median reported)")
    p.add_argument("--guard-calls", type=int, default=200, help="guard checks per timing round")
    p.add_argument("--dump", default=None, help="write the whole guard tree (dynamo's printout) to this file")
    p.add_argument("--label", default="", help="a name for this run in the table")
    p.add_argument("--recursive-dict-tags", action="store_true",
                   help="compile with torch._dynamo.config.use_recursive_dict_tags_for_guards (off by default in torch)")
    p.add_argument("--skip-module-guards", action="store_true",
                   help="static_compiled_decode(skip_module_guards=True), its default since 2026-12-07 (the "
                        "model's own step, module guards skipped); without the flag the script passes False: "
                        "transformers' compiled call with every guard")
    p.add_argument("--out", default=None, help="also write the report to this file")
    args = p.parse_args(argv)

    import torch._dynamo.guards as dynamo_guards

    compiled = []  # (guard manager, locals) of every frame dynamo compiles

    def hook(guard_manager, local_scope, builder):
        compiled.append((guard_manager, dict(local_scope)))

    dynamo_guards.guard_manager_testing_hook_fn = hook
    if args.recursive_dict_tags:
        torch._dynamo.config.use_recursive_dict_tags_for_guards = True
    model, inputs = build(args.tokens, args.skip_module_guards)
    t0 = time.perf_counter()
    demo._generate(model, inputs, args.tokens)  # compiles the decode step
    compile_s = time.perf_counter() - t0
    demo._generate(model, inputs, args.tokens)
    times = [demo._time_decode(model, inputs, args.tokens, torch.device("cpu"))[0] for _ in range(args.runs)]
    tps = [args.tokens / t for t in times]
    if len(compiled) != 1:
        raise RuntimeError(f"expected one compiled frame (the decode step), got {len(compiled)}: a recompile?")
    mgr, scope = compiled[0]
    kinds, python = guard_table(mgr.root)
    check_s, check_rounds = time_check(mgr.root, scope, args.guard_calls, 5)
    with torch.inference_mode():  # torch's own profiler: flushes the caches before each check
        cold_us = [torch._C._dynamo.guards.profile_guard_manager(mgr.root, scope, 100) for _ in range(3)]

    label = args.label or "lowbit " + lowbit.__file__.rsplit("/", 2)[0]
    lines = [
        f"## Compiled decode guards: {label}",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; first generate (compile) {compile_s:.0f} s",
        "",
        md_table(
            ["tokens/s (median)", "runs", "leaf guards", "guard check, warm (us)", "warm rounds (us)",
             "guard check, caches flushed (us)"],
            [[f"{statistics.median(tps):.1f}", " ".join(f"{t:.1f}" for t in tps), str(sum(kinds.values())),
              f"{check_s * 1e6:,.0f}", " ".join(f"{t * 1e6:,.0f}" for t in check_rounds),
              " ".join(f"{t:,.0f}" for t in cold_us)]],
        ),
        "",
        md_table(["guard kind", "count"], [[k, str(n)] for k, n in kinds.most_common()]),
        "",
        md_table(["Python guard expressions (in LAMBDA_GUARDs)", "count"],
                 [[k, str(n)] for k, n in python.most_common()]),
    ]
    if args.dump:
        Path(args.dump).write_text(str(mgr))
    return emit_report("\n".join(lines), args.out)


if __name__ == "__main__":
    sys.exit(main())
