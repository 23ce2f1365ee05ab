"""The reading half of ``brokerscan import`` (brokerscan/cli/importer.py): keys from the
result alone, batches, line numbers, bad lines; no store (tests/integration/test_import.py
runs the command against real ones)."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime

import pytest

from brokerscan.cli.importer import Batch, ResultReader, keyed
from brokerscan.model import ScanResult
from enrichment.lookup import Enricher, open_enricher
from tests.unit.storage.gen import make_result


@pytest.fixture(scope="module")
def enricher() -> Enricher:
    return open_enricher(["builtin:"])


def result(i: int, *, sweep: bool = True) -> ScanResult:
    made = make_result(random.Random(i), ("sw-a", datetime(2026, 3, 1, 23, 0, tzinfo=UTC)),
                       f"127.0.0.{i}", 1883,
                       observed_at=datetime(2026, 3, 1, 23, 30, tzinfo=UTC).replace(minute=i))
    if sweep:
        return made
    return made.model_copy(update={"sweep_id": None, "sweep_started_at": None, "asn": None,
                                   "geo": None})


def test_a_sweepless_result_is_keyed_by_its_own_utc_day() -> None:
    bare = result(5, sweep=False)
    key = keyed(bare)
    assert key.sweep_id == "import-20260301T000000Z"
    assert key.sweep_started_at == datetime(2026, 3, 1, tzinfo=UTC)
    assert keyed(bare) == key  # nothing but the result decides
    swept = result(6)
    assert keyed(swept) is swept
    # a sweep_started_at without a sweep id names the sweep; a sweep id without a start
    # gets the midnight before the observation
    started = bare.model_copy(update={"sweep_started_at": datetime(2026, 3, 1, 22, 0, 1,
                                                                   tzinfo=UTC)})
    assert keyed(started).sweep_id == "import-20260301T220001Z"
    named = bare.model_copy(update={"sweep_id": "sw-b"})
    assert (keyed(named).sweep_id, keyed(named).sweep_started_at) == (
        "sw-b", datetime(2026, 3, 1, tzinfo=UTC))


def test_batches_number_lines_and_skip_bad_ones(enricher: Enricher) -> None:
    good = [result(i, sweep=i % 2 == 0).to_json().encode() + b"\n" for i in range(5)]
    data = b"".join([
        good[0], b"\n", good[1],
        b'{"a": "' + b"x" * 6000 + b'"}\n',  # too long: read past, never held
        b"\xff\xfe{}\n",
        good[2], good[3], b"not json\n", good[4].rstrip(b"\n"),
    ])
    reader = ResultReader(io.BytesIO(data), enricher, batch=3, max_line=5000)
    batches: list[Batch] = []
    while not batches or not batches[-1].done:
        batches.append(reader.read())
    assert [b.numbers for b in batches] == [[1, 3], [6, 7], [9]]
    bad = [(line.number, line.reason) for b in batches for line in b.bad]
    assert bad == [(4, "longer than 5,000 bytes"), (5, "not UTF-8 text (byte 1 of the line)"),
                   (8, bad[2][1])]
    assert bad[2][1].startswith("invalid result: ")
    assert reader.lines == 9 and reader.position == len(data)
    results = [r for b in batches for r in b.results]
    assert all(r.sweep_id and r.sweep_started_at and r.asn and r.geo for r in results)
    records = [r for b in batches for r in b.records]
    for line, got, record in zip(good, results, records, strict=True):
        came = ScanResult.model_validate_json(line)
        if came.asn is not None and came.geo is not None and came.sweep_id:
            assert got == came  # as it came, and its line is the record stored
            assert record == line.decode().rstrip("\n") == got.to_json()
        else:  # keyed, and enriched where it was not: serialised again
            assert got.asn is not None and got.geo is not None
            assert came.asn is not None or got.asn.reserved
            assert record is None
    assert any(r is not None for r in records), records


def test_only_this_brokerscans_own_form_is_stored_as_it_came(enricher: Enricher) -> None:
    made = result(1)
    own = made.to_json()
    spaced = json.dumps(json.loads(own))
    older = own.replace('"schema_version":3', '"schema_version":2')
    reader = ResultReader(io.BytesIO(f"{own}\r\n{spaced}\n{older}\n".encode()), enricher)
    batch = reader.read()
    assert batch.records == [own, None, None]
    assert batch.results[0] == batch.results[1] == made
