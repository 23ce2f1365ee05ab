"""Print pip pins that hold every declared dependency at its floor (``name==floor``).

Usage: ``python scripts/floor_pins.py [pyproject.toml] > pins.txt``

The pins cover ``[build-system] requires``, ``[project] dependencies`` and the ``test``
extra: scripts/lower_bounds.sh installs them into ``.venv-floor`` and runs the unit tests
there, so that every ``>=`` in pyproject.toml is a version brokerscan really works with.
A requirement without a ``>=`` floor is an error (tests/unit/test_dependencies.py says so
too). Markers and extras are kept. Needs ``packaging`` (run it with .venv/bin/python).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

EXTRAS = ("test",)


def declared(pyproject: dict[str, object]) -> list[str]:
    """Every requirement string the floor venv installs, in pyproject order."""
    build = pyproject.get("build-system", {})
    project = pyproject.get("project", {})
    assert isinstance(build, dict) and isinstance(project, dict)
    found: list[str] = list(build.get("requires", []))
    found += project.get("dependencies", [])
    optional = project.get("optional-dependencies", {})
    for extra in EXTRAS:
        found += optional.get(extra, [])
    return found


def floor_pin(text: str) -> str:
    """``"redis>=5.0.1"`` -> ``"redis==5.0.1"``; extras and markers are kept.

    :raises ValueError: if the requirement has no ``>=`` floor
    """
    req = Requirement(text)
    floors = [spec.version for spec in req.specifier if spec.operator == ">="]
    if len(floors) != 1:
        raise ValueError(f"{text!r} needs exactly one '>=' floor")
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{req.name}{extras}=={floors[0]}{marker}"


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "pyproject.toml")
    pyproject = tomllib.loads(path.read_text(encoding="utf-8"))
    try:
        pins = [floor_pin(text) for text in declared(pyproject)]
    except ValueError as exc:
        sys.stderr.write(f"floor_pins: {path}: {exc}\n")
        return 2
    sys.stdout.write("".join(f"{pin}\n" for pin in pins))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
