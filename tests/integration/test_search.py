"""The search language against both stores: every answer equals the reference evaluator's
(tests/searchref.py) over the same JSON records, for the current view, a sweep and a day in
the past; random queries (hypothesis), hostile values at every field, cursor paging,
counts with facets (from the rollups and from the rows), export and the census report.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date
from ipaddress import ip_address
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokerscan.report import Report
from storage import migrate
from storage.census import census_report, diff_sweeps
from storage.pgstore import PgStore
from storage.search.compile import View, uses_rollup
from storage.search.fields import FIELDS
from storage.search.parse import QueryError, parse
from storage.searcher import Searcher, parse_facets
from storage.sqlitestore import SqliteStore
from storage.store import open_store
from tests.pg import fresh_database
from tests.searchref import (
    evaluate,
    make_search_results,
    reference_counts,
    reference_keys,
    view_items,
)

pytestmark = pytest.mark.integration

RESULTS = make_search_results(900, seed=11)
RECORDS = [r.to_json() for r in RESULTS]
VIEWS = (View(), View("sweep", sweep_id="sw-01"), View("at", at=date(2026, 3, 2)))


@dataclass
class Stores:
    loop: asyncio.AbstractEventLoop
    pg: PgStore
    sqlite: SqliteStore

    def both(self) -> list[Searcher]:
        return [self.pg, self.sqlite]

    def run(self, coro):
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """Both stores holding RESULTS, written in three batches (so that services are updated,
    not only inserted), on a loop of the module's own (hypothesis tests are synchronous)."""
    loop = asyncio.new_event_loop()
    database = fresh_database()
    url = loop.run_until_complete(database.__aenter__())
    try:
        loop.run_until_complete(migrate.migrate(url))
        pg = loop.run_until_complete(open_store(url))
        sqlite = loop.run_until_complete(
            open_store(f"sqlite:///{tmp_path_factory.mktemp('search')}/store.db"))
        assert isinstance(pg, PgStore) and isinstance(sqlite, SqliteStore)
        for store in (pg, sqlite):
            for part in (RESULTS[:300], RESULTS[300:600], RESULTS[600:]):
                loop.run_until_complete(store.write(part))
        yield Stores(loop, pg, sqlite)
        for store in (pg, sqlite):
            loop.run_until_complete(store.close())
    finally:
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()


def all_keys(stores: Stores, store: Searcher, query: str, view: View, limit: int = 1000,
             ) -> list[tuple[str, int, str]]:
    keys: list[tuple[str, int, str]] = []
    cursor = None
    while True:
        page = stores.run(store.search(query, view=view, limit=limit, cursor=cursor))
        assert len(page.hits) <= limit
        keys += [h.key for h in page.hits]
        if page.cursor is None:
            return keys
        cursor = page.cursor


def check(stores: Stores, query: str, view: View) -> None:
    expected = reference_keys(view_items(RECORDS, view), parse(query))
    for store in stores.both():
        got = all_keys(stores, store, query, view)
        assert got == expected, (type(store).__name__, query, view)
        total = stores.run(store.count(query, view=view)).total
        assert total == len(expected), (type(store).__name__, query, view)


CENSUS = [
    "",
    "tags:mqtt",
    "protocol:mqtt AND port:1883 AND tls:false",
    "protocol:mqtt port:8883 tls:true",
    "mqtt.anonymous:true",
    "tags:amqp AND autonomous_system.asn:36375",
    "protocol:amqp AND (port:5672 OR port:5671) AND NOT product:rabbitmq",
    "product:RABBIT* OR product:\"100% pure_broker\"",
    "version:3.* amqp.family:0-9-1",
    "amqp.mechanisms:plain AND NOT amqp.mechanisms:ANONYMOUS",
    "amqp.mechanisms:SCRAM* OR amqp.mechanisms:*",
    "mqtt.level:3.1.1 OR mqtt.level:5.0",
    "mqtt.return_code:[1 TO 200] OR mqtt.return_code:{0 TO 5}",
    "location.country_code:de OR country:us",
    "NOT country:*",
    "autonomous_system.name:\"ärger gmbh\"",
    "org:ÄRGER*",
    "ip:10.0.0.0/24 OR ip:[10.0.1.1 TO 10.0.2.200]",
    "ip:10.0.3.2",
    "cert.subject:cn=broker* AND cert.self_signed:true",
    "cert.issuer:\"O=Let's Encrypt\" OR cert.expired:true OR cert.trusted:false",
    "cert.sha256:0000000000000000000000000000000000000000000000000000000000000003",
    "tls.version:1.3 AND NOT cert.trusted:true",
    "status:protocol-error OR status:handshake-error",
    "transport:tls AND NOT tls:true",
    "sweep:sw-00",
    "first_seen:2026-03-01 OR last_seen:[2026-03-02 TO *]",
    "last_seen:{2026-03-01 TO 2026-03-03}",
    "rabbit",
    "broker NOT mosquitto",
    "\"it's\" OR back\\slash",
    "asn:[4000000000 TO *] AND NOT asn:3320",
]


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: v.describe())
@pytest.mark.parametrize("query", CENSUS)
def test_census_queries_give_the_reference_answer(stores: Stores, query: str,
                                                  view: View) -> None:
    check(stores, query, view)


