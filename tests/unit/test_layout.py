"""The package layout, checked: no import cycles, and imports only go the pipeline's way.

Every module of the product (``brokerscan``, ``scheduler``, ``workers``, ``enrichment``,
``storage``) is parsed; every import counts, at module level or inside a function, and so
does the implicit import of each parent package (``import a.b.c`` runs ``a/__init__`` and
``a/b/__init__`` first). Then:

- the graph has no cycle;
- the core (``brokerscan`` without ``brokerscan.cli``: the model, settings, names, the
  report and the results stream) imports no stage and no CLI module;
- no stage imports a face (the CLI, the REST API, the dashboard); ``enrichment`` and
  ``storage`` import only the core (never each
  other, never ``workers``); ``scheduler`` may use ``storage`` (the durable sweep record);
  ``workers`` may use ``scheduler`` and ``storage``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("brokerscan", "scheduler", "workers", "enrichment", "storage")

#: What each layer may import, besides itself.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "enrichment": {"core"},
    "storage": {"core"},
    "scheduler": {"core", "storage"},
    "workers": {"core", "scheduler", "storage"},
    "faces": {"core", "enrichment", "storage", "scheduler", "workers"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


#: The faces: command line, REST API, web dashboard. They may import everything (and each
#: other); nothing else imports them.
FACES = ("brokerscan.cli", "brokerscan.api", "brokerscan.web")


def layer(module: str) -> str:
    if any(module == face or module.startswith(face + ".") for face in FACES):
        return "faces"
    top = module.split(".", 1)[0]
    return "core" if top == "brokerscan" else top


def _parents(module: str) -> Iterator[str]:
    parts = module.split(".")
    for end in range(1, len(parts)):
        yield ".".join(parts[:end])


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
                and node.test.id == "TYPE_CHECKING":
            for inner in node.body:
                skipped.update(id(n) for n in ast.walk(inner))
    return skipped


def imports_of(module: str, source: str, known: set[str], *, is_package: bool = False,
               runtime: bool = False) -> set[str]:
    """The product modules *module* (whose text is *source*) imports, resolved to modules,
    their parent packages included; with *runtime*, not those only type checkers see."""
    found: set[str] = set()

    def add(name: str) -> None:
        # ``from a.b import c``: c may be a module or a name inside a.b.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
            found.update(p for p in _parents(name) if p in known and p != module)

    tree = ast.parse(source, module)
    skipped = _type_checking_only(tree) if runtime else set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                prefix = f"{base}.{node.module}" if node.module else base
            else:
                prefix = node.module or ""
            for alias in node.names:
                add(f"{prefix}.{alias.name}")
    return found


def graph(*, runtime: bool = False) -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path.read_text(), known,
                             is_package=path.name == "__init__.py", runtime=runtime)
            for name, path in found.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules in order, the first repeated at the end)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_walk_sees_every_kind_of_import() -> None:
    known = {"a", "a.b", "a.b.c", "a.d", "x"}
    source = ("import a.b.c\nfrom a.b import c\nfrom . import d\n"
              "def f():\n    from x import name\n")
    assert imports_of("a.e", source, known) == {"a", "a.b", "a.b.c", "a.d", "x"}
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n"
    assert imports_of("a.e", typing_only, known) == {"x"}
    assert imports_of("a.e", typing_only, known, runtime=True) == set()
    # in a package's __init__, "from . import d" is relative to the package itself
    assert imports_of("a", "from . import d\n", known, is_package=True) == {"a.d"}


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    """No cycle among the imports that run (``if TYPE_CHECKING:`` ones only name types)."""
    cycle = find_cycle(graph(runtime=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_cycles_in_storage_even_of_names() -> None:
    """The stores name no type through a cycle either: the writer and searcher protocols
    say what their callers use, so no module needs the names of one that needs it."""
    edges = {m: {t for t in targets if t.startswith("storage")}
             for m, targets in graph().items() if m.startswith("storage")}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_follow_the_layers() -> None:
    wrong = sorted(
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in graph().items() for target in targets
        if layer(target) != layer(module) and layer(target) not in ALLOWED[layer(module)]
    )
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(n for n in modules() if layer(n) == "core"))
def test_core_modules_import_no_stage(module: str) -> None:
    found = modules()
    path = found[module]
    targets = imports_of(module, path.read_text(), set(found),
                         is_package=path.name == "__init__.py")
    assert {layer(t) for t in targets} <= {"core"}, sorted(targets)


def test_long_modules_say_why_they_are_one_piece() -> None:
    """A module over 400 lines says in its docstring why it is not split."""
    silent = []
    for module, path in modules().items():
        text = path.read_text()
        if text.count("\n") <= 400:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "one piece" not in doc.lower():
            silent.append(f"{module} ({text.count(chr(10))} lines)")
    assert not silent, "over 400 lines without saying why they are one piece: " + ", ".join(
        silent)
