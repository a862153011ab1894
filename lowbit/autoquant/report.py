"""What autoquant measured and decided, per layer, as data and as a markdown table."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["AutoquantReport", "CandidateResult", "LayerReport", "shape_label"]

# Candidate statuses.
OK = "ok"  # measured and in the running
REJECTED = "rejected"  # output SQNR below min_sqnr
UNSUPPORTED = "unsupported"  # the format cannot serve the layer (UnsupportedError)
ERROR = "error"  # the candidate raised one of lowbit's own errors while running


def shape_label(m: int, dtype: str) -> str:
    """Column label of one recorded activation shape, e.g. ``M=256 bfloat16``."""
    return f"M={m} {dtype}"


@dataclasses.dataclass
class CandidateResult:
    """One candidate on one layer.

    ``times`` maps a shape label to seconds per call; ``weighted_time`` is the sum of
    ``count x time`` over the recorded shapes (None if not timed). ``notes`` holds
    per-shape remarks, e.g. interpolated matmul/op times or a coarse (early-stopped) run.
    """

    name: str
    config: dict | None
    status: str = OK
    sqnr: float | None = None
    times: dict[str, float] = dataclasses.field(default_factory=dict)
    weighted_time: float | None = None
    error_type: str | None = None
    message: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LayerReport:
    """One layer: its weight, the activation shapes seen (with counts) and the decision."""

    fqn: str
    weight_shape: tuple[int, ...]
    weight_dtype: str
    shapes: dict[str, int]
    candidates: list[CandidateResult] = dataclasses.field(default_factory=list)
    choice: str = "keep"
    reason: str = ""

    def result(self, name: str) -> CandidateResult:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(f"layer {self.fqn} has no candidate {name!r}")


@dataclasses.dataclass
class AutoquantReport:
    """Everything one autoquant run measured and decided (see ``to_markdown``)."""

    device: str = ""
    torch_version: str = ""
    lowbit_version: str = ""
    mode: str = "op"
    min_sqnr: float | None = None
    layers: dict[str, LayerReport] = dataclasses.field(default_factory=dict)
    never_run: list[str] = dataclasses.field(default_factory=list)
    ineligible: dict[str, str] = dataclasses.field(default_factory=dict)
    finalize_seconds: float = 0.0
    benchmarks_run: int = 0
    cache_hits: int = 0
    # End-to-end check of the plan (see search.validate_end_to_end): the model's time on
    # the calibration calls with each variant (s), and what was decided.
    validation: dict[str, float] = dataclasses.field(default_factory=dict)
    validation_note: str = ""

    @property
    def choices(self) -> dict[str, str]:
        return {fqn: lr.choice for fqn, lr in self.layers.items()}

    @property
    def errors(self) -> dict[str, list[CandidateResult]]:
        """Per layer, the candidates that raised an error."""
        out = {}
        for fqn, lr in self.layers.items():
            errs = [c for c in lr.candidates if c.status == ERROR]
            if errs:
                out[fqn] = errs
        return out

    # ------------------------------------------------------------------ (de)serialization

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoquantReport:
        d = dict(d)
        layers = {}
        for fqn, ld in d.pop("layers", {}).items():
            ld = dict(ld)
            cands = [CandidateResult(**_from_json_safe(c)) for c in ld.pop("candidates", [])]
            ld["weight_shape"] = tuple(ld["weight_shape"])
            layers[fqn] = LayerReport(**ld, candidates=cands)
        return cls(**d, layers=layers)

    # ------------------------------------------------------------------ markdown

    def to_markdown(self) -> str:
        """Summary table, then one table per layer (each candidate's times, SQNR, status)."""
        bar = "none" if self.min_sqnr is None else f"{self.min_sqnr:g} dB"
        lines = [
            "# autoquant report",
            "",
            f"device: {self.device}; torch {self.torch_version}; lowbit {self.lowbit_version}; "
            f"mode: {self.mode}; min SQNR: {bar}; finalize {self.finalize_seconds:.1f} s; "
            f"{self.benchmarks_run} benchmarks run, {self.cache_hits} cache hits",
            "",
        ]
        if self.validation:
            lines += [
                "end to end on the calibration calls: "
                + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.validation.items())
                + (f"; {self.validation_note}" if self.validation_note else ""),
                "",
            ]
        lines += [
            "| layer | weight | shapes seen (count) | choice | time vs keep | why |",
            "|---|---|---|---|---|---|",
        ]
        for fqn, lr in self.layers.items():
            keep = _find(lr, "keep")
            chosen = _find(lr, lr.choice)
            ratio = ""
            if keep and chosen and chosen is not keep and keep.weighted_time and chosen.weighted_time:
                ratio = f"{keep.weighted_time / chosen.weighted_time:.2f}x faster"
            shapes = ", ".join(f"{s} ({n})" for s, n in lr.shapes.items())
            lines.append(
                f"| {fqn} | {'x'.join(map(str, lr.weight_shape))} {lr.weight_dtype} | {shapes} | "
                f"{lr.choice} | {ratio} | {lr.reason} |"
            )
        for fqn in self.never_run:
            lines.append(f"| {fqn} | | never run during calibration | keep | | kept float |")
        for fqn, why in self.ineligible.items():
            lines.append(f"| {fqn} | | | (not eligible) | | {why} |")
        for fqn, lr in self.layers.items():
            cols = list(lr.shapes)
            lines += [
                "",
                f"## {fqn}",
                "",
                "| candidate | SQNR dB | " + " | ".join(f"{c} ms" for c in cols) + " | weighted ms | status |",
                "|---|---|" + "---|" * len(cols) + "---|---|",
            ]
            for c in lr.candidates:
                status = c.status + (" (chosen)" if c.name == lr.choice else "")
                if c.message:
                    status += f": {c.error_type + ': ' if c.error_type else ''}{c.message}"
                if c.notes:
                    status += "; " + "; ".join(c.notes)
                times = " | ".join(_ms(c.times.get(col)) for col in cols)
                lines.append(
                    f"| {c.name} | {_db(c.sqnr)} | {times} | {_ms(c.weighted_time)} | {_cell(status)} |"
                )
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        n = len(self.layers)
        counts: dict[str, int] = {}
        for lr in self.layers.values():
            counts[lr.choice] = counts.get(lr.choice, 0) + 1
        picks = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        return (
            f"autoquant: {n} layers decided ({picks}); {len(self.never_run)} never run, "
            f"{len(self.ineligible)} not eligible; {self.benchmarks_run} benchmarks, "
            f"{self.cache_hits} cache hits, {self.finalize_seconds:.1f} s"
        )


def _find(lr: LayerReport, name: str) -> CandidateResult | None:
    return next((c for c in lr.candidates if c.name == name), None)


def _ms(t: float | None) -> str:
    return "" if t is None else f"{t * 1e3:.4g}"


def _db(s: float | None) -> str:
    if s is None:
        return ""
    return "inf" if math.isinf(s) else f"{s:.1f}"


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _json_safe(v):
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return repr(v)  # "inf", "-inf", "nan": JSON has no such numbers
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _from_json_safe(d: dict) -> dict:
    out = dict(d)
    if isinstance(out.get("sqnr"), str):
        out["sqnr"] = float(out["sqnr"])
    return out
