"""The deploy recipes, checked without a cluster or a container engine (none runs here):

- ``deploy/compose.yaml`` against the compose specification (check-jsonschema's built-in
  ``vendor.compose-spec``);
- the kustomize output of ``deploy/k8s/base`` and ``deploy/k8s/keda`` (``kubectl
  kustomize``) with kubernetes-validate ``--strict``; the KEDA objects against the
  schemas committed in ``deploy/k8s/keda/schema`` (written by hand from KEDA's spec);
- ``deploy/Dockerfile`` with hadolint; the systemd units with ``systemd-analyze verify``
  (no output at all: it exits 0 on warnings);
- the Grafana dashboards are what ``deploy/grafana/dashboards.py`` writes, with fixed
  datasource uids; and the rules the recipes must keep (non-root, probes on the metrics
  port, grace periods above the shutdown bound);
- the defects an SRE review found, each with the check that would have caught it: compose's
  RabbitMQ without a fixed ``hostname`` (queues orphaned when recreated), services without a
  restart policy, passwords inline, admin UIs on every address; a migration Job whose fixed
  name cannot take a new image, roles that do not wait for the schema; systemd roles that
  ``Requires=`` a one-shot migrate without retry, and units that restart on exit 2 (bad
  configuration); a Prometheus target without a listener (serve), no exporters, and
  autoscaling on a gauge that freezes.

Every tool is a test dependency or installed by ``scripts/test.sh``: a missing one fails.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
SHUTDOWN_BOUND = 10  # seconds a worker takes to hand its work back (issue 11)
GRACE_MARGIN = 20  # seconds every stop timeout keeps above that bound


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}:/usr/bin:/usr/local/bin:/bin")
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/test.sh (as root) to install it")
    return found


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)


def kustomize(overlay: str) -> list[dict[str, Any]]:
    proc = run(tool("kubectl"), "kustomize", DEPLOY / "k8s" / overlay)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def test_compose_file_follows_the_compose_specification() -> None:
    proc = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
               DEPLOY / "compose.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_recipe_rules() -> None:
    services = compose()["services"]
    roles = {"scheduler", "probe-worker", "probe-tls-worker", "enrich-worker", "store-worker",
             "serve"}
    assert roles | {"postgres", "redis", "rabbitmq", "migrate", "prometheus",
                    "grafana"} <= set(services)
    for name in roles:
        service = services[name]
        assert "container_name" not in service  # --scale needs it unset
        grace = int(service["stop_grace_period"].rstrip("s"))
        assert grace >= SHUTDOWN_BOUND + GRACE_MARGIN, name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "healthz" in " ".join(service["healthcheck"]["test"])
    assert services["serve"]["command"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert "management" in services["rabbitmq"]["image"]
    # RabbitMQ's node name (and data directory) follow the host name: a fixed one keeps
    # the durable queues across a recreated container
    assert services["rabbitmq"]["hostname"] == "rabbitmq"
    for name, service in services.items():
        if name == "migrate":
            assert service["restart"] == "no"  # a one-shot: done is done
        else:
            assert service.get("restart") in ("unless-stopped", "always"), name


def test_compose_keeps_passwords_out_and_admin_uis_on_loopback() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {line.split("=", 1)[0] for line in
               (DEPLOY / "compose.env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert required and required <= example, required - example
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            for password in re.findall(r"://[^/:@\s]+:([^@\s]+)@", str(value)):
                assert password.startswith("${"), f"{name}: {key} has a password inline"
            if re.search(r"PASS(WORD)?$", key):
                assert str(value).startswith("${"), f"{name}: {key} is inline"
        for port in service.get("ports", []):
            if name == "serve":  # the API: it needs a token, and TLS goes in front
                assert port == "8080:8080"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    init = (DEPLOY / "postgres" / "grafana-readonly.sh").read_text()
    assert "PASSWORD :'password'" in init and "BROKERSCAN_GRAFANA_DB_PASSWORD" in init
    proc = run("sh", "-n", DEPLOY / "postgres" / "grafana-readonly.sh")
    assert proc.returncode == 0, proc.stderr


def test_prometheus_scrapes_every_role_and_exporter() -> None:
    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    targets = {t for job in jobs for sc in job.get("static_configs", []) for t in sc["targets"]}
    names = {n for job in jobs for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert names == {"scheduler", "probe-worker", "probe-tls-worker", "enrich-worker",
                     "store-worker", "serve"}
    assert {"rabbitmq:15692", "redis-exporter:9121", "postgres-exporter:9187"} <= targets
    for target in targets:
        assert target.split(":")[0] in services, target
    # every role, serve included, listens where the dns_sd job looks (9100)
    for name in names:
        env = services[name]["environment"]
        assert env["BROKERSCAN_METRICS_PORT"] == "9100", name
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    assert "rabbitmq_prometheus" in plugins and "rabbitmq_management" in plugins
    assert config["rule_files"] == ["rules/brokerscan.yml"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in services["prometheus"]["volumes"]


@pytest.mark.parametrize("overlay", ["base", "keda"])
def test_kustomize_output_is_valid_kubernetes(overlay: str, tmp_path: Path) -> None:
    docs = kustomize(overlay)
    core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    out = tmp_path / "core.yaml"
    out.write_text(yaml.safe_dump_all(core))
    proc = run(tool("kubernetes-validate"), "--strict", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keda = [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    assert bool(keda) == (overlay == "keda")
    for doc in keda:
        schema = DEPLOY / "k8s" / "keda" / "schema" / f"{doc['kind'].lower()}.schema.json"
        one = tmp_path / f"{doc['metadata']['name']}.json"
        one.write_text(json.dumps(doc))
        proc = run(tool("check-jsonschema"), "--schemafile", schema, one)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_keda_schema_refuses_the_amqp_trap(tmp_path: Path) -> None:
    """The committed schema is not a rubber stamp: an unknown field is refused, and so is a
    RabbitMQ trigger over amqp (it sees no unacked message: a busy pool reads as idle)."""
    schema = DEPLOY / "k8s" / "keda" / "schema" / "scaledobject.schema.json"
    objects = {d["metadata"]["name"]: d for d in kustomize("keda")
               if d["kind"] == "ScaledObject"}
    unknown = json.loads(json.dumps(objects["brokerscan-probe"]))
    unknown["spec"]["replicas"] = 3
    amqp = json.loads(json.dumps(objects["brokerscan-enrich"]))
    amqp["spec"]["triggers"][0]["metadata"]["protocol"] = "amqp"
    for name, doc in (("unknown", unknown), ("amqp", amqp)):
        bad = tmp_path / f"{name}.json"
        bad.write_text(json.dumps(doc))
        proc = run(tool("check-jsonschema"), "--schemafile", schema, bad)
        assert proc.returncode == 1, name


def test_keda_scales_on_work_waiting() -> None:
    """The probe pools on shards not yet done (pending ones too: the scheduler queues only
    what the live pool takes), the stream's workers on their queue's
    depth (ready and unacked): never on brokerscan_stream_lag_seconds, which freezes."""
    from brokerscan.names import Names

    names = Names()
    objects = {d["metadata"]["name"]: d for d in kustomize("keda")
               if d["kind"] == "ScaledObject"}
    assert set(objects) == {"brokerscan-probe", "brokerscan-probe-tls", "brokerscan-enrich",
                            "brokerscan-store"}
    queues = {}
    for name, doc in objects.items():
        (trigger,) = doc["spec"]["triggers"]
        assert doc["spec"]["scaleTargetRef"]["name"] == name
        if name.startswith("brokerscan-probe"):
            assert trigger["type"] == "postgresql"
            assert ("s.state IN ('pending', 'paused', 'queued', 'running')"
                    in trigger["metadata"]["query"])
        else:
            assert trigger["type"] == "rabbitmq" and trigger["metadata"]["protocol"] == "http"
            assert trigger["metadata"]["mode"] == "QueueLength"
            queues[name] = trigger["metadata"]["queueName"]
    assert queues == {"brokerscan-enrich": names.results_queue,
                      "brokerscan-store": names.enriched_queue}
    assert objects["brokerscan-store"]["spec"]["maxReplicaCount"] <= 2


def test_migration_job_is_named_after_its_image(tmp_path: Path) -> None:
    """A Job's pod template cannot change: re-applying a fixed name with a new image fails.
    The name carries the tag, in the base and in an overlay that changes the tag (with the
    base's replacements block, as the base says)."""
    def job(docs: list[dict[str, Any]]) -> tuple[str, str]:
        (found,) = [d for d in docs if d["kind"] == "Job"]
        (container,) = found["spec"]["template"]["spec"]["containers"]
        return found["metadata"]["name"], container["image"]

    name, image = job(kustomize("base"))
    assert name == f"brokerscan-migrate-{image.rsplit(':', 1)[1]}"
    base = yaml.safe_load((DEPLOY / "k8s" / "base" / "kustomization.yaml").read_text())
    shutil.copytree(DEPLOY / "k8s" / "base", tmp_path / "base")
    overlay = tmp_path / "upgrade"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["../base"], "images": [{"name": "brokerscan", "newTag": "0.2.0"}],
        "replacements": base["replacements"]}))
    proc = run(tool("kubectl"), "kustomize", overlay)
    assert proc.returncode == 0, proc.stderr
    assert job([d for d in yaml.safe_load_all(proc.stdout) if d]) == (
        "brokerscan-migrate-0.2.0", "brokerscan:0.2.0")


