"""Benchmark: time of one trust verdict for hostile chains and normal ones, new vs old code.

    .venv/bin/python bench/tls_trust.py [--rounds R] [--old-limit S] [--old-rev REV]

Chains from tests/certs.py (made here, nothing fetched). Each is judged against the system
roots with :func:`workers.tlstrust.verify_chain` (no cache: a fresh verdict every round;
best of R). ``old`` is the path builder that issue 8 replaced, taken from git history
(``workers/tlsinfo.py`` at ``--old-rev``) and run in a child process per chain, killed after
``--old-limit`` seconds (shown as ``>S``). The last rows are the normal cases: a leaf under
an intermediate of a test root (judged against that root: trusted) and against the system
roots (unknown-issuer), plus a cached repeat through :func:`trust_of`.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import certs
from tests.certs import Hostile, make_pki
from workers.tlstrust import RootStore, system_roots, trust_of, verify_chain

ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "71a11eb"  # the last commit with the unbounded path builder


def _hostile() -> list[Hostile]:
    return [certs.duplicated_ca(9), certs.duplicated_ca(20), certs.duplicated_ca(100),
            certs.duplicated_leaf(20), certs.duplicated_leaf(100), certs.long_chain(50),
            certs.loop_chain(), certs.mesh_chain(8), certs.mesh_chain(16),
            certs.mesh_chain(100), certs.many_sans(5000)]


def _best(chain: list[bytes], roots: RootStore, rounds: int) -> tuple[float, str]:
    now = datetime.now(UTC)
    best = float("inf")
    verdict: tuple[bool, str | None] = (False, None)
    for _ in range(rounds):
        started = time.perf_counter()
        verdict = verify_chain(chain, roots, now)
        best = min(best, time.perf_counter() - started)
    return best, "trusted" if verdict[0] else str(verdict[1])


def _old_worker(path: Path, chain: list[bytes], out: multiprocessing.Queue[float]) -> None:
    spec = importlib.util.spec_from_file_location("old_tlsinfo", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_tlsinfo"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    roots = module.system_roots()
    now = datetime.now(UTC)
    started = time.perf_counter()
    module.verify_chain(chain, roots, now)
    out.put(time.perf_counter() - started)


def _old(source: Path | None, chain: list[bytes], limit: float) -> str:
    if source is None:
        return "n/a"
    queue: multiprocessing.Queue[float] = multiprocessing.Queue()
    child = multiprocessing.Process(target=_old_worker, args=(source, chain, queue))
    child.start()
    child.join(limit + 5)  # + loading the old module and the system roots
    if child.is_alive():
        child.kill()
        child.join()
        return f">{limit:.0f} s"
    return f"{queue.get() * 1000:,.1f} ms" if not queue.empty() else "failed"


def _old_source(rev: str, directory: Path) -> Path | None:
    """The old module, written from git history into ``directory`` (None without git)."""
    done = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:workers/tlsinfo.py"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None
    path = directory / "old_tlsinfo.py"
    path.write_text(done.stdout)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--old-limit", type=float, default=20.0)
    parser.add_argument("--old-rev", default=OLD_REV)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, _old_source(args.old_rev, Path(tmp)))


def run(args: argparse.Namespace, source: Path | None) -> None:
    roots = system_roots()
    print(f"{'chain':<22} {'sent':>5}  {'verdict':<22} {'new':>10}  {'old':>12}")
    for chain in _hostile():
        ders = chain.ders
        best, verdict = _best(ders, roots, args.rounds)
        old = _old(source, ders, args.old_limit)
        print(f"{chain.name:<22} {len(ders):>5}  {verdict:<22} {best * 1000:>7.2f} ms"
              f"  {old:>12}")
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(tmp)
    normal = [pki.chained.der, pki.intermediate.der]
    test_root = RootStore([pki.ca.cert])
    for label, store in (("normal (test root)", test_root), ("normal (system)", roots)):
        best, verdict = _best(normal, store, args.rounds)
        old = _old(source, normal, args.old_limit) if store is roots else ""
        print(f"{label:<22} {len(normal):>5}  {verdict:<22} {best * 1000:>7.2f} ms  {old:>12}")
    now = datetime.now(UTC)
    trust_of(normal, now, test_root)
    started = time.perf_counter()
    for _ in range(1000):
        trust_of(normal, now, test_root)
    per = (time.perf_counter() - started) / 1000
    print(f"{'normal, cached':<22} {len(normal):>5}  {'trusted':<22} {per * 1000:>7.3f} ms")


if __name__ == "__main__":
    main()
