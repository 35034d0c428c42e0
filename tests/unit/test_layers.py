"""The layering rules of the code base, checked on the source (AST), imports inside functions
included.  The table below is the architecture: README, "Layout", draws the same picture.

- every import between our layers is one the table allows, and the layer graph has no cycle;
- no import cycle between modules (inside functions included);
- faust, aiokafka and kafka-python are imported only under ``stream/kafka/``;
- ``stream/core/`` imports only the standard library, numpy and orjson;
- the environment is read only by ``stream/settings.py``;
- every exception class we define derives from ``ProfilesError``.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("stream", "encoder", "index")

# layer -> the layers it may import (besides itself).  Longest module prefix decides a module's
# layer.  Read top-down: each layer only points at layers listed before it.
LAYERS: dict[str, tuple[str, ...]] = {
    "stream.core": (),
    "stream.settings": ("stream.core",),
    "index": ("stream.core",),
    "encoder": ("stream.core",),
    "stream.data": ("stream.core",),
    "encoder.training": ("stream.core", "stream.data", "encoder"),
    "stream.worker": ("stream.core", "stream.settings", "index", "encoder"),
    "stream.kafka": ("stream.core", "stream.settings", "stream.worker"),
    "stream.serve": ("stream.core", "stream.settings", "stream.worker"),
    "stream.tools": ("stream.core", "stream.settings", "stream.data", "stream.worker",
                     "stream.kafka", "encoder"),
    "stream.service": ("stream.core", "stream.settings", "stream.worker", "stream.kafka",
                       "stream.serve", "encoder", "index"),
    "stream.bench": ("stream.core", "stream.settings", "stream.data", "stream.worker",
                     "stream.kafka", "stream.tools", "encoder"),
    # the side-by-side evaluation (profiles eval, ranker train/eval): offline, reads logs
    "stream.eval": ("stream.core", "stream.settings", "stream.data", "encoder",
                    "encoder.training", "index"),
    "stream.cli": ("stream.core", "stream.settings", "stream.data", "stream.kafka",
                   "stream.tools", "stream.service", "stream.bench", "encoder",
                   "encoder.training", "stream.eval"),
    "stream": (),  # the package itself (stream/__init__.py): imports nothing of ours
}

KAFKA_CLIENTS = ("faust", "aiokafka", "kafka", "mode")
CORE_THIRD_PARTY = ("numpy", "orjson")
# Reading the environment outside Settings, each with its reason.
ENV_EXEMPT = {
    "encoder.transformer": "forces the transformers library offline (HF_HUB_OFFLINE); sets a "
                           "third-party switch, reads no configuration",
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the module, at any depth."""
    out = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if _is_package(name) else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            for a in node.names:  # `from pkg import module` imports the module
                sub = f"{mod}.{a.name}"
                out.append((sub if sub in MODULES else mod, node.lineno))
    return out


def _ours(target: str) -> str | None:
    """The module of ours that an import names (the longest known prefix), else None."""
    parts = target.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in MODULES:
            return cand
        parts.pop()
    return None


def _layer(module: str) -> str:
    best = max((lay for lay in LAYERS if module == lay or module.startswith(lay + ".")), key=len,
               default=None)
    assert best is not None, f"module {module} is in no layer: add it to LAYERS"
    return best


def _edges() -> dict[str, set[tuple[str, int]]]:
    edges: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for name in MODULES:
        for target, line in _imports(name):
            mod = _ours(target)
            if mod is not None and mod != name:
                edges[name].add((mod, line))
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    nodes = set(graph) | {v for vs in graph.values() for v in vs}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_layer_table_itself_is_acyclic() -> None:
    graph = {lay: set(deps) for lay, deps in LAYERS.items()}
    assert not _cycles(graph)
    assert all(d in LAYERS for deps in LAYERS.values() for d in deps)