def test_deployments_keep_the_rules() -> None:
    docs = kustomize("base")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    roles = {f"brokerscan-{r}" for r in (
        "scheduler", "probe", "probe-tls", "enrich", "store", "serve")}
    exporters = {"redis-exporter", "postgres-exporter"}
    assert set(deployments) == roles | exporters
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert config["BROKERSCAN_METRICS_PORT"] == "9100"  # every role listens there, serve too
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        port = dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
        (container,) = pod["containers"]
        # the scraped port is a port the container listens on
        assert {"name": "metrics", "containerPort": int(port)} in container["ports"], name
        for one in [container, *pod.get("initContainers", [])]:
            sec = one["securityContext"]
            assert sec["runAsNonRoot"] and not sec["allowPrivilegeEscalation"], name
            assert sec["capabilities"]["drop"] == ["ALL"] and sec["readOnlyRootFilesystem"]
            assert sec["seccompProfile"]["type"] == "RuntimeDefault"
        if name in exporters:
            assert container["livenessProbe"] and container["readinessProbe"]
            assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "brokerscan"
            continue
        # a role starts once the schema is its image's (the migration Job runs apart)
        (wait,) = pod["initContainers"]
        assert wait["args"][:2] == ["db", "wait"] and wait["image"] == container["image"]
        assert wait["envFrom"] == container["envFrom"]
    budgets = {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
               for d in kustomize("base") if d["kind"] == "PodDisruptionBudget"}
    assert {"probe", "probe-tls", "enrich", "store", "serve"} <= budgets
    for name in roles:
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= SHUTDOWN_BOUND + GRACE_MARGIN, name
        (container,) = pod["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"]["cpu"]
        assert container["args"][0] in ("scheduler", "worker", "enrich-worker",
                                        "store-worker", "serve")


