"""The backends' dialects (storage/dialect.py): pure, no database."""

from __future__ import annotations

from datetime import UTC, date, datetime

from storage.dialect import PG, SQLITE, Params


def test_parameters_are_numbered_or_counted_and_times_travel_as_each_store_keeps_them(
) -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    pg, sqlite = Params(PG), Params(SQLITE)
    assert [pg.add(v) for v in (1, moment, date(2026, 1, 2))] == ["$1", "$2", "$3"]
    assert [sqlite.add(v) for v in (1, moment, date(2026, 1, 2))] == ["?", "?", "?"]
    assert pg.values == [1, moment, date(2026, 1, 2)]
    assert sqlite.values == [1, "2026-01-02T03:04:05.000000Z", "2026-01-02"]
    assert SQLITE.decode_time(sqlite.values[1]) == moment
    assert SQLITE.decode_date("2026-01-02") == PG.decode_date(date(2026, 1, 2))


def test_an_address_compares_as_inet_or_as_its_number() -> None:
    pg, sqlite = Params(PG), Params(SQLITE)
    assert f"{PG.ip_column} = {PG.ip_value(pg, 0x0A000102)}" == "ip = $1::inet"
    assert pg.values == ["10.0.1.2"]
    assert f"{SQLITE.ip_column} = {SQLITE.ip_value(sqlite, 0x0A000102)}" == "ip_num = ?"
    assert sqlite.values == [0x0A000102]
    pg, sqlite = Params(PG), Params(SQLITE)
    assert PG.after_service(pg, "10.0.1.2", 1883, "tcp") == \
        "(ip, port, transport) > ($1::inet, $2, $3)"
    assert SQLITE.after_service(sqlite, "10.0.1.2", 1883, "tcp") == \
        "(ip_num, ip, port, transport) > (?, ?, ?, ?)"
    assert sqlite.values == [0x0A000102, "10.0.1.2", 1883, "tcp"]


def test_json_paths_and_csv_lines() -> None:
    assert PG.json_text(("tls", "client_certificate_required")) == \
        "(record #>> '{tls,client_certificate_required}')"
    assert SQLITE.json_text(("websocket", "tries", "0", "status")) == \
        "json_extract(record, '$.websocket.tries[0].status')"
    line = PG.csv_line([("ip", "plain"), ("tls", "flag"), ("org", "foreign")], "=+")
    assert line is not None and line.startswith("concat_ws(',', host(ip), CASE tls ")
    assert "chr(61), chr(43)" in line
    assert SQLITE.csv_line([("ip", "plain")], "=") is None
