"""Export cells (storage/export.py): pure, no database."""

from __future__ import annotations

from datetime import UTC, datetime

from brokerscan.mqttcodes import LEVEL_NAMES, level_of
from storage.dialect import SQLITE
from storage.export import CELLS, _cells_of, cell, csv_header, formula_safe, hit_cells
from storage.searcher import EXPORT_COLUMNS, Hit

WHEN = datetime(2026, 3, 1, 6, 0, 1, 250, tzinfo=UTC)


def _values() -> dict[str, object]:
    values: dict[str, object] = dict.fromkeys(EXPORT_COLUMNS)
    values.update(ip="10.0.0.1", port=1883, transport="tcp", tls=False, anonymous=True,
                  product="=cmd()", org="ACME, Inc.", first_seen=WHEN, last_seen=WHEN)
    return values


def test_a_hit_and_a_stored_row_make_the_same_cells() -> None:
    values = _values()
    from_hit = hit_cells(Hit(values, "{}"))
    stored = [SQLITE.encode_time(v) if isinstance(v, datetime) else
              int(v) if isinstance(v, bool) else v for v in values.values()]
    assert _cells_of(SQLITE.decode_time)(stored) == from_hit
    named = dict(zip(EXPORT_COLUMNS, from_hit, strict=True))
    assert named["tls"] == "false" and named["anonymous"] == "true"
    assert named["product"] == "'=cmd()" and named["org"] == "ACME, Inc."
    assert named["first_seen"] == WHEN.isoformat() and named["cert_trusted"] is None
    assert named["port"] == 1883


def test_the_header_and_the_rules_name_every_column_once() -> None:
    assert csv_header() == ",".join(EXPORT_COLUMNS) + "\n"
    assert [c for c, _ in CELLS] == list(EXPORT_COLUMNS)
    assert formula_safe("") == "" and formula_safe("-1") == "'-1"


def test_facet_values_become_cells_too() -> None:
    assert cell("tls", True) == "true"
    assert cell("org", "@evil") == "'@evil"
    assert cell("first_seen", "2026-03-01") == "2026-03-01"  # a day, counted by day
    assert cell("port", 8883) == 8883


def test_mqtt_levels_are_named_in_one_place() -> None:
    assert [level_of(name) for name in LEVEL_NAMES.values()] == list(LEVEL_NAMES)
    assert level_of("4") == 4