def test_the_data_covers_the_queries(stores: Stores) -> None:
    """Guard against a vacuous suite: most census queries match something, and not all."""
    items = view_items(RECORDS, View())
    sizes = [len(reference_keys(items, parse(q))) for q in CENSUS]
    assert sum(0 < s < len(items) for s in sizes) >= len(CENSUS) - 6, sizes


# --------------------------------------------------------------------------- random queries

_VALUES: dict[str, list[str]] = {
    "protocol": ["mqtt", "amqp", "MQTT"], "port": ["1883", "8883", "5672", "9001", "[1 TO 5000]"],
    "transport": ["tcp", "tls"], "tls": ["true", "false"],
    "status": ["success", "protocol-error", "success*"],
    "anonymous": ["true", "false"], "mqtt.return_code": ["0", "5", "[0 TO 100]"],
    "mqtt.level": ["3.1", "3.1.1", "5.0", "5"], "product": ["rabbitmq", "Rabbit*", "\"it's\"", "*"],
    "version": ["3.8", "3*", "5.18.3"], "amqp.family": ["0-9-1", "1.0-sasl", "0*"],
    "amqp.mechanisms": ["PLAIN", "amqplain", "SCRAM*", "*"],
    "asn": ["3320", "36375", "[3000 TO 20000]", "{3320 TO *]"],
    "org": ["as3320", "\"ärger gmbh\"", "Ä*", "*"], "country": ["DE", "us", "B*", "*"],
    "ip": ["10.0.0.0/23", "[10.0.1.0 TO 10.0.4.255]", "10.0.2.1"],
    "cert.subject": ["\"CN=broker,O=Example\"", "cn=*", "*"], "cert.issuer": ["\"CN=Example CA\""],
    "cert.sha256": ["0" * 63 + "1", "00*"], "cert.self_signed": ["true", "false"],
    "cert.expired": ["true"], "cert.trusted": ["true", "false"], "tls.version": ["1.2", "TLSv1*"],
    "sweep": ["sw-00", "sw-02", "sw*"],
    "first_seen": ["2026-03-01", "[2026-03-02 TO *]"],
    "last_seen": ["[* TO 2026-03-02]", "{2026-03-01T12:00:00Z TO *]"],
}
_BARE = ["rabbit", "\"gmbh\"", "CN", "Ü"]

leaf = st.one_of(
    st.sampled_from([f"{name}:{value}" for name, values in _VALUES.items() for value in values]),
    st.sampled_from(_BARE),
)
queries = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" AND ", " OR ", " and ", " "]), inner).map(
            lambda t: f"({t[0]}{t[1]}{t[2]})"),
        inner.map(lambda q: f"NOT {q}"),
    ),
    max_leaves=6,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(query=queries, view=st.sampled_from(VIEWS))
def test_random_queries_give_the_reference_answer(stores: Stores, query: str,
                                                  view: View) -> None:
    check(stores, query, view)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(query=queries, view=st.sampled_from(VIEWS),
       facet=st.sampled_from([f.name for f in FIELDS if f.name != "ip"]))
def test_counts_and_facets_give_the_reference_answer(stores: Stores, query: str, view: View,
                                                     facet: str) -> None:
    node = parse(query)
    items = view_items(RECORDS, view)
    field = next(f for f in FIELDS if f.name == facet)
    expected = reference_counts(items, node, field.column)
    expected.pop(None, None)
    for store in stores.both():
        result = stores.run(store.count(query, view=view, facets=parse_facets(f"{facet}:5")))
        assert result.total == len(reference_keys(items, node))
        got = result.facets[facet]
        assert len(got) == min(5, len(expected)), (type(store).__name__, got, expected)
        names = {"3.1": "3", "3.1.1": "4", "5.0": "5"} if facet == "mqtt.level" else {}
        for value, count in got:
            assert expected[names.get(value, value)] == count, (type(store).__name__, value)
        if got:  # a top list: nothing left out counts more than the smallest shown
            assert max((c for v, c in expected.items()
                        if v not in {names.get(x, x) for x, _ in got}), default=0) <= got[-1][1]


