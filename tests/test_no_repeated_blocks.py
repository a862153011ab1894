"""No block of six or more lines is written twice in lowbit/ (Python, Triton kernels
included; the per-ISA C++ kernel variants in lowbit/csrc/ are documented repeats and not
scanned).

Lines are compared with whitespace stripped; blank lines, comments and import lines
(parenthesized import lists included) are left out (an import list names what a module
uses, it is not logic)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1] / "lowbit"
MIN_LINES = 6
_SKIP = re.compile(r"^(#|from \S+ import|import |\)$|\]$|\}$|\"\"\"$|$)")


def _lines(path):
    out = []
    in_import = False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if in_import:
            in_import = not s.startswith(")")
            continue
        if re.match(r"^from \S+ import \($", s):
            in_import = True
            continue
        if not _SKIP.match(s) and not (s.endswith(",") and s.startswith(('"', "'")) and len(s) < 40):
            out.append((s, n))
    return out


def test_no_six_line_block_is_repeated():
    seen: dict[tuple[str, ...], tuple[str, int]] = {}
    repeats = []
    for path in sorted(ROOT.rglob("*.py")):
        lines = _lines(path)
        rel = path.relative_to(ROOT.parent)
        for i in range(len(lines) - MIN_LINES + 1):
            key = tuple(s for s, _ in lines[i:i + MIN_LINES])
            where = (str(rel), lines[i][1])
            first = seen.setdefault(key, where)
            if first != where and first[0] != where[0] or first[1] + MIN_LINES <= where[1] and first != where:
                repeats.append(f"{where[0]}:{where[1]} repeats {first[0]}:{first[1]}")
    assert not repeats, "repeated blocks (move them into one shared helper):\n" + "\n".join(repeats[:20])
