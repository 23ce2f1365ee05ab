"""Every name brokerscan gives to something outside itself: Celery tasks and queues,
RabbitMQ exchanges, Redis keys, PostgreSQL tables.

All of them live under a *namespace* (``Settings.namespace``, default ``brokerscan``) so
that two deployments, or two test runs, can share one Redis, RabbitMQ and PostgreSQL
server without seeing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Names"]


@dataclass(frozen=True, slots=True)
class Names:
    """The names of one deployment. ``Names("brokerscan")`` is the default one."""

    namespace: str = "brokerscan"

    # -- Celery ------------------------------------------------------------------------
    @property
    def run_shard_task(self) -> str:
        """The shard task; its name is fixed (the namespace only picks the queues)."""
        return "brokerscan.run_shard"

    @property
    def probe_queue(self) -> str:
        """Shards of plaintext ports."""
        return f"{self.namespace}.probe"

    @property
    def probe_tls_queue(self) -> str:
        """Shards of TLS ports: handshakes cost more CPU, so SREs size this pool apart."""
        return f"{self.namespace}.probe-tls"

    # -- RabbitMQ results stream ---------------------------------------------------------
    @property
    def results_exchange(self) -> str:
        """Durable topic exchange; routing key ``result.<protocol or none>.<status>``."""
        return f"{self.namespace}.results"

    @property
    def results_queue(self) -> str:
        """Durable queue of raw results (bound with ``result.#``): enrichment consumes it.
        Declared by the publisher too, so that no result is ever unroutable."""
        return f"{self.namespace}.results.raw"

    @property
    def enriched_exchange(self) -> str:
        """Durable topic exchange of enriched results (same routing keys as raw ones)."""
        return f"{self.namespace}.enriched"

    @property
    def enriched_queue(self) -> str:
        """Durable queue of enriched results (bound with ``result.#``): storage consumes it."""
        return f"{self.namespace}.results.enriched"

    @property
    def dead_letter_exchange(self) -> str:
        """Where a result that fails validation goes, with the reason in its headers."""
        return f"{self.namespace}.dead"

    @property
    def dead_letter_queue(self) -> str:
        """Durable queue of dead letters: counted, visible, never silently dropped."""
        return f"{self.namespace}.results.dead"

    # -- Redis ---------------------------------------------------------------------------
    def sweep_live(self, sweep_id: str) -> str:
        """Hash of live counters of a sweep (probes, open, hits:<proto>, status:<s>)."""
        return f"{self.namespace}:sweep:{sweep_id}:live"

    def sweep_control(self, sweep_id: str) -> str:
        """String: the state workers obey (``running``, ``paused``, ``cancelled``)."""
        return f"{self.namespace}:sweep:{sweep_id}:control"

    def sweep_rate(self, sweep_id: str) -> str:
        """The fleet-wide token bucket of a sweep."""
        return f"{self.namespace}:sweep:{sweep_id}:rate"

    def worker(self, worker_id: str) -> str:
        """Hash with a TTL: one live worker process (heartbeat)."""
        return f"{self.namespace}:worker:{worker_id}"

    def workers_pattern(self) -> str:
        return f"{self.namespace}:worker:*"

    def scheduler_heartbeat(self) -> str:
        return f"{self.namespace}:scheduler"
