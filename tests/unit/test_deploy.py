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
  port, grace periods above the shutdown bound).

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
    """The committed schema is not a rubber stamp: an unknown field is refused."""
    doc = next(d for d in kustomize("keda") if d["kind"] == "ScaledObject")
    doc["spec"]["triggers"][0]["metadata"] = {"queueName": "x"}
    doc["spec"]["triggers"][0]["type"] = "rabbitmq"
    doc["spec"]["replicas"] = 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    proc = run(tool("check-jsonschema"), "--schemafile",
               DEPLOY / "k8s" / "keda" / "schema" / "scaledobject.schema.json", bad)
    assert proc.returncode == 1


def test_deployments_keep_the_rules() -> None:
    deployments = {d["metadata"]["name"]: d for d in kustomize("base")
                   if d["kind"] == "Deployment"}
    assert set(deployments) == {f"brokerscan-{r}" for r in (
        "scheduler", "probe", "probe-tls", "enrich", "store", "serve")}
    budgets = {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
               for d in kustomize("base") if d["kind"] == "PodDisruptionBudget"}
    assert {"probe", "probe-tls", "enrich", "store", "serve"} <= budgets
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= SHUTDOWN_BOUND + GRACE_MARGIN, name
        (container,) = pod["containers"]
        sec = container["securityContext"]
        assert sec["runAsNonRoot"] and not sec["allowPrivilegeEscalation"], name
        assert sec["capabilities"]["drop"] == ["ALL"] and sec["readOnlyRootFilesystem"]
        assert sec["seccompProfile"]["type"] == "RuntimeDefault"
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
        if "Type=oneshot" not in text:
            assert "KillMode=mixed" in text and "LimitNOFILE=" in text
            stop = int(re.search(r"TimeoutStopSec=(\d+)", text).group(1))  # type: ignore[union-attr]
            assert stop >= SHUTDOWN_BOUND + GRACE_MARGIN, unit.name
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