def test_dockerfile_is_hadolint_clean() -> None:
    proc = run(tool("hadolint"), DEPLOY / "Dockerfile")
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r'^ENTRYPOINT \["brokerscan"\]', text, re.M)
    assert text.count("FROM python:3.11.11-slim-bookworm") == 2


def test_systemd_units_verify_clean(tmp_path: Path) -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert {u.name for u in units} >= {
        "brokerscan-scheduler.service", "brokerscan-worker@.service",
        "brokerscan-enrich.service", "brokerscan-store.service", "brokerscan-serve.service",
        "brokerscan-migrate.service"}
    brokerscan = BIN / "brokerscan"
    for unit in units:
        text = unit.read_text()
        assert "User=brokerscan" in text
        # exit 2 is bad configuration: restarting cannot fix it
        assert "RestartPreventExitStatus=2" in text, unit.name
        if "Type=oneshot" not in text:
            assert "KillMode=mixed" in text and "LimitNOFILE=" in text
            stop = int(re.search(r"TimeoutStopSec=(\d+)", text).group(1))  # type: ignore[union-attr]
            assert stop >= SHUTDOWN_BOUND + GRACE_MARGIN, unit.name
            # a role does not fail with the migrate unit's first try: it waits for the
            # schema itself, within its start timeout
            assert "Requires=brokerscan-migrate" not in text, unit.name
            assert "Wants=brokerscan-migrate.service" in text, unit.name
            wait = re.search(r"^ExecStartPre=\S+/brokerscan db wait --timeout (\d+)$", text,
                             re.M)
            assert wait, unit.name
            start = int(re.search(r"TimeoutStartSec=(\d+)", text).group(1))  # type: ignore[union-attr]
            assert start > int(wait.group(1)), unit.name
            assert "Restart=always" in text
        else:  # the migrate one-shot retries a database that is not up yet
            assert "Restart=on-failure" in text and "StartLimitIntervalSec=0" in text
        # the units name /opt/brokerscan; verify them against this checkout's binary
        (tmp_path / unit.name).write_text(
            text.replace("/opt/brokerscan/.venv/bin/brokerscan", str(brokerscan)))
    (tmp_path / "brokerscan-worker@probe.service").symlink_to(
        tmp_path / "brokerscan-worker@.service")
    names = [u.name for u in units if u.name != "brokerscan-worker@.service"]
    proc = subprocess.run([tool("systemd-analyze"), "verify", "--man=no",
                           *[f"./{n}" for n in names], "./brokerscan-worker@probe.service"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), \
        proc.stdout + proc.stderr


def test_grafana_dashboards_are_provisioned_raw_with_fixed_uids() -> None:
    # the generator is a script beside the dashboards, not a module of ours: load it by path
    spec = importlib.util.spec_from_file_location("dashboards", DEPLOY / "grafana" /
                                                  "dashboards.py")
    assert spec is not None and spec.loader is not None
    dashboards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dashboards)
    for name, text in dashboards.render().items():
        assert (DEPLOY / "grafana" / "dashboards" / name).read_text() == text, \
            f"{name} is stale: run python deploy/grafana/dashboards.py"
    sources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" /
                              "brokerscan.yaml").read_text())["datasources"]
    uids = {s["uid"] for s in sources}
    assert uids == {"brokerscan-prometheus", "brokerscan-postgres"}
    for board in ("fleet.json", "census.json"):
        data = json.loads((DEPLOY / "grafana" / "dashboards" / board).read_text())
        used = {t["datasource"]["uid"] for p in data["panels"] for t in p["targets"]}
        assert used <= uids
