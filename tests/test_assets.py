"""The shipped operator assets stay true: valid, in step with the metrics, loopback only.

- data/prometheus/alerts.yml passes `promtool check rules` and its own `promtool test rules`;
- every metric name in the alert rules and the Grafana dashboard is exported by a real
  router or edge (scraped after some traffic, so labelled series exist);
- nothing in the shipped or generated configs (Prometheus, unbound) points off loopback.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from cdn.config import HostPort
from cdnlab.loopback import SUBNETS, start_cdn
from tests.e2e import (
    ALERTS_YML,
    GRAFANA_JSON,
    PROMETHEUS_YML,
    UNBOUND_FORBIDDEN_KEYS,
    non_loopback,
    prometheus_config,
    prometheus_targets,
    unbound_config,
    unbound_settings,
    unbound_upstreams,
    which,
)

METRIC = re.compile(r"\b(?:georouter|edge)_[a-z0-9_]+\b")


def _promtool() -> str:
    path = which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package prometheus; `make test` installs it)")
    return path


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(GRAFANA_JSON.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC.findall(expr)}


def exported_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition can produce, suffixes included."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


# ---- validity ------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_rules() -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(ALERTS_YML)], capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shipped_scrape_config_passes_promtool_check_config() -> None:
    done = subprocess.run(
        [_promtool(), "check", "config", str(PROMETHEUS_YML)], capture_output=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


ALERT_TESTS = """
rule_files: [{alerts}]
evaluation_interval: 5s
tests:
  - interval: 5s
    input_series:
      - series: 'georouter_node_healthy{{instance="r", region="eu", node="edge-eu-1"}}'
        values: '1 0 0 0 0 0 0 0'
      - series: 'georouter_node_healthy{{instance="r", region="eu", node="edge-eu-2"}}'
        values: '1 1 0 0 0 0 0 0'
      - series: 'georouter_node_healthy{{instance="r", region="na", node="edge-na-1"}}'
        values: '1 1 1 1 1 1 1 1'
      - series: 'georouter_decisions_total{{instance="r", reason="fail_open"}}'
        values: '0 0 0 3 3 3 3 3'
      - series: 'georouter_node_state{{instance="r", node="edge-eu-1", state="down"}}'
        values: '0 1 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'edge_tls_certificate_expiry_seconds{{instance="e", certificate="api.example.com"}}'
        values: '1209605+0x12'  # 14 days and 5 s from time() = 0
      - series: 'edge_tls_certificate_expiry_seconds{{instance="e", certificate="default"}}'
        values: '2592000+0x12'
      - series: 'edge_digest_mismatches_total{{instance="e", node="edge-eu-1", field="repr"}}'
        values: '0 0 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 25s
        alertname: RegionWithoutHealthyNodes
        exp_alerts:
          - exp_labels: {{severity: page, instance: r, region: eu}}
            exp_annotations:
              summary: "Region eu has no healthy edge"
              description: "Its clients are sent to the next-nearest region (slower for them, more load there)."
      - eval_time: 25s
        alertname: FailOpenAnswers
        exp_alerts:
          - exp_labels: {{severity: page, instance: r, reason: fail_open}}
            exp_annotations:
              summary: "Router r answers fail-open"
              description: "No node anywhere is healthy, so answers name the configured nodes regardless of health."
      - eval_time: 20s
        alertname: EdgeNodeDown
        exp_alerts: []
      - eval_time: 40s
        alertname: EdgeNodeDown
        exp_alerts:
          - exp_labels: {{severity: warn, instance: r, node: edge-eu-1, state: down}}
            exp_annotations:
              summary: "Edge edge-eu-1 is down (router r)"
              description: "Probes fail or its load reports stopped; the router no longer names it in answers."
      - eval_time: 5s
        alertname: EdgeDigestMismatch
        exp_alerts: []
      - eval_time: 15s
        alertname: EdgeDigestMismatch
        exp_alerts:
          - exp_labels: {{severity: warn, instance: e, node: edge-eu-1}}
            exp_annotations:
              summary: "edge-eu-1 received origin bodies that fail their digest"
              description: "Content-Digest or Repr-Digest (RFC 9530) did not match: the bytes were altered between the origin and the edge (or the origin computes its digests wrongly). Nothing was stored; clients got 502 or a cut response. The edge log names the URLs (event=digest_mismatch)."
      - eval_time: 0s
        alertname: EdgeCertificateExpiresSoon
        exp_alerts: []
      - eval_time: 10s
        alertname: EdgeCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {{severity: warn, instance: e, certificate: api.example.com}}
            exp_annotations:
              summary: "Certificate api.example.com of e expires in under 14 days"
              description: "Renew it and send the edge SIGHUP: clients refuse an expired certificate, and HTTPS to this edge stops."
