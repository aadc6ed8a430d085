"""External oracles for the end-to-end tests: generated unbound and Prometheus configs, and
the check that every address in them is on loopback. The CDN they run against is started by
cdnlab.loopback (`start_cdn`).
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cdn.config import HostPort

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = REPO / "data" / "prometheus" / "prometheus.yml"
ALERTS_YML = REPO / "data" / "prometheus" / "alerts.yml"
GRAFANA_JSON = REPO / "data" / "grafana" / "georouter.json"

# ---- external oracles: generated configs and the loopback-only check ----------------------


def unbound_config(workdir: Path, port: int, router: HostPort) -> str:
    """An unbound that serves example.com from our router only, forwarding ECS to it.

    Nothing can leave the machine: every other name is refused (local-zone "." refuse),
    the only upstreams are loopback stubs, and queries go out from 127.0.0.1, which the
    kernel will not route anywhere else. No root hints, no trust anchor, no validator.
    """
    # verbosity 4 logs every upstream target, so a test can check where queries went.
    return f"""server:
    verbosity: 4
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    outgoing-interface: 127.0.0.1
    access-control: 127.0.0.0/8 allow
    chroot: ""
    username: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    use-syslog: no
    logfile: "{workdir}/unbound.log"
    num-threads: 1
    module-config: "subnetcache iterator"
    do-not-query-localhost: no
    send-client-subnet: 127.0.0.1
    send-client-subnet: {router.host}
    max-client-subnet-ipv4: 24
    qname-minimisation: no
    prefetch: no
    target-fetch-policy: "0 0 0 0 0"
    local-zone: "." refuse
    local-zone: "example.com." transparent

stub-zone:
    name: "example.com"
    stub-addr: {router.host}@{router.port}

remote-control:
    control-enable: no
"""


UNBOUND_ADDRESS_KEYS = frozenset(
    {"interface", "outgoing-interface", "send-client-subnet", "stub-addr", "forward-addr"}
)
# Any of these would make unbound reach for the real root or validate against it.
UNBOUND_FORBIDDEN_KEYS = frozenset(
    {"root-hints", "auto-trust-anchor-file", "trust-anchor-file", "trust-anchor", "forward-zone"}
)


def unbound_settings(conf: str) -> list[tuple[str, str]]:
    """(key, value) for every `key: value` line of an unbound config, quotes removed."""
    pairs = []
    for line in conf.splitlines():
        key, sep, value = line.split("#", 1)[0].strip().partition(":")
        if sep:
            pairs.append((key, value.strip().strip('"')))
    return pairs


def unbound_upstreams(conf: str) -> list[str]:
    """Every address in an unbound config (`host@port` → host, `net/len` → net)."""
    return [
        value.split("@")[0].split("/")[0]
        for key, value in unbound_settings(conf)
        if key in UNBOUND_ADDRESS_KEYS
    ]


def prometheus_config(
    scrape_interval_s: float, router: HostPort, edges: dict[str, HostPort]
) -> str:
    """The shipped prometheus.yml with the test's targets and a short interval.

    Edge targets are matched by their `node` label, so the shipped labels stay as shipped.
    """
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    interval = f"{int(scrape_interval_s * 1000)}ms"
    cfg["global"].update(
        scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval
    )
    cfg["rule_files"] = [str(ALERTS_YML)]
    for job in cfg["scrape_configs"]:
        for static in job["static_configs"]:
            if job["job_name"] == "georouter":
                static["targets"] = [str(router)]
            else:
                static["targets"] = [str(edges[static["labels"]["node"]])]
    return yaml.safe_dump(cfg, sort_keys=False)


def prometheus_targets(cfg: dict[str, Any]) -> list[str]:
    """Every host a Prometheus config sends anything to: targets, alertmanagers, remote r/w."""
    hosts = [
        t.rsplit(":", 1)[0]
        for job in cfg.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for t in static.get("targets", [])
    ]
    for am in cfg.get("alerting", {}).get("alertmanagers", []):
        hosts += [t.rsplit(":", 1)[0] for s in am.get("static_configs", []) for t in s["targets"]]
    for section in ("remote_write", "remote_read"):
        hosts += [urlsplit(r["url"]).hostname or r["url"] for r in cfg.get(section, [])]
    return hosts


def non_loopback(hosts: Iterable[str]) -> list[str]:
    """The hosts that are not literal 127.0.0.0/8 or ::1 addresses (names count as remote)."""
    bad = []
    for host in hosts:
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            bad.append(host)
            continue
        if not address.is_loopback:
            bad.append(host)
    return bad


def which(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()),
        None,
    )