@pytest.mark.parametrize("view", VIEWS)
def test_many_facets_in_one_scan_rank_as_one_scan_each(stores: Stores, view: View) -> None:
    """PostgreSQL counts the facets of a query the rollups cannot answer in one scan
    (grouping sets); each facet is the list the one-facet statement gives, tie order
    included, and the total is the reference's."""
    facets = parse_facets("country:3,asn:3,port,product:4,first_seen:2,tls,version:2,"
                          "mqtt.level,anonymous,cert.issuer:3,amqp.mechanisms:3,port:2")
    for query in ("", "product:*", "NOT cert.subject:*", "org:\"ärger gmbh\" OR rabbit",
                  "port:99"):
        node = parse(query)
        assert not uses_rollup(view, node, [name for name, _ in facets])
        result = stores.run(stores.pg.count(node, view=view, facets=facets))
        assert result.total == len(reference_keys(view_items(RECORDS, view), node))
        sizes = {name: max(s for n, s in facets if n == name) for name, _ in facets}
        for name, size in sizes.items():
            one = stores.run(stores.pg._facet(node, view, name, size, False))
            assert result.facets[name] == one, (query, name)


@pytest.mark.parametrize("view", VIEWS[:2])
def test_rollup_facets_in_one_scan_rank_as_one_scan_each(stores: Stores, view: View) -> None:
    """The same on the rollups (services_rollup, or rollup for a sweep)."""
    facets = parse_facets("country:3,asn:3,port,tls,anonymous,status:2,transport,port:1")
    for query in ("", "protocol:mqtt anonymous:true", "country:DE OR asn:3320", "port:99"):
        node = parse(query)
        assert uses_rollup(view, node, [name for name, _ in facets])
        result = stores.run(stores.pg.count(node, view=view, facets=facets))
        assert result.rollup
        assert result.total == len(reference_keys(view_items(RECORDS, view), node))
        sizes = {name: max(s for n, s in facets if n == name) for name, _ in facets}
        for name, size in sizes.items():
            one = stores.run(stores.pg._facet(node, view, name, size, True))
            assert result.facets[name] == one, (query, name)


def test_rollup_and_rows_agree(stores: Stores) -> None:
    """The rollups (services_rollup for the current view, rollup for a sweep) give the same
    counts as the rows they summarise."""
    for view in VIEWS[:2]:
        for query in ("", "protocol:mqtt anonymous:true", "country:DE OR asn:3320",
                      "NOT status:success AND port:[1 TO 5671]"):
            node = parse(query)
            assert uses_rollup(view, node)
            expected = len(reference_keys(view_items(RECORDS, view), node))
            for store in stores.both():
                result = stores.run(store.count(node, view=view,
                                                facets=[("country", 10), ("asn", 10)]))
                assert result.rollup and result.total == expected, (store, query, view)
                assert sum(c for _, c in result.facets["country"]) + \
                    result.other["country"] == expected


# --------------------------------------------------------------------------- hostile input

HOSTILE = ["'; DROP TABLE services; --", "\" OR 1=1 --", "' OR '1'='1", "%", "_", "\\",
           "\\\"", "*", "a*b", "$1", "?", ")) OR ((", "x' UNION SELECT record FROM observations --",
           "ünï\u200bcödé", "🦀", "a" * 300, "NULL", "true", "-1", "1e9", "::1", "0/0",
           "10.0.0.0/33", "[1 TO", "2026-13-45"]


@pytest.mark.parametrize("field", [f.name for f in FIELDS])
def test_hostile_values_at_every_field_are_values_or_one_clear_error(stores: Stores,
                                                                    field: str) -> None:
    before = [stores.run(s.count("", view=View())).total for s in stores.both()]
    for value in HOSTILE:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        for query in (f'{field}:"{escaped}"', f"{field}:{value}", f'"{escaped}"'):
            try:
                node = parse(query)
            except QueryError as exc:
                assert "\n" not in str(exc) and exc.position <= len(query)
                continue
            expected = reference_keys(view_items(RECORDS, View()), node)
            for store in stores.both():
                assert all_keys(stores, store, query, View()) == expected, (store, query)
    after = [stores.run(s.count("", view=View())).total for s in stores.both()]
    assert before == after  # nothing was changed by a value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from([f.name for f in FIELDS]), value=st.text(max_size=40))
def test_any_text_at_any_field_is_a_value_or_one_clear_error(stores: Stores, field: str,
                                                            value: str) -> None:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    query = f'{field}:"{escaped}"'
    try:
        node = parse(query)
    except QueryError as exc:
        assert "\n" not in str(exc)
        return
    expected = reference_keys(view_items(RECORDS, View()), node)
    for store in stores.both():
        assert all_keys(stores, store, query, View()) == expected


# --------------------------------------------------------------------------- paging, export

@pytest.mark.parametrize("limit", [1, 7, 100])
def test_cursor_pages_cover_the_result_exactly(stores: Stores, limit: int) -> None:
    query = "protocol:mqtt OR country:DE"
    expected = reference_keys(view_items(RECORDS, View()), parse(query))
    for store in stores.both():
        assert all_keys(stores, store, query, View(), limit=limit) == expected


