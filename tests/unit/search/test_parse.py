"""The search language's parser: strings in, trees or errors (with positions) out."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.search.fields import FIELDS, lookup, names
from storage.search.parse import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_WILDCARDS,
    All,
    And,
    Bare,
    Exists,
    Match,
    Not,
    Or,
    Prefix,
    QueryError,
    Range,
    parse,
)


def f(name: str):
    return lookup(name)


@pytest.mark.parametrize(("query", "tree"), [
    ("", All()),
    ("   ", All()),
    ("*", All()),
    ("tags:amqp AND autonomous_system.asn:36375",
     And((Match(f("protocol"), "amqp"), Match(f("asn"), 36375)))),
    ("protocol:MQTT port:1883", And((Match(f("protocol"), "mqtt"), Match(f("port"), 1883)))),
    ("a OR b and c", Or((Bare("a"), And((Bare("b"), Bare("c")))))),
    ("NOT NOT port:1", Match(f("port"), 1)),
    ("not (tls:true or anonymous:false)",
     Not(Or((Match(f("tls"), True), Match(f("anonymous"), False))))),
    ("ANDROID ORACLE NOTE TOKYO", And((Bare("ANDROID"), Bare("ORACLE"), Bare("NOTE"),
                                       Bare("TOKYO")))),
    ('product:"Rabbit MQ"', Match(f("product"), "Rabbit MQ")),
    ('product:"say \\"hi\\""', Match(f("product"), 'say "hi"')),
    ('product:"*"', Match(f("product"), "*")),
    ("product:Rabbit*", Prefix(f("product"), "Rabbit")),
    ("country:u*", Prefix(f("country"), "U")),
    ("cert.subject:*", Exists(f("cert.subject"))),
    ("port:[1 TO 1024]", Range(f("port"), 1, 1024, True, True)),
    ("port:{1 to 1024]", Range(f("port"), 1, 1024, False, True)),
    ("port:[1024 TO *}", Range(f("port"), 1024, None, True, False)),
    ("ip:141.211.0.0/16", Range(f("ip"), 2379415552, 2379481087)),
    ("ip:10.0.0.1", Match(f("ip"), 167772161)),
    ("last_seen:2026-12-01", Range(f("last_seen"), datetime(2026, 12, 1, tzinfo=UTC),
                                   datetime(2026, 12, 2, tzinfo=UTC), True, False)),
    ("first_seen:[2026-12-01 TO 2026-12-03]",
     Range(f("first_seen"), datetime(2026, 12, 1, tzinfo=UTC),
           datetime(2026, 12, 4, tzinfo=UTC), True, False)),
    ("first_seen:{2026-12-01 TO 2026-12-03}",
     Range(f("first_seen"), datetime(2026, 12, 2, tzinfo=UTC),
           datetime(2026, 12, 3, tzinfo=UTC), True, False)),
    ("last_seen:[2026-12-01T10:00:00+02:00 TO *]",
     Range(f("last_seen"), datetime(2026, 12, 1, 8, tzinfo=UTC), None, True, True)),
    ("mqtt.level:3.1.1", Match(f("mqtt.level"), "4")),
    ("amqp.mechanisms:plain", Match(f("amqp.mechanisms"), "PLAIN")),
    ("tls.version:1.3", Match(f("tls.version"), "TLSv1.3")),
    ("location.country_code:nl", Match(f("country"), "NL")),
    ("mqtt.anonymous:yes", Match(f("anonymous"), True)),
])
def test_queries_become_trees(query: str, tree: object) -> None:
    assert parse(query) == tree


@pytest.mark.parametrize(("query", "column", "needle"), [
    ("port:abc", 6, "expected a whole number"),
    ("prot:mqtt", 1, "did you mean 'port'"),
    ("port:1883 AND prot:mqtt", 15, "unknown field 'prot'"),
    ("(port:1883", 11, "expected ')'"),
    ("port:1883)", 10, "')' without its '('"),
    ("port:[1 TO", 11, "ends too early"),
    ("port:[1 TO 2", 13, "ends too early"),
    ("port:1 AND", 11, "ends too early"),
    ("port:99999", 6, "not a port"),
    ("port:[9 TO 1]", 7, "starts after it ends"),
    ("country:[A TO B]", 1, "ranges work on numbers"),
    ("ip:1.2.*", 8, "CIDR block"),
    ("ip:1.2.3.4/40", 4, "not an IPv4 CIDR block"),
    ("mqtt.level:7", 12, "MQTT level"),
    ("protocol:http", 10, "one of mqtt, amqp"),
    ("tls:maybe", 5, "true or false"),
    ("last_seen:yesterday", 11, "a day"),
    ("product:a*b*", 10, "one trailing *"),
    ("amqp.mechanisms:\"PLAIN AMQPLAIN\"", 17, "SASL mechanism"),
    ("[1 TO 2]", 1, "needs a field"),
    ("port:1\x00", 7, "no text can hold"),
])
def test_malformed_queries_say_where_and_what(query: str, column: int, needle: str) -> None:
    with pytest.raises(QueryError) as info:
        parse(query)
    assert info.value.column == column, str(info.value)
    assert needle in str(info.value)
    assert str(info.value).startswith(f"column {column}: ")
    caret = info.value.caret(query).splitlines()
    assert len(caret) == 2 and caret[1].index("^") == column - 1


def test_bounded_cost() -> None:
    with pytest.raises(QueryError, match="longer than"):
        parse("a" * (MAX_LENGTH + 1))
    with pytest.raises(QueryError, match="nests deeper"):
        parse("(" * (MAX_DEPTH + 1) + "port:1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(QueryError, match="nests deeper"):
        parse("NOT " * 400 + "port:1")
    with pytest.raises(QueryError, match="wildcards"):
        parse(" ".join(f"product:x{i}*" for i in range(MAX_WILDCARDS + 1)))
    assert parse(" ".join(f"product:x{i}*" for i in range(MAX_WILDCARDS)))


def test_every_field_and_alias_is_known() -> None:
    for field in FIELDS:
        for name in (field.name, *field.aliases):
            assert lookup(name) is field
            assert lookup(name.upper()) is field
    assert "tags" in names() and "autonomous_system.asn" in names()


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_any_string_is_a_tree_or_one_clear_error(text: str) -> None:
    try:
        parse(text)
    except QueryError as exc:
        assert "\n" not in str(exc) and 0 <= exc.position <= len(text) + 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["port:1", "AND", "OR", "NOT", "(", ")", "[", "]", "TO", "{",
                                 "}", '"', "*", "product:", "x", "1", ":"]), max_size=15))
def test_token_soup_is_a_tree_or_one_clear_error(tokens: list[str]) -> None:
    text = " ".join(tokens)
    try:
        parse(text)
    except QueryError as exc:
        assert "\n" not in str(exc)
