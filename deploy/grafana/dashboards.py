"""Writes fleet.json and census.json (raw Grafana dashboard JSON with fixed datasource uids).

    python deploy/grafana/dashboards.py      # after editing the panels below

Kept as code so that the two dashboards stay consistent (grid, datasources); the JSON
files are what Grafana provisions, and a test checks they match this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PROM = {"type": "prometheus", "uid": "brokerscan-prometheus"}
PG = {"type": "grafana-postgresql-datasource", "uid": "brokerscan-postgres"}
HERE = Path(__file__).resolve().parent / "dashboards"


def panel(i: int, title: str, kind: str, targets: list[dict[str, Any]], *, unit: str = "short",
          w: int = 12, h: int = 8, ds: dict[str, str] = PROM) -> dict[str, Any]:
    return {"id": i, "title": title, "type": kind, "datasource": ds,
            "gridPos": {"x": ((i - 1) % (24 // w)) * w, "y": ((i - 1) // (24 // w)) * h,
                        "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {}, "targets": targets}


def prom(expr: str, legend: str = "") -> dict[str, Any]:
    return {"datasource": PROM, "expr": expr, "legendFormat": legend, "refId": "A"}


def sql(query: str, fmt: str = "time_series") -> dict[str, Any]:
    return {"datasource": PG, "rawSql": query, "format": fmt, "rawQuery": True,
            "editorMode": "code", "refId": "A"}


def dashboard(uid: str, title: str, panels: list[dict[str, Any]],
              time_from: str) -> dict[str, Any]:
    return {"uid": uid, "title": title, "tags": ["brokerscan"], "timezone": "utc",
            "schemaVersion": 39, "version": 1, "editable": False, "refresh": "30s",
            "time": {"from": time_from, "to": "now"}, "panels": panels}


FLEET = dashboard("brokerscan-fleet", "brokerscan: fleet", [
    panel(1, "Probes/s by queue", "timeseries",
          [prom("sum by (queue) (rate(brokerscan_probes_total[1m]))", "{{queue}}")],
          unit="ops"),
    panel(2, "Hits/s by protocol", "timeseries",
          [prom('sum by (protocol) (rate(brokerscan_probes_total{protocol!="none"}[5m]))',
                "{{protocol}}")], unit="ops"),
    panel(3, "Connections in flight", "timeseries",
          [prom("sum by (role) (brokerscan_connections_in_flight)", "{{role}}")]),
    panel(4, "Rate-budget waits (share of time)", "timeseries",
          [prom("sum(rate(brokerscan_rate_budget_wait_seconds_total[1m]))"
                " / clamp_min(sum(brokerscan_worker_busy_processes), 1)", "waiting")],
          unit="percentunit"),
    panel(5, "Queue depths (ready messages)", "timeseries",
          [prom("max by (queue) (brokerscan_queue_messages)", "{{queue}}")]),
    panel(6, "Stream lag", "timeseries",
          [prom("max by (stage) (brokerscan_stream_lag_seconds)", "{{stage}}")], unit="s"),
    panel(7, "Dead letters/s by reason", "timeseries",
          [prom("sum by (stage, reason) (rate(brokerscan_dead_letters_total[5m]))",
                "{{stage}} {{reason}}")], unit="ops"),
    panel(8, "Workers alive", "stat",
          [prom("max by (queue) (brokerscan_workers_alive)", "{{queue}}")]),
    panel(9, "Shards by state (sweeps under way)", "bargauge",
          [prom("max by (state) (brokerscan_shards)", "{{state}}")]),
    panel(10, "Sweep progress", "bargauge",
          [prom("max by (sweep) (brokerscan_sweep_progress_ratio)", "{{sweep}}")],
          unit="percentunit"),
    panel(11, "Connect time (p50, p99)", "timeseries",
          [prom("histogram_quantile(0.5, sum by (le) "
                "(rate(brokerscan_connect_seconds_bucket[5m])))", "p50"),
           prom("histogram_quantile(0.99, sum by (le) "
                "(rate(brokerscan_connect_seconds_bucket[5m])))", "p99")], unit="s"),
    panel(12, "Store: rows/s and batch time p99", "timeseries",
          [prom("sum(rate(brokerscan_store_rows_total[1m]))", "rows/s"),
           prom("histogram_quantile(0.99, sum by (le) "
                "(rate(brokerscan_store_batch_seconds_bucket[5m])))", "batch p99 (s)")]),
    panel(13, "API requests/s by route and status", "timeseries",
          [prom("sum by (route, status) (rate(brokerscan_http_requests_total[5m]))",
                "{{route}} {{status}}")], unit="reqps"),
    panel(14, "API latency p99 by route", "timeseries",
          [prom("histogram_quantile(0.99, sum by (le, route) "
                "(rate(brokerscan_http_request_seconds_bucket[5m])))", "{{route}}")],
          unit="s"),
    panel(15, "API export bytes/s, requests in flight", "timeseries",
          [prom('sum(rate(brokerscan_http_response_bytes_total{route="/api/v1/export"}[5m]))',
                "export bytes/s"),
           prom("sum(brokerscan_http_requests_in_flight)", "in flight")]),
    panel(16, "API costly lane: running, waiting, refused/s", "timeseries",
          [prom("sum(brokerscan_http_costly_running)", "running"),
           prom("sum(brokerscan_http_costly_waiting)", "waiting"),
           prom("sum(rate(brokerscan_http_costly_refused_total[5m]))", "refused/s")]),
], "now-6h")

_PER_DAY = ("SELECT day::timestamptz AS time, {what} AS value FROM rollup"
            " WHERE $__timeFilter(day::timestamptz) {where} GROUP BY 1 ORDER BY 1")
CENSUS = dashboard("brokerscan-census", "brokerscan: census", [
    panel(1, "MQTT servers", "timeseries", [sql(_PER_DAY.format(
        what="sum(n)", where="AND protocol = 'mqtt'"))], ds=PG),
    panel(2, "MQTT on 1883 without TLS / on 8883 with TLS", "timeseries", [sql(
        "SELECT day::timestamptz AS time, sum(n) FILTER (WHERE port = 1883 AND NOT tls)"
        " AS \"1883 plaintext\", sum(n) FILTER (WHERE port = 8883 AND tls) AS \"8883 TLS\""
        " FROM rollup WHERE protocol = 'mqtt' AND $__timeFilter(day::timestamptz)"
        " GROUP BY 1 ORDER BY 1")], ds=PG),
    panel(3, "MQTT accepting anonymous clients", "timeseries", [sql(_PER_DAY.format(
        what="sum(n)", where="AND protocol = 'mqtt' AND anonymous = 1"))], ds=PG),
    panel(4, "AMQP services", "timeseries", [sql(_PER_DAY.format(
        what="sum(n)", where="AND protocol = 'amqp'"))], ds=PG),
    panel(5, "Top countries (latest day)", "table", [sql(
        "SELECT country, sum(n) AS brokers FROM rollup WHERE protocol <> '' AND day ="
        " (SELECT max(day) FROM rollup) GROUP BY country ORDER BY brokers DESC LIMIT 15",
        "table")], ds=PG),
    panel(6, "Top ASNs (latest day)", "table", [sql(
        "SELECT asn, sum(n) AS brokers FROM rollup WHERE protocol <> '' AND day ="
        " (SELECT max(day) FROM rollup) GROUP BY asn ORDER BY brokers DESC LIMIT 15",
        "table")], ds=PG),
], "now-90d")


def render() -> dict[str, str]:
    return {name: json.dumps(board, indent=2) + "\n"
            for name, board in (("fleet.json", FLEET), ("census.json", CENSUS))}


if __name__ == "__main__":
    for name, text in render().items():
        (HERE / name).write_text(text)
        sys.stdout.write(f"wrote {HERE / name}\n")
