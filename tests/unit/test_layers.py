"""The layering rule of docs/design.md, checked on the source: parse every module's imports
(including function-local and TYPE_CHECKING ones) with `ast`, map each module to its layer and
fail on an upward import, an import between sibling layers, or an import cycle.

    sweep -> run -> tracking -> methods -> {pretrain, finetune, eval} -> models -> data -> config -> io
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from components.config import REPO_ROOT

ROOT = REPO_ROOT

# Layer of a module: the longest matching prefix. Rank: a module may import only lower ranks or
# its own layer; equal ranks with different names are siblings and may not import each other.
LAYERS = {
    "components.io": ("io", 0), "components.errors": ("io", 0), "components.checkpoint": ("io", 0),
    "components.cluster": ("io", 0), "components.lock": ("io", 0),
    "components.progress": ("io", 0), "components.ray_env": ("io", 0), "components.seeding": ("io", 0),
    "components.config": ("config", 1), "components.cli": ("config", 1),
    "components.data": ("data", 2),
    "components.models": ("models", 3),
    "components.pretrain": ("pretrain", 4), "components.finetune": ("finetune", 4), "components.eval": ("eval", 4),
    "components.methods": ("methods", 5),
    "components.tracking": ("tracking", 6),
    "components.run": ("run", 7),
    "components.sweep": ("sweep", 8),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> tuple[str, int] | None:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len, default=None)
    return LAYERS[best] if best else None


def imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports (`from pkg import mod` counts as pkg.mod when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            assert not isinstance(node, ast.ImportFrom), f"{path}: relative import"
            continue
        out |= {n for n in names if n.split(".")[0] in ("components", "pipelines", "benchmarks", "tests")}
    return out


def import_graph() -> dict[str, set[str]]:
    files = sorted((ROOT / "components").rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) - {module_name(p)} for p in files}


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in graph.items():
        la = layer(a)
        for b in targets:
            lb = layer(b)
            if a == "components" or b == "components":
                continue
            if la is None or lb is None:
                bad.append(f"{a} -> {b}: module outside the layer map (add it to LAYERS and docs/design.md)")
            elif lb[1] > la[1] or (lb[1] == la[1] and lb[0] != la[0]):
                bad.append(f"{a} ({la[0]}) -> {b} ({lb[0]})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_components_module_has_a_layer():
    assert [m for m in import_graph() if m != "components" and layer(m) is None] == []


def test_no_upward_or_sibling_import():
    assert upward_edges(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_components_never_import_entry_points_or_tests():
    graph = import_graph()
    assert sorted(f"{a} -> {b}" for a, bs in graph.items() for b in bs if not b.startswith("components")) == []


@pytest.mark.parametrize("edge, ok", [
    (("components.pretrain.loop", "components.methods.registry"), False),   # upward
    (("components.finetune.loop", "components.eval.metrics"), False),       # sibling
    (("components.run.execute", "components.models.task_model"), True),     # downward
    (("components.pretrain.loop", "components.pretrain.plugin"), True),     # same layer
])
def test_the_checker_flags_what_it_should(edge, ok):
    a, b = edge
    assert (upward_edges({a: {b}, b: set()}) == []) is ok


def test_the_checker_finds_a_cycle():
    assert cycles({"components.a": {"components.b"}, "components.b": {"components.a"}}) == [["components.a", "components.b"]]
