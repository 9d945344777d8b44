"""deploy/: everything parses, refers to what exists, and uses only metrics Percorso exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agents.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent


def load(path: Path) -> Any:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load_all(text)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json")),
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_every_file_parses(path: Path) -> None:
    documents = [load(path)] if path.suffix == ".json" else list(load(path))
    assert documents and all(d is not None for d in documents)


def exported_metric_names() -> set[str]:
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names.add(family.name)
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names | {"up"}


def referenced_metrics(expression: str) -> set[str]:
    words = set(re.findall(r"\b([a-z_:][a-z0-9_:]*)\b", expression))
    return {w for w in words if w.startswith(("percorso_", "process_")) or w == "up"}


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "percorso.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_metric_names()
    for expression in alert_expressions() + dashboard_expressions():
        unknown = referenced_metrics(expression) - exported
        assert not unknown, f"{unknown} in {expression!r}"


def test_every_alert_has_for_severity_summary_runbook_and_a_unit_test() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    tested = {
        case["alertname"]
        for t in tests["tests"]
        for case in t["alert_rule_test"]
        if case.get("exp_alerts")
    }
    docs = (REPO / "docs" / "operations.md").read_text()
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        name = rule["alert"]
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        anchor = re.search(r"docs/operations\.md#([a-z-]+)", rule["annotations"]["description"])
        assert anchor, f"{name}: no runbook link"
        assert f'<a id="{anchor.group(1)}"></a>' in docs, f"{name}: runbook section missing"
        assert name in tested, f"{name}: no promtool test that fires it"


def test_dashboard_covers_what_sres_watch() -> None:
    titles = " ".join(
        p["title"].lower()
        for p in json.loads((DEPLOY / "grafana" / "dashboards" / "percorso.json").read_text())[
            "panels"
        ]
    )
    for topic in (
        "throughput in",
        "throughput out",
        "lag",
        "latency",
        "lateness",
        "dead letters",
        "rebalances",
        "recovery",
        "state size",
        "memory",
    ):
        assert topic in titles, topic


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_refers_only_to_what_exists() -> None:
    services = compose()["services"]
    assert {"kafka", "schema-registry", "percorso-1", "percorso-2", "prometheus", "grafana"} <= set(
        services
    )
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_compose_wiring_is_consistent() -> None:
    services = compose()["services"]
    kafka_internal = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    ids = set()
    for name in ("percorso-1", "percorso-2"):
        env = services[name]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] in kafka_internal
        assert f"{name}:{env['PERCORSO_WEB_PORT']}" in targets
        assert services[name]["ports"][0].endswith(f":{env['PERCORSO_WEB_PORT']}")
        ids.add(env["PERCORSO_GROUP_INSTANCE_ID"])
    assert len(ids) == 2, "static member ids must differ"
    registry = services["schema-registry"]
    assert services["percorso-1"]["environment"]["SCHEMA_REGISTRY_URL"].endswith(
        registry["ports"][0].split(":")[1]
    )


def test_dockerfile_copies_what_exists() -> None:
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source


def test_kubernetes_statefulset_keeps_state_and_membership() -> None:
    k8s = DEPLOY / "kubernetes"
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (k8s / resource).is_file(), resource
    sts = yaml.safe_load((k8s / "statefulset.yaml").read_text())
    spec = sts["spec"]
    assert sts["kind"] == "StatefulSet" and spec["volumeClaimTemplates"]
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["PERCORSO_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    )
    mount = container["volumeMounts"][0]
    config = yaml.safe_load((k8s / "configmap.yaml").read_text())["data"]
    assert mount["mountPath"] == config["PERCORSO_DATA_DIR"]
    monitor = yaml.safe_load((k8s / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
