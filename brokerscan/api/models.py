"""The API's response bodies, as pydantic models: they are what the OpenAPI document says
each endpoint returns (and what schemathesis holds the running server to)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AmqpReport", "ChangedService", "CountBody", "DiffBody", "ErrorBody", "Explain",
    "FacetValue", "FieldInfo", "Health", "HostBody", "MqttReport", "OtherOpenReport",
    "PeriodOf", "QueryNode", "ReportBody", "RunOf", "ScheduleRequest", "ScheduleSteered",
    "ScheduleSummary", "ServiceHit", "ServiceKey", "ServicesPage", "SessionBody",
    "SessionRequest", "SteerResult", "SweepDetail", "SweepSummary", "SweepWorker",
    "TlsReport", "TrendBucket", "TrendsBody",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: A sweep's schedule and period (migration 0010), in the sweeps' bodies.
RunOf = Annotated[str | None, Field(description="the recurring sweep (schedule) whose run "
                                                "it is, if any")]
PeriodOf = Annotated[datetime | None, Field(description="the beginning of the schedule's "
                                                        "period it ran for")]


class ErrorBody(_Body):
    """Every error: one line; a bad query also says where (0-based ``position``, 1-based
    ``column``)."""

    error: str
    position: int | None = None
    column: int | None = None


class ServiceHit(_Body):
    """One service of the current view (or one observation of a sweep): the searchable
    columns, flat, and the whole stored record (a ScanResult, see docs/results.md)."""

    ip: str
    port: int
    transport: str
    protocol: str | None
    status: str
    tls: bool
    anonymous: bool | None
    mqtt_return_code: int | None
    mqtt_levels: str | None = Field(description="accepted MQTT levels, space-separated "
                                                "(3 = 3.1, 4 = 3.1.1, 5 = 5.0)")
    product: str | None
    version: str | None
    amqp_family: str | None
    amqp_mechanisms: str | None = Field(description="offered SASL mechanisms, space-separated")
    tls_version: str | None
    cert_subject: str | None
    cert_issuer: str | None
    cert_sha256: str | None
    cert_self_signed: bool | None
    cert_expired: bool | None
    cert_trusted: bool | None
    asn: int | None
    org: str | None
    country: str | None
    sweep_id: str
    first_seen: datetime
    last_seen: datetime
    record: dict[str, Any]


class ServicesPage(_Body):
    view: str
    results: list[ServiceHit]
    cursor: str | None = Field(description="pass as cursor= for the next page; null after "
                                           "the last")
    query_ms: float


class FacetValue(_Body):
    value: str | int | bool
    count: int
    label: str | None = Field(default=None, description="a name for the value where one is "
                                                        "known (an AS number's organisation)")


class CountBody(_Body):
    view: str
    total: int
    facets: dict[str, list[FacetValue]]
    other: dict[str, int] = Field(description="per facet: rows not among its top values "
                                              "(unknown values included)")
    rollup: bool = Field(description="answered from a rollup table")
    query_ms: float


class TrendBucket(_Body):
    bucket: str = Field(description="a day (YYYY-MM-DD) or a sweep id")
    count: int


class TrendsBody(_Body):
    interval: Literal["day", "sweep"]
    buckets: list[TrendBucket]
    query_ms: float


class HostBody(_Body):
    ip: str
    observations: list[dict[str, Any]] = Field(description="stored records, newest first")


class MqttReport(_Body):
    servers: int
    plaintext_on_1883: int
    tls_on_8883: int
    tls_any_port: int
    anonymous_accepted: int
    auth_required: int
    by_port: dict[str, int]
    by_return_code: dict[str, int]
    by_accepted_level: dict[str, int]
    by_product: dict[str, int]  # the broker product the fingerprint named
    over_websocket: int
    websocket_endpoints: dict[str, int]  # "ws /mqtt": count


class WebSocketReport(_Body):
    http_without_mqtt: int  # web ports that answered HTTP but no MQTT inside a WebSocket
    by_server: dict[str, int]


class AmqpReport(_Body):
    services: int
    by_port: dict[str, int]
    by_product: dict[str, int]
    by_family: dict[str, int]
    amqp10_sasl_mechanisms: dict[str, int]
    amqp10_anonymous_offered: int


class TlsReport(_Body):
    handshakes: int
    self_signed: int
    expired: int
    trusted: int
    client_certificate_required: int
    by_version: dict[str, int]


class OtherOpenReport(_Body):
    ports: int
    by_port: dict[str, int]


class ReportBody(_Body):
    """The census report of a view (the shape ``brokerscan scan --format json`` prints)."""

    view: str
    mqtt: MqttReport
    websocket: WebSocketReport
    amqp: AmqpReport
    tls: TlsReport
    other_open: OtherOpenReport


class ServiceKey(_Body):
    ip: str
    port: int


class ChangedService(_Body):
    ip: str
    port: int
    changes: list[str]


class DiffBody(_Body):
    a: str
    b: str
    counts: dict[str, int]
    new: list[ServiceKey]
    gone: list[ServiceKey]
    changed: list[ChangedService]


class SweepSummary(_Body):
    """A sweep of the fleet (``kind: fleet``, from PostgreSQL) or a local scan whose
    results are in the store (``kind: scan``)."""

    id: str
    kind: Literal["fleet", "scan"]
    name: str | None = None
    state: str | None = None
    targets: int | None = None
    shards: int | None = None
    failed_shards: int = 0
    created_at: datetime | None = None
    day: str | None = Field(default=None, description="the day it started, from the store")
    observations: int = Field(default=0, description="observations in the store")
    hits: dict[str, int] = Field(default_factory=dict)
    schedule: RunOf = None
    period: PeriodOf = None


class SweepWorker(_Body):
    id: str
    queues: list[str] = Field(default_factory=list)
    state: Literal["idle", "busy"] = "idle"
    sweep: str | None
    shard: int | None
    probes: int


class FailedShard(_Body):
    """A shard that gave up, with the last error its attempts ran into."""

    shard: int
    queue: str
    attempts: int
    error: str | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None


class SweepDetail(_Body):
    """What ``brokerscan sweep status --format json`` shows, for a fleet sweep (live
    counters from Redis); for a local scan only what the store knows."""

    id: str
    kind: Literal["fleet", "scan"]
    name: str | None = None
    state: str | None = None
    targets: int | None = None
    probes: int | None = None
    progress: float | None = None
    probes_per_second: float | None = None
    eta_seconds: float | None = None
    hits: dict[str, int] = Field(default_factory=dict)
    open: int | None = None
    statuses: dict[str, int] = Field(default_factory=dict)
    shards: dict[str, int] = Field(default_factory=dict)
    requeued: int = Field(default=0, description="times the scheduler put a shard back "
                                                 "(its worker gone, or its message lost)")
    failed_shards: list[FailedShard] = Field(default_factory=list)
    retries: int = 0
    workers: list[SweepWorker] = Field(default_factory=list)
    capacity: dict[str, int] = Field(
        default_factory=dict,
        description="shards the live worker processes run at once, per queue (probe, "
                    "probe-tls); the scheduler keeps each queue's backlog at this plus a "
                    "small margin")
    workers_busy: int = Field(default=0, description="live worker processes running a shard")
    workers_idle: int = Field(default=0, description="live worker processes waiting")
    scheduler_alive: bool | None = None
    created_at: datetime | None = None
    schedule: RunOf = None
    period: PeriodOf = None
    observations: int = Field(default=0, description="observations in the store")


class ScheduleSummary(_Body):
    """A recurring sweep, as ``brokerscan sweep schedule list --format json`` shows it."""

    name: str
    cadence: str = Field(description="``every 6h`` or ``cron 0 3 * * *`` (UTC)")
    every: str | None = None
    cron: str | None = None
    jitter_seconds: int
    state: Literal["active", "paused"]
    targets: list[str]
    ports: str | None = None
    rate: float | None = None
    next_due: datetime | None = Field(default=None, description="when the next run is due "
                                                                "(none while paused)")
    last_period: datetime | None = None
    last_sweep: str | None = Field(default=None, description="the latest run's sweep id")
    last_skip: str | None = Field(default=None, description="why the latest skipped period "
                                                            "was not run")
    last_error: str | None = None
    runs: int
    skipped: int = Field(description="periods skipped: the previous run was under way")
    created_at: datetime


class ScheduleRequest(_Body):
    """A new recurring sweep, as ``brokerscan sweep schedule add`` takes it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    every: str | None = Field(default=None, description="an interval: 90s, 15m, 6h, 1d, 2w, "
                                                        "1h30m (epoch-aligned, UTC)")
    cron: str | None = Field(default=None, description="or a cron expression, in UTC")
    jitter: str | None = Field(default=None, description="default: a tenth of the period, "
                                                         "at most 1m; 0 for none")
    sweep: dict[str, Any] = Field(description=(
        "the options of `sweep start`, as the stored sweep spec names them: `targets` (a "
        "list: CIDRs, addresses, ranges), `ports`, `probe`, `allow_reserved`, `rate`, "
        "`seed` (absent: each run draws one), `shards`, `shard_size`, `emit_failures`, "
        "`connect_timeout`, `io_timeout`, `total_timeout`, `concurrency`, `sys_version`, "
        "`amqp_versions`, `ws_paths`, `discovery`, `discovery_cooldown`; the scope, the "
        "client id prefix and the opt-out lists are the server's settings"))


