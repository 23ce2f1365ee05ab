"""The API's pure pieces: the committed OpenAPI document, the rate limiter's arithmetic,
CSV cells, the explain tree, tokens' form and CSRF values, the response model's columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brokerscan.api.app import openapi_document
from brokerscan.api.models import ServiceHit
from brokerscan.api.ratelimit import RateLimiter
from brokerscan.api.routes.query import tree_of
from storage.export import formula_safe
from storage.search.parse import parse
from storage.searcher import EXPORT_COLUMNS
from storage.tokens import csrf_of, split_token

OPENAPI_FILE = Path(__file__).resolve().parents[3] / "brokerscan" / "api" / "openapi.json"


def test_committed_openapi_document_matches_the_app() -> None:
    # A failure here means an endpoint, a parameter or a response model changed: regenerate
    # the file with
    #   python -c "from brokerscan.api.app import openapi_document as d; print(d(), end='')" \
    #       > brokerscan/api/openapi.json
    # and review the diff (clients and the dashboard read this document).
    assert OPENAPI_FILE.read_text() == openapi_document()


def test_the_document_is_openapi_3_1_with_json_errors_and_no_422() -> None:
    doc = json.loads(openapi_document())
    assert doc["openapi"].startswith("3.1")
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            if path.startswith("/api/"):
                assert responses["400"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"}, (method, path)
                assert "401" in responses and "429" in responses, (method, path)
                signing_in = (method, path) == ("post", "/api/v1/session")
                wanted: list[dict[str, list[str]]] = [] if signing_in \
                    else [{"bearer": []}, {"session": []}]
                assert operation.get("security") == wanted, (method, path)


def test_service_hits_carry_every_export_column_and_the_record() -> None:
    assert tuple(ServiceHit.model_fields) == (*EXPORT_COLUMNS, "record")


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [None, None, None]
    wait = limiter.take("a")
    assert wait == pytest.approx(0.5)
    assert limiter.take("b") is None  # per key
    now[0] += 0.5
    assert limiter.take("a") is None
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] += 100  # refills to the burst, never past it
    assert [limiter.take("a") for _ in range(4)][-1] is not None


def test_rate_zero_is_no_limit() -> None:
    limiter = RateLimiter(rate=0, burst=1)
    assert all(limiter.take("a") is None for _ in range(1000))


def test_rate_limiter_forgets_idle_buckets() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=1.0, clock=lambda: now[0])
    for i in range(10_000):
        limiter.take(f"k{i}")
    now[0] += 5
    limiter.take("new")
    assert len(limiter._buckets) == 1


@pytest.mark.parametrize(("value", "cell"), [
    ("", ""), ("RabbitMQ", "RabbitMQ"), ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"),
    ("+1", "'+1"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("a=b", "a=b"), (" =x", " =x"),
])
def test_csv_text_cells_are_never_formulas(value: str, cell: str) -> None:
    assert formula_safe(value) == cell


def test_explain_tree_shows_addresses_and_times_as_text() -> None:
    tree = tree_of(parse("tags:amqp AND ip:10.0.0.0/24 AND NOT last_seen:[2026-03-01 TO *]"))
    assert tree.op == "and" and tree.items is not None
    protocol, ip, negation = tree.items
    assert (protocol.op, protocol.field, protocol.value) == ("match", "protocol", "amqp")
    assert (ip.op, ip.low, ip.high) == ("range", "10.0.0.0", "10.0.0.255")
    assert negation.op == "not" and negation.items is not None
    assert negation.items[0].low == "2026-03-01T00:00:00+00:00"
    assert tree_of(parse("")).op == "all"


def test_tokens_have_one_form_and_a_csrf_value_of_their_own() -> None:
    token = "bsk_0123456789ab_" + "A" * 43
    assert split_token(token) == ("0123456789ab", "A" * 43)
    for bad in ("", "bsk_0123456789ab_short", token + "x", token.replace("bsk", "bsx"),
                "bsk_0123456789AB_" + "A" * 43, token[:-1] + "/"):
        assert split_token(bad) is None, bad
    other = "bsk_0123456789ab_" + "B" * 43
    assert csrf_of(token) != csrf_of(other) and len(csrf_of(token)) == 64
