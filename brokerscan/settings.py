"""One settings class for every brokerscan process: built once at start-up, passed down.

Values come from the environment (``BROKERSCAN_*``) or from the command line; nothing
reads the environment at import time. Each external service is one URL.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from brokerscan.names import Names

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Deployment settings. Scan-specific choices (ports, rate, ...) live in ScanConfig."""

    model_config = SettingsConfigDict(env_prefix="BROKERSCAN_", extra="forbid", frozen=True)

    # Networks the transport may dial at all; checked in the one module that opens sockets.
    # The test suite sets this to 127.0.0.0/8.
    scope: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["0.0.0.0/0"])
    # Extra blocklist files (ZMap format), on top of the built-in IANA list.
    blocklist_files: Annotated[list[str], NoDecode] = Field(default_factory=list)
    client_id_prefix: str = "brokerscan-"
    # Prefix of every queue, exchange, Redis key and table: see brokerscan.names.
    namespace: str = Field(default="brokerscan", pattern=r"^[a-z][a-z0-9_]{0,30}$")

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"  # Celery tasks
    results_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"  # results exchange
    database_url: str | None = None  # postgresql://... ; unset: the embedded store
    # The store results are written to: postgresql://..., or sqlite:///path (the embedded
    # default, sqlite:///brokerscan.db in the working directory, when neither is set).
    store_url: str | None = None
    # Enrichment sources, by URL, tried in order: "builtin:" (the compact ASN/country file
    # shipped with brokerscan), "mmdb:///path/GeoLite2-ASN.mmdb", "mmdb:///path/City.mmdb".
    # Days of observations kept in PostgreSQL (older daily partitions are detached and
    # dropped by `brokerscan db maintain` and hourly by the store worker); unset: forever.
    retention_days: int | None = Field(default=None, gt=0)
    enrichment_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["builtin:"])
    # Prometheus metrics and the /healthz, /readyz checks of a long-running process
    # (scheduler, worker, enrich-worker, store-worker) on this port; unset: not served.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # The address that endpoint listens on (0.0.0.0: reachable by Prometheus and probes).
    metrics_host: str = "0.0.0.0"
    # Seconds before a shard whose dependency failed (Redis, PostgreSQL, RabbitMQ away) is
    # tried again; doubles on each retry up to 60 s.
    shard_retry_seconds: float = Field(default=5.0, gt=0, le=60)
    # Celery task events (a worker's task-received/started/succeeded..., the scheduler's
    # task-sent) for Flower and celery-exporter; off by default: each shard then costs a
    # few more messages on the task broker, and nothing of brokerscan reads them.
    task_events: bool = False
    # Seconds an outage may last without costing the shard an attempt (its retries are
    # free until then; after, each failed run counts, and the fifth gives the shard up).
    shard_outage_seconds: float = Field(default=600.0, ge=0)
    # Seconds a shard may stay queued before the scheduler checks whether its message was
    # lost (its queue holds fewer messages than such shards) and sends it again.
    shard_lost_seconds: float = Field(default=120.0, gt=0)
    # A probe worker whose readiness (/readyz) fails takes no shard until it passes; off:
    # it keeps taking shards, which then retry on the outage (and, past its grace, fail).
    ready_gate: bool = True
    # Log lines as text (for people) or json (one object a line, for log pipelines).
    log_format: Literal["text", "json"] = "text"
    # Watches (issue 20): where a webhook may be dialled at all: CIDRs, or host names
    # (exact); a URL whose host is none of them (or resolves outside them) is refused and
    # recorded, never dialled. Empty: no webhook is dialled.
    watch_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Seconds one delivery (a webhook request, an email) may take.
    watch_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Tries per delivery; between them a wait that doubles from watch_retry_seconds.
    watch_attempts: int = Field(default=5, ge=1, le=50)
    watch_retry_seconds: float = Field(default=30.0, gt=0)
    # The SMTP server of watch emails (smtp://[user:password@]host[:port]; STARTTLS when
    # it offers it) and the sender's address; unset: email channels fail their deliveries.
    smtp_url: str | None = None
    smtp_from: str = "brokerscan@localhost"
    # The scanner's public page (`serve --identity-page`, issue 20): who runs the scans
    # (a person or an organisation), how to reach them (an email address or a URL), why
    # they scan, and the addresses the probes come from (CIDRs or addresses). Unset: the
    # page says "not configured" for that line, plainly.
    identity_operator: str | None = Field(default=None, max_length=200)
    identity_contact: str | None = Field(default=None, max_length=320)
    identity_purpose: str | None = Field(default=None, max_length=2000)
    identity_sources: Annotated[list[str], NoDecode] = Field(default_factory=list)

    def names(self) -> Names:
        return Names(self.namespace)

    @field_validator("scope", "blocklist_files", "enrichment_sources", "watch_allow",
                     "identity_sources", mode="before")
    @classmethod
    def _split_scope(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v for v in value.replace(" ", ",").split(",") if v]
        return value

    @field_validator("scope", "identity_sources")
    @classmethod
    def _valid_scope(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.IPv4Network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"{net!r} is not an IPv4 network ({exc})") from None
        return value

    def scope_networks(self) -> list[ipaddress.IPv4Network]:
        return [ipaddress.IPv4Network(n, strict=False) for n in self.scope]