def test_imports_between_layers_follow_the_table() -> None:
    bad = []
    for name, targets in _edges().items():
        src = _layer(name)
        for mod, line in targets:
            dst = _layer(mod)
            if dst != src and dst not in LAYERS[src]:
                bad.append(f"{MODULES[name].relative_to(ROOT)}:{line}: {src} imports {mod} ({dst})")
    assert not bad, "imports the layer table does not allow:\n" + "\n".join(sorted(bad))


def test_no_import_cycle_between_modules_or_layers() -> None:
    edges = _edges()
    modules = {name: {m for m, _ in targets} for name, targets in edges.items()}
    assert not _cycles(modules), _cycles(modules)
    layers: dict[str, set[str]] = defaultdict(set)
    for name, targets in modules.items():
        layers[_layer(name)] |= {_layer(m) for m in targets} - {_layer(name)}
    assert not _cycles(layers), _cycles(layers)
    # the top-level packages: encoder and index reach into stream only for its pure core
    for name, targets in modules.items():
        if name.split(".")[0] in ("encoder", "index"):
            outside = {m for m in targets if m.split(".")[0] == "stream"
                       and _layer(m) not in ("stream.core", "stream.data")}
            assert not outside, (name, outside)


def _third_party(name: str) -> set[tuple[str, int]]:
    return {(t.split(".")[0], line) for t, line in _imports(name)
            if t.split(".")[0] not in PACKAGES and t.split(".")[0] not in sys.stdlib_module_names}


def test_kafka_clients_are_imported_only_in_the_kafka_layer() -> None:
    bad = [f"{MODULES[n].relative_to(ROOT)}:{line}: {top}"
           for n in MODULES if _layer(n) != "stream.kafka"
           for top, line in _third_party(n) if top in KAFKA_CLIENTS]
    assert not bad, "\n".join(bad)


def test_the_core_is_pure() -> None:
    bad = [f"{MODULES[n].relative_to(ROOT)}:{line}: {top}"
           for n in MODULES if _layer(n) == "stream.core"
           for top, line in _third_party(n) if top not in CORE_THIRD_PARTY]
    assert not bad, "\n".join(bad)


def _reads_environment(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb") \
                and isinstance(node.value, ast.Name) and node.value.id == "os":
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                a.name in ("environ", "getenv", "environb") for a in node.names):
            lines.append(node.lineno)
    return lines


def test_only_settings_reads_the_environment() -> None:
    bad = [f"{MODULES[n].relative_to(ROOT)}:{line}"
           for n in MODULES if n not in ("stream.settings", *ENV_EXEMPT)
           for line in _reads_environment(TREES[n])]
    assert not bad, "os.environ outside stream/settings.py:\n" + "\n".join(bad)


def test_every_exception_we_define_derives_from_profiles_error() -> None:
    from stream.core.errors import ProfilesError

    found = 0
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception")))
                    or isinstance(b, ast.Attribute) and b.attr.endswith(("Error", "Exception"))
                    for b in node.bases):
                module = __import__(name, fromlist=["_"])
                cls = getattr(module, node.name)
                found += 1
                assert issubclass(cls, ProfilesError), f"{name}.{node.name} is not a ProfilesError"
    assert found >= 8


# Every `type: ignore` in the packages, counted: a new one changes this number on purpose (and
# the README's "Type checking" line).  Each names its error code and says why on the same line.
TYPE_IGNORES = 1


def test_every_type_ignore_names_its_code_and_says_why() -> None:
    import re

    pattern = re.compile(r"#\s*type:\s*ignore\[[a-z-]+(,\s*[a-z-]+)*\]\s+#\s*\S.{7,}")
    found, bad = [], []
    for path in MODULES.values():
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "type: ignore" in line:
                where = f"{path.relative_to(ROOT)}:{i}"
                found.append(where)
                if not pattern.search(line):
                    bad.append(where)
    assert not bad, f"`type: ignore` without [code] and a reason: {bad}"
    assert len(found) == TYPE_IGNORES, found
