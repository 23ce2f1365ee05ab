"""The floors of pyproject.toml, and whether floors.txt still holds each of them.

Usage (scripts/floors.sh runs both)::

    python scripts/floors.py requirements [pyproject.toml]   # what uv resolves at the floors
    python scripts/floors.py check floors.txt [pyproject.toml]

``floors.txt`` is uv's ``--resolution lowest-direct`` of every declared requirement (the
build system's, the dependencies, the ``test`` extra): each one at its lowest allowed
version, what lies beneath them at whatever fits. uv does the resolving; this module only
lists what to resolve and checks the answer: every requirement has exactly one ``>=``
floor, and floors.txt pins each at that floor. A floor that cannot be installed beside the
others is resolved higher by uv, and ``check`` names it (raise it in pyproject.toml); a
floor changed or a requirement added since floors.txt was made is named the same way.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

EXTRAS = ("test",)


def declared(pyproject: dict[str, object]) -> list[str]:
    """Every requirement string the floor venv holds, in pyproject order."""
    build = pyproject.get("build-system", {})
    project = pyproject.get("project", {})
    assert isinstance(build, dict) and isinstance(project, dict)
    found: list[str] = list(build.get("requires", []))
    found += project.get("dependencies", [])
    optional = project.get("optional-dependencies", {})
    for extra in EXTRAS:
        found += optional.get(extra, [])
    return found


def floor(text: str) -> tuple[str, str]:
    """``"redis>=5.0.1"`` -> ``("redis", "5.0.1")`` (the name canonical).

    :raises ValueError: if the requirement has no single ``>=`` floor
    """
    req = Requirement(text)
    floors = [spec.version for spec in req.specifier if spec.operator == ">="]
    if len(floors) != 1:
        raise ValueError(f"{text!r} needs exactly one '>=' floor")
    return canonicalize_name(req.name), floors[0]


def pinned(lines: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file (hashes, comments and markers
    ignored), by canonical name."""
    out: dict[str, str] = {}
    for line in lines.splitlines():
        line = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if "==" not in line or line.startswith("-"):
            continue
        name, version = line.split(";", 1)[0].split("==", 1)
        out[canonicalize_name(name.split("[", 1)[0].strip())] = version.strip()
    return out


def problems(pyproject: dict[str, object], floors_txt: str) -> list[str]:
    """Why floors.txt does not hold pyproject's floors (empty if it does)."""
    have = pinned(floors_txt)
    out = []
    for text in declared(pyproject):
        name, want = floor(text)
        got = have.get(name)
        if got is None:
            out.append(f"{name} is not in floors.txt")
        elif Version(got) != Version(want):
            out.append(f"{name} floor {want} but floors.txt has {got}")
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("requirements", "check"):
        sys.stderr.write("usage: floors.py requirements [pyproject.toml] | "
                         "check floors.txt [pyproject.toml]\n")
        return 2
    command, rest = argv[0], argv[1:]
    floors_txt = Path(rest.pop(0)) if command == "check" and rest else Path("floors.txt")
    path = Path(rest[0] if rest else "pyproject.toml")
    pyproject = tomllib.loads(path.read_text(encoding="utf-8"))
    try:
        if command == "requirements":
            texts = declared(pyproject)
            for text in texts:
                floor(text)
            sys.stdout.write("".join(f"{text}\n" for text in texts))
            return 0
        found = problems(pyproject, floors_txt.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"floors: {exc}\n")
        return 2
    if found:
        sys.stderr.write(f"floors: {floors_txt} does not hold pyproject.toml's floors "
                         f"({'; '.join(found)}): run scripts/floors.sh --lock, and raise a "
                         f"floor that uv resolves higher\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
