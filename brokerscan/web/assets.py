"""The dashboard's files, read once from ``static/`` and kept in memory with their gzip
form (the largest, ECharts, is 675 kB and 229 kB compressed) and an ETag."""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from importlib.resources import files
from pathlib import PurePosixPath
from typing import Final

__all__ = ["STATIC", "Asset", "load_assets", "make_asset"]

#: The package folder the files come from.
STATIC: Final = "static"

_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
#: Below this size gzip saves too little to bother.
_GZIP_FROM: Final = 1024


@dataclass(frozen=True, slots=True)
class Asset:
    """One file: its bytes, its gzip form (None when not worth it), type and ETag."""

    body: bytes
    gzipped: bytes | None
    media_type: str
    etag: str


def _media_type(name: str) -> str:
    suffix = PurePosixPath(name).suffix
    if suffix in _TYPES:
        return _TYPES[suffix]
    if name.startswith("LICENSE") or "-LICENSE" in name or name.endswith("NOTICE"):
        return "text/plain; charset=utf-8"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def make_asset(body: bytes, media_type: str) -> Asset:
    """*body* as an asset: gzipped when that saves something, its ETag a hash of it."""
    packed = gzip.compress(body, 9, mtime=0) if len(body) >= _GZIP_FROM else None
    return Asset(body=body,
                 gzipped=packed if packed is not None and len(packed) < len(body) else None,
                 media_type=media_type,
                 etag='"' + hashlib.sha256(body).hexdigest()[:20] + '"')


def load_assets() -> dict[str, Asset]:
    """Every file under ``static/``, by its path relative to it (``js/search.js``)."""
    found: dict[str, Asset] = {}
    root = files("brokerscan.web") / STATIC
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        for entry in folder.iterdir():
            name = f"{prefix}{entry.name}"
            if entry.is_dir():
                stack.append((entry, name + "/"))
                continue
            found[name] = make_asset(entry.read_bytes(), _media_type(entry.name))
    return found