def test_a_foreign_cursor_is_refused(stores: Stores) -> None:
    for store in stores.both():
        for cursor in ("nonsense", "WzEsMl0=", "WyJ4IiwgMSwgInRjcCJd"):
            with pytest.raises(ValueError, match="cursor"):
                stores.run(store.search("", cursor=cursor))


def test_export_streams_everything_in_chunks(stores: Stores) -> None:
    expected = reference_keys(view_items(RECORDS, View()), parse(""))

    async def collect(store: Searcher) -> list[tuple[str, int, str]]:
        keys = []
        async for chunk in store.export("", chunk=50):
            assert len(chunk) <= 50
            keys += [h.key for h in chunk]
        return keys

    for store in stores.both():
        assert stores.run(collect(store)) == expected


def test_report_counts_match_between_stores(stores: Stores) -> None:
    for view in VIEWS:
        pg, sqlite = (stores.run(census_report(s, view)) for s in stores.both())
        assert pg == sqlite
        items = view_items(RECORDS, view)
        assert pg["mqtt"]["servers"] == len(reference_keys(items, parse("protocol:mqtt")))
        assert pg["mqtt"]["anonymous_accepted"] == len(
            reference_keys(items, parse("protocol:mqtt anonymous:true")))


@pytest_asyncio.fixture
async def empty_sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await open_store(f"sqlite:///{tmp_path}/empty.db")
    assert isinstance(store, SqliteStore)
    yield store
    await store.close()


async def test_an_empty_store_answers_with_zeros(empty_sqlite: SqliteStore) -> None:
    result = await empty_sqlite.count("protocol:mqtt", facets=[("country", 5)])
    assert result.total == 0 and result.facets == {"country": []}
    assert (await empty_sqlite.search("")).hits == []
    report = await census_report(empty_sqlite)
    assert report["mqtt"]["servers"] == 0 and report["amqp"]["by_product"] == {}


@pytest.mark.parametrize("query", ["", "protocol:mqtt", "anonymous:true OR tls:true",
                                   "NOT country:DE"])
def test_diff_gives_the_reference_answer(stores: Stores, query: str) -> None:
    node = parse(query)
    side = {}
    for sweep in ("sw-00", "sw-02"):
        items = [i for i in view_items(RECORDS, View("sweep", sweep_id=sweep))
                 if i.values["status"] == "success"]
        side[sweep] = {(i.values["ip_text"], i.values["port"]): i for i in items}
    a, b = side["sw-00"], side["sw-02"]
    new = sorted((k for k in b.keys() - a.keys() if evaluate(node, b[k])), key=_by_address)
    gone = sorted((k for k in a.keys() - b.keys() if evaluate(node, a[k])), key=_by_address)
    for store in stores.both():
        result = stores.run(diff_sweeps(store, "sw-00", "sw-02", query))
        assert result.new == new and result.gone == gone, (store, query)
        both = [k for k in a.keys() & b.keys()
                if evaluate(node, a[k]) or evaluate(node, b[k])]
        changed = {(c.ip, c.port) for c in result.changed}
        assert changed <= set(both)
        for key in both:
            va, vb = a[key].values, b[key].values
            differs = bool(va["anonymous"]) != bool(vb["anonymous"]) or va["tls"] != vb["tls"]
            for column in ("product", "version", "cert_sha256"):
                known = va[column] is not None and vb[column] is not None
                differs = differs or (known and va[column] != vb[column])
            assert (key in changed) == bool(differs), (store, query, key)


def _by_address(key: tuple[str, int]) -> tuple[int, int]:
    return int(ip_address(key[0])), key[1]


@pytest.mark.parametrize("sweep", ["sw-00", "sw-01", "sw-02"])
def test_a_sweeps_report_in_the_store_is_the_scans_report(stores: Stores, sweep: str) -> None:
    """The census report counted in the store equals the one a scan counts in memory
    (brokerscan.report.Report) over the same results, for every number and breakdown."""
    scanned = Report()
    for result in RESULTS:
        if result.sweep_id == sweep:
            scanned.add(result)
    expected = scanned.as_dict()
    for store in stores.both():
        counted = stores.run(census_report(store, View("sweep", sweep_id=sweep)))
        counted.pop("view")
        assert counted == expected, type(store).__name__


def test_asn_facets_carry_an_organisation_of_that_network(stores: Stores) -> None:
    items = view_items(RECORDS, View())
    for store in stores.both():
        result = stores.run(store.count("", facets=[("asn", 5)]))
        assert result.labels["asn"], type(store).__name__
        for number, label in result.labels["asn"].items():
            known = {i.values["org"] for i in items if i.values["asn"] == number}
            assert label in known, (type(store).__name__, number, label)