class ScheduleSteered(_Body):
    name: str
    state: Literal["active", "paused", "removed"]


class SteerResult(_Body):
    id: str
    state: str
    workers_notified: bool = Field(description="false: Redis was unreachable; workers "
                                               "follow when the scheduler next runs")


class QueryNode(_Body):
    """A node of a parsed query: ``op`` is all, match, prefix, exists, range, bare, not,
    and, or."""

    op: Literal["all", "match", "prefix", "exists", "range", "bare", "not", "and", "or"]
    field: str | None = None
    value: str | int | bool | None = None
    low: str | int | None = None
    high: str | int | None = None
    low_inclusive: bool | None = None
    high_inclusive: bool | None = None
    items: list[QueryNode] | None = None


class Explain(_Body):
    """The parsed query and the fields it reads, or what is wrong with it and where."""

    query: str
    valid: bool
    tree: QueryNode | None = None
    fields: list[str] = Field(default_factory=list)
    rollup: bool | None = Field(default=None, description="a count of it (current view) "
                                                          "reads the rollup")
    error: str | None = None
    position: int | None = None
    column: int | None = None


class FieldInfo(_Body):
    name: str
    aliases: list[str]
    kind: str
    help: str
    choices: list[str]
    facet: bool = Field(description="can be a facet of /count")


class SessionRequest(_Body):
    token: str = Field(max_length=200)


class SessionBody(_Body):
    """Who the request is: the token's id, name and role, and how it was presented."""

    token_id: str
    name: str
    role: Literal["reader", "operator"]
    via: Literal["header", "cookie", "none"]
    csrf: str | None = Field(default=None, description="for a cookie session: send it as "
                                                       "X-CSRF-Token with every POST and "
                                                       "DELETE")


class Health(_Body):
    status: str