"""  # noqa: E501 (expected annotations are the rules' own long lines)


def test_alerts_fire_when_they_should_promtool_test_rules(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.format(alerts=json.dumps(str(ALERTS_YML))))
    done = subprocess.run([_promtool(), "test", "rules", str(tests)], capture_output=True)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_dashboard_panels_use_the_datasource_variable() -> None:
    dashboard = json.loads(GRAFANA_JSON.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)


# ---- in step with the programs -------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_every_metric_in_rules_and_dashboard_is_exported(tmp_path: Path) -> None:
    async with start_cdn(tmp_path) as cdn, aiohttp.ClientSession() as session:
        for region, subnet in SUBNETS.items():
            ips = await cdn.resolve(subnet)
            assert ips, region
            async with session.get(f"http://{ips[0]}:{cdn.plan.content_port}/img/cat.jpg") as r:
                await r.read()
        edge = cdn.plan.edges[0]
        auth = {"Authorization": f"Bearer {edge.token}"}  # the edge's own credential
        body = {"url": f"http://{edge.content}/img/cat.jpg"}
        async with session.post(f"http://{edge.control}/purge", json=body, headers=auth) as r:
            assert r.status == 200
        exported: set[str] = set()
        for url in [f"{cdn.plan.control_url}/metrics", f"http://{edge.control}/metrics"]:
            async with session.get(url) as r:
                exported |= exported_names(await r.text())
    used = metric_names(rule_exprs()) | metric_names(dashboard_exprs())
    assert used, "no metric names found in the assets"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_metric_name_extraction_sees_suffixes() -> None:
    text = textwrap.dedent("""\
        # TYPE edge_origin_fetch_duration_seconds histogram
        # TYPE edge_requests_total counter
        edge_requests_total{cache="hit"} 1.0
        # TYPE edge_cache_hit_ratio gauge
    """)
    names = exported_names(text)
    assert {"edge_origin_fetch_duration_seconds_bucket", "edge_requests_total"} <= names
    assert "edge_requests" not in names  # a query must use the _total name
    assert metric_names(["rate(edge_requests_total[1m]) / on (node) edge_utilization"]) == {
        "edge_requests_total",
        "edge_utilization",
    }


# ---- nothing leaves the machine ------------------------------------------------------------


def test_shipped_prometheus_config_targets_loopback_only_and_sends_nothing() -> None:
    cfg: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert non_loopback(prometheus_targets(cfg)) == []
    assert "remote_write" not in cfg and "remote_read" not in cfg
    assert not cfg.get("alerting", {}).get("alertmanagers")
    assert cfg["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"] for job in cfg["scrape_configs"]}
    assert jobs == {"georouter", "edge"}


def test_generated_prometheus_config_targets_loopback_only() -> None:
    edges = {f"edge-{r}-{i}": HostPort(f"127.9.9.{n}", 9000 + n) for n, (r, i) in
             enumerate([(r, i) for r in ("na", "eu", "ap") for i in (1, 2)], start=11)}  # fmt: skip
    cfg = yaml.safe_load(prometheus_config(1.0, HostPort("127.9.9.1", 9153), edges))
    targets = prometheus_targets(cfg)
    assert len(targets) == 7 and non_loopback(targets) == []
    assert "remote_write" not in cfg and "alerting" not in cfg


def test_generated_unbound_config_uses_loopback_only(tmp_path: Path) -> None:
    conf = unbound_config(tmp_path, 5353, HostPort("127.9.9.1", 5300))
    keys = {key for key, _ in unbound_settings(conf)}
    assert not keys & UNBOUND_FORBIDDEN_KEYS
    upstreams = unbound_upstreams(conf)
    assert {"127.9.9.1", "127.0.0.1"} <= set(upstreams)
    assert non_loopback(upstreams) == []
    settings = dict(unbound_settings(conf))
    assert settings["module-config"] == "subnetcache iterator"  # no validator: no trust anchor
    assert settings["do-not-query-localhost"] == "no"


@pytest.mark.parametrize("host", ["8.8.8.8", "10.0.0.1", "192.168.1.1", "::2", "example.com"])
def test_loopback_check_flags_anything_else(host: str) -> None:
    assert non_loopback(["127.0.0.1", "::1", host]) == [host]
    conf = f"stub-zone:\n    name: x\n    stub-addr: {host}@53\n"
    assert non_loopback(unbound_upstreams(conf)) == [host]
    url_host = f"[{host}]" if ":" in host else host
    cfg = {"remote_write": [{"url": f"http://{url_host}:9090/api/v1/write"}]}
    assert non_loopback(prometheus_targets(cfg)) == [host]
