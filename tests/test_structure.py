"""svlab's shape, checked from the source with ``ast``: no import circle, no overlong file.

The import graph has one node per module (a package is its ``__init__``). Every import
statement counts, at module level or inside a function (a function-level import is a circle
postponed, not removed), and so does a module named by a string constant in a module that
calls ``importlib.import_module`` (``svlab.cli``'s command list). Importing ``a.b.c`` runs
``a/__init__`` and ``a/b/__init__`` first, so it is also an edge to those packages, except to
the packages that enclose the importing module itself: they are always initialised before it.
An explicit ``from a.b import name`` of a module inside ``a.b`` does count as an edge to
``a.b``: it reads the package's ``__init__``, which may not have run to the end yet.
"""

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

SVLAB = Path(importlib.util.find_spec("svlab").origin).parent
MAX_LINES = 450
REASON = "450 lines"  # a longer file's first docstring says why, e.g. "Over 450 lines: ..."


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package at ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _enclosing(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that running ``name`` (the file ``path``) imports."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.add(child if child in modules else base)
    if "import_module" in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}:
        targets.update(
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in modules
        )
    edges = set()
    own = set(_enclosing(name))
    for target in targets:
        if target not in modules:
            continue
        edges.add(target)
        edges.update(p for p in _enclosing(target) if p in modules and p not in own)
    edges.discard(name)
    return edges


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (see the module docstring)."""
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as ``[a, b, ..., a]``, or ``[]`` when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (circle := visit(start)):
            return circle
    return []


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules that lie on an import circle, one sorted list per strongly connected set."""
    reach = {node: set() for node in graph}
    for node in graph:
        todo = list(graph[node])
        while todo:
            nxt = todo.pop()
            if nxt not in reach[node]:
                reach[node].add(nxt)
                todo.extend(graph[nxt])
    found = {tuple(sorted(m for m in reach[n] if n in reach[m])) for n in graph if n in reach[n]}
    return sorted(list(c) for c in found)


def test_no_import_circle_among_svlab_modules():
    circle = find_circle(import_graph(SVLAB))
    assert not circle, "import circle: " + " -> ".join(circle)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_the_check_sees_function_level_package_and_dynamic_circles(tmp_path):
    """The checker is not blind: each of these little packages holds one circle."""
    deferred = _write(tmp_path / "a", {
        "pkg/__init__.py": "", "pkg/one.py": "def f():\n    from pkg.two import g\n",
        "pkg/two.py": "import pkg.one\n",
    })  # fmt: skip
    assert find_circle(import_graph(deferred)) == ["pkg.one", "pkg.two", "pkg.one"]
    assert circles(import_graph(deferred)) == [["pkg.one", "pkg.two"]]
    through_init = _write(tmp_path / "b", {
        "pkg/__init__.py": "", "pkg/sub/__init__.py": "from pkg.sub.inner import x\n",
        "pkg/sub/inner.py": "x = 1\n", "pkg/other.py": "from pkg.sub.inner import x\n",
        "pkg/sub/more.py": "import pkg.other\n",
    })  # fmt: skip
    graph = import_graph(through_init)
    assert "pkg.sub" in graph["pkg.other"] and "pkg.sub" not in graph["pkg.sub.inner"]
    assert find_circle(graph) == []  # pkg.sub's __init__ does not import pkg.sub.more
    (through_init / "sub" / "__init__.py").write_text("from pkg.sub import more\n")
    assert find_circle(import_graph(through_init)) == [
        "pkg.other", "pkg.sub", "pkg.sub.more", "pkg.other"
    ]  # fmt: skip
    dynamic = _write(tmp_path / "c", {
        "pkg/__init__.py": "", "pkg/cli.py": "import importlib\nNAMES = ['pkg.tool']\n"
        "def run():\n    return [importlib.import_module(n) for n in NAMES]\n",
        "pkg/tool.py": "from pkg import cli\n",
    })  # fmt: skip
    assert find_circle(import_graph(dynamic)) == ["pkg.cli", "pkg.tool", "pkg.cli"]


def test_quantization_builds_on_the_trainer_not_the_reverse():
    """Of svlab.train's modules only the command line (``svlab train``) imports svlab.quant,
    and only quantizers that do not import svlab.train; quant's fine-tuning imports train."""
    graph = import_graph(SVLAB)
    quant_users = {m for m, edges in graph.items() if m.startswith("svlab.train")
                   and any(e.startswith("svlab.quant") for e in edges)}  # fmt: skip
    assert quant_users == {"svlab.train.cli"}
    assert "svlab.train" in graph["svlab.quant.finetune"]
    assert not any(e.startswith("svlab.train") for e in graph["svlab.quant"])
    assert "svlab.reversible" not in graph and "svlab.models.reversible" in graph["svlab.models"]
    assert not any(e.startswith("svlab.profiles") for m, es in graph.items()
                   if m.startswith("svlab.data") for e in es)  # fmt: skip


@pytest.mark.parametrize(
    "path", sorted(SVLAB.rglob("*.py")), ids=lambda p: str(p.relative_to(SVLAB.parent))
)
def test_no_file_over_450_lines_without_a_reason(path):
    lines = len(path.read_text().splitlines())
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert lines <= MAX_LINES or REASON in docstring, (
        f"{path.relative_to(SVLAB.parent)} has {lines} lines; split it, or say why not in its "
        f"first docstring (mentioning '{REASON}')"
    )


MOVED = {  # old path -> new path, kept for one release
    "svlab.step_memory": "svlab.memory.step",
    "svlab.saved_tensors": "svlab.memory.saved_tensors",
    "svlab.memory_figures": "svlab.memory.figures",
    "svlab.widgets": "svlab.workbench.widgets",
}


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_a_moved_module_still_imports_from_its_old_path_with_a_warning(old, new):
    moved = importlib.import_module(new)
    public = [n for n in vars(moved) if not n.startswith("_") and callable(getattr(moved, n))]
    sys.modules.pop(old, None)
    try:
        with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
            shim = importlib.import_module(old)
        assert public and all(getattr(shim, n) is getattr(moved, n) for n in public)
        with pytest.raises(AttributeError):
            shim.no_such_name  # noqa: B018
    finally:
        sys.modules.pop(old, None)
    users = sorted(m for m, edges in import_graph(SVLAB).items() if old in edges)
    assert not users, f"{', '.join(users)} still import {old}: import {new}"
