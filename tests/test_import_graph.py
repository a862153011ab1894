"""The package's import graph: acyclic, and no module takes a private name from a sibling format."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "lowbit"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path):
    """(imported module, names, line) for every lowbit import in ``path``, function-level ones included."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("lowbit"):
                continue
            names = [a.name for a in node.names]
            if node.module is None:  # from . import x: each name is a submodule
                for n in names:
                    yield f"{target}.{n}", [], node.lineno
            else:
                yield target, names, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("lowbit"):
                    yield a.name, [], node.lineno


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _graph():
    graph = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for target, names, _ in _imports(path):
            # "from pkg import sub" imports the submodule when one exists by that name.
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            for t in subs or [target]:
                # The root package is every module's parent (imported first anyway).
                if t in MODULES and t not in (m, "lowbit"):
                    graph[m].add(t)
    return graph


def test_import_graph_is_acyclic():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


FORMAT_MODULES = sorted(m for m in MODULES if m.startswith("lowbit.tensors.") and m.rsplit(".", 1)[1] not in ("base",))


@pytest.mark.parametrize("module", FORMAT_MODULES)
def test_no_private_names_from_sibling_formats(module):
    bad = [
        (target, n, line)
        for target, names, line in _imports(MODULES[module])
        if target in FORMAT_MODULES and target != module
        for n in names
        if n.startswith("_")
    ]
    assert not bad, f"{module} imports private names from sibling formats: {bad}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_alone(module):
    # Every module can be the first one imported (in this process lowbit is loaded
    # already; the acyclic graph above is what makes the order irrelevant).
    __import__(module)
