"""Peer configurations generated from the router's own topology: gdnsd, PowerDNS and nginx.

The same `RouterConfig` (regions, their countries, continents and failover order, the
nodes, the zone's static records) and the same GeoIP database drive all three DNS
servers, so a benchmark compares like with like:

- gdnsd 3.8, geoip plugin: one map whose datacenters are our regions. A continent claimed
  by a region maps to that region's failover order, a claimed country overrides its
  continent (listed under every continent: the plugin looks countries up beneath the
  database's continent), unclaimed places use the plugin's "city auto mode" (nearest
  region by the coordinates in the database, as our router does), and CIDR overrides are
  `nets`. No service_types: every node is statically "up", no monitoring traffic.
- PowerDNS 4.7, geoip backend: services templated on `%cc` (country) then `%cn`
  (continent), falling back to the default region. The backend cannot rank by distance,
  so an unclaimed continent (only Antarctica in georouter/data/cdn.toml) gets the default region.
- nginx 1.22 proxy_cache in front of the loopback origin, for the edge hit-path benchmark.

Nothing here may reach beyond loopback: PowerDNS's security poll (a DNS query to the
system resolver at start) is disabled with an empty `security-poll-suffix`, and every
other outbound feature of each peer stays off (`OUTBOUND_SETTINGS`, checked by the tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from benchmarks.processes import START_TIMEOUT_S, Endpoint, free_port, tcp_accepts
from cdnlab.supervisor import Start, running
from georouter.config import Node, Region, RouterConfig
from georouter.zonedata import StaticRecord, Zone

LOOPBACK = "127.0.0.1"
CONTINENTS = ("AF", "AN", "AS", "EU", "NA", "OC", "SA")
GDNSD_RESOURCE = "regions"
PDNS_GEO_LABEL = "geo"  # records the PowerDNS services point at live under geo.<origin>

# PowerDNS settings that would make it talk to anything but its loopback clients.
PDNS_OUTBOUND_SETTINGS = {
    "security-poll-suffix": "",  # no DNS query to secpoll.powerdns.com at start
    "carbon-server": "",  # no metrics pushed to graphite
    "webserver": "no",
    "api": "no",
    "primary": "no",  # no NOTIFYs to secondaries
    "secondary": "no",  # no zone transfers pulled
    "only-notify": "",
    "expand-alias": "no",
    "disable-axfr": "yes",
    "enable-lua-records": "no",  # LUA ifurlup would probe URLs
}


def failover_order(config: RouterConfig, region: str) -> list[str]:
    """A region followed by the regions it spills to, the order every peer answers in."""
    order = [region, *config.region(region).failover]
    return list(dict.fromkeys(order))


def _claims(config: RouterConfig) -> tuple[dict[str, str], dict[str, str]]:
    countries: dict[str, str] = {}
    continents: dict[str, str] = {}
    for region in config.regions:
        countries.update(dict.fromkeys(region.countries, region.name))
        continents.update(dict.fromkeys(region.continents, region.name))
    return countries, continents


def _nodes_of(config: RouterConfig, region: str) -> list[Node]:
    return [node for node in config.nodes if node.region == region and node.role == "edge"]


def _addresses(nodes: Iterable[Node]) -> list[str]:
    found: list[str] = []
    for node in nodes:
        found.extend(str(a) for a in (node.ipv4, node.ipv6) if a is not None)
    return found


def _relative(name: str, origin: str) -> str:
    return "@" if name == origin else name


def _txt(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- gdnsd -----------------------------------------------------------------------------


def _vscf_list(items: Iterable[str]) -> str:
    return "[ " + ", ".join(items) + " ]"


def _gdnsd_continent(config: RouterConfig, continent: str) -> str:
    countries, continents = _claims(config)
    claimed = continents.get(continent)
    base = _vscf_list(failover_order(config, claimed)) if claimed else "auto"
    if not countries:
        return base
    lines = [f"default => {base}"]
    lines += [f"{cc} => {_vscf_list(failover_order(config, r))}" for cc, r in countries.items()]
    return "{ " + ", ".join(lines) + " }"


def _gdnsd_map(config: RouterConfig, geoip: Path) -> str:
    regions: tuple[Region, ...] = config.regions
    # The datacenters order is the fallback when a client has no location: default first.
    order = dict.fromkeys([config.policy.default_region, *(r.name for r in regions)])
    coords = ", ".join(f"{r.name} => [ {r.latitude}, {r.longitude} ]" for r in regions)
    continents = "\n".join(f"          {c} => {_gdnsd_continent(config, c)}" for c in CONTINENTS)
    nets = ", ".join(
        f'"{o.network}" => {_vscf_list(failover_order(config, o.region))}' for o in config.overrides
    )
    return (
        f'      geoip2_db => "{geoip}"\n'
        f"      datacenters => {_vscf_list(order)}\n"
        f"      auto_dc_coords => {{ {coords} }}\n"
        f"      auto_dc_limit => {len(regions)}\n"
        f"      nets => {{ {nets} }}\n"
        f"      map => {{\n{continents}\n      }}\n"
    )


def gdnsd_config(config: RouterConfig, geoip: Path, port: int, workdir: Path) -> str:
    """The gdnsd `config` file: loopback listener, ECS on, one geoip map and resource."""
    dcmap = ", ".join(
        f"{r.name} => {_vscf_list(_addresses(_nodes_of(config, r.name)))}" for r in config.regions
    )
    mapping = _gdnsd_map(config, geoip)
    return (
        "options => {\n"
        f"  listen => [ 127.0.0.1:{port} ]\n"
        f'  run_dir => "{workdir / "run"}"\n'
        f'  state_dir => "{workdir / "state"}"\n'
        "  edns_client_subnet => true\n"
        "}\n"
        "plugins => { geoip => {\n"
        f"  maps => {{ {GDNSD_RESOURCE} => {{\n{mapping}\n  }} }}\n"
        f"  resources => {{ {GDNSD_RESOURCE} => {{\n"
        f"    map => {GDNSD_RESOURCE}\n"
        f"    dcmap => {{ {dcmap} }}\n"
        "  } }\n"
        "} }\n"
    )


def _zone_line(record: StaticRecord, origin: str) -> str:
    value = _txt(record.value) if record.rtype == "TXT" else record.value
    return f"{_relative(record.name, origin)} {record.ttl} {record.rtype} {value}"


def gdnsd_zone(config: RouterConfig, zone: Zone) -> str:
    """An RFC 1035 zone file for gdnsd; service names are DYNA records of the geoip plugin."""
    ttl = config.policy.answer_ttl
    soa = (
        f"@ {zone.negative_ttl} SOA {zone.ns[0]} {zone.soa_rname} ( {zone.soa_serial} "
        f"{zone.soa_refresh} {zone.soa_retry} {zone.soa_expire} {zone.negative_ttl} )"
    )
    lines = [f"$TTL {ttl}", soa]
    lines += [f"@ {zone.soa_refresh} NS {ns}" for ns in zone.ns]
    lines += [_zone_line(r, zone.origin) for r in zone.records]
    lines += [f"{s} {ttl} DYNA geoip!{GDNSD_RESOURCE}" for s in zone.services]
    return "\n".join(lines) + "\n"


def gdnsd_files(config: RouterConfig, geoip: Path, port: int, workdir: Path) -> dict[str, str]:
    """Every file of a gdnsd configuration directory, by path relative to it."""
    files = {"config": gdnsd_config(config, geoip, port, workdir)}
    for zone in config.zones:
        files[f"zones/{zone.origin.rstrip('.')}"] = gdnsd_zone(config, zone)
    return files


# --- PowerDNS --------------------------------------------------------------------------


def _pdns_rrs(nodes: Iterable[Node], ttl: int) -> list[dict[str, object]]:
    rrs: list[dict[str, object]] = []
    for node in nodes:
        rrs += [{"a": {"content": str(node.ipv4), "ttl": ttl}}] if node.ipv4 else []
        rrs += [{"aaaa": {"content": str(node.ipv6), "ttl": ttl}}] if node.ipv6 else []
    return rrs


def _pdns_static(record: StaticRecord) -> dict[str, object]:
    return {record.rtype.lower(): {"content": record.value.rstrip("."), "ttl": record.ttl}}


def _pdns_domain(config: RouterConfig, zone: Zone) -> dict[str, object]:
    """One geoip-backend domain: static records, and per place a record set to answer with.

    A service is a list of templates tried in order until one names an existing record:
    the client's country, its continent, then the default region (RFC 7871 scope follows
    from the database network the backend matched).
    """
    geo = f"{PDNS_GEO_LABEL}.{zone.origin}".rstrip(".")
    ttl = config.policy.answer_ttl
    countries, continents = _claims(config)
    soa = (
        f"{zone.ns[0]} {zone.soa_rname} {zone.soa_serial} {zone.soa_refresh} "
        f"{zone.soa_retry} {zone.soa_expire} {zone.negative_ttl}"
    )
    apex: list[dict[str, object]] = [{"soa": {"content": soa, "ttl": zone.negative_ttl}}]
    apex += [{"ns": {"content": ns.rstrip("."), "ttl": zone.soa_refresh}} for ns in zone.ns]
    records = {zone.origin.rstrip("."): apex}
    for record in zone.records:
        records.setdefault(record.name.rstrip("."), []).append(_pdns_static(record))
    places = [(f"{cc.lower()}.cc", r) for cc, r in countries.items()]
    places += [(f"{cn.lower()}.cn", r) for cn, r in continents.items()]
    places += [(f"{o.region}.net", o.region) for o in config.overrides]
    places += [("default", config.policy.default_region)]
    for label, region in places:
        records[f"{label}.{geo}"] = _pdns_rrs(_nodes_of(config, region), ttl)
    templates = [f"%cc.cc.{geo}", f"%cn.cn.{geo}", f"default.{geo}"]
    service: dict[str, object] = {"default": templates}
    service.update({str(o.network): f"{o.region}.net.{geo}" for o in config.overrides})
    services = {name.rstrip("."): service for name in zone.services}
    return {"domain": zone.origin.rstrip("."), "ttl": ttl, "records": records, "services": services}


def pdns_zones(config: RouterConfig) -> str:
    """The geoip backend's zones file. JSON is YAML's flow style, which yaml-cpp reads."""
    return json.dumps({"domains": [_pdns_domain(config, z) for z in config.zones]}, indent=1)


def pdns_conf(geoip: Path, port: int, workdir: Path) -> str:
    """pdns.conf: loopback listener, ECS on, geoip backend, every outbound feature off."""
    settings = {
        "launch": "geoip",
        "geoip-database-files": f"mmdb:{geoip}",
        "geoip-zones-file": str(workdir / "zones.yaml"),
        "local-address": f"127.0.0.1:{port}",
        "edns-subnet-processing": "yes",
        "socket-dir": str(workdir),
        "guardian": "no",
        "daemon": "no",
        "disable-syslog": "yes",
        "write-pid": "no",
        "loglevel": "4",
        **PDNS_OUTBOUND_SETTINGS,
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def pdns_files(config: RouterConfig, geoip: Path, port: int, workdir: Path) -> dict[str, str]:
    """Every file of a PowerDNS configuration directory, by path relative to it."""
    return {"pdns.conf": pdns_conf(geoip, port, workdir), "zones.yaml": pdns_zones(config)}


# --- running them ----------------------------------------------------------------------


def write_files(directory: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def answers_soa(host: str, port: int, zone: str) -> bool:
    """True once a DNS server answers the zone's SOA over UDP (a readiness probe)."""
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    try:
        response = dns.query.udp(query, host, port=port, timeout=0.5)
    except (OSError, dns.exception.Timeout):
        return False
    return response.rcode() == dns.rcode.NOERROR and bool(response.answer)


@contextlib.contextmanager
def _serving(
    name: str, argv: list[str], port: int, zone: str, start: Start = Start.GROUP
) -> Iterator[Endpoint]:
    with running(name, argv, start=start) as service:
        service.wait_ready(lambda: answers_soa(LOOPBACK, port, zone), START_TIMEOUT_S)
        yield Endpoint(name, LOOPBACK, port, service.pid)


@contextlib.contextmanager
def gdnsd(config: RouterConfig, geoip: Path, workdir: Path) -> Iterator[Endpoint]:
    """gdnsd on a free loopback port with the generated configuration."""
    port = free_port()
    write_files(workdir, gdnsd_files(config, geoip, port, workdir))
    argv = ["gdnsd", "-c", str(workdir), "start"]
    with _serving("gdnsd", argv, port, config.zones[0].origin) as endpoint:
        yield endpoint


@contextlib.contextmanager
def powerdns(
    config: RouterConfig,
    geoip: Path,
    workdir: Path,
    *,
    start: Start = Start.GROUP,
    name: str = "powerdns",
) -> Iterator[Endpoint]:
    """pdns_server on a free loopback port with the generated configuration (`start`: see
    cdnlab/supervisor.py; the bias check starts it each way)."""
    port = free_port()
    write_files(workdir, pdns_files(config, geoip, port, workdir))
    argv = ["pdns_server", f"--config-dir={workdir}"]
    with _serving(name, argv, port, config.zones[0].origin, start) as endpoint:
        yield endpoint


def versions() -> dict[str, str]:
    """Installed peer versions, as the tools print them ("" when absent)."""
    probes = {
        "gdnsd": (["gdnsd", "-c", "/nonexistent", "checkconf"], r"gdnsd version (\S+)"),
        "powerdns": (["pdns_server", "--version"], r"Authoritative Server (\S+)"),
        "nginx": (["nginx", "-v"], r"nginx/(\S+)"),
        "dnsperf": (["dnsperf", "-h"], r"Version (\S+)"),
        "wrk": (["wrk", "-v"], r"wrk (\S+)"),
    }
    found = {}
    for name, (argv, pattern) in probes.items():
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            found[name] = ""
            continue
        match = re.search(pattern, out.stdout + out.stderr)
        found[name] = match.group(1) if match else "?"
    return found


# --- nginx -----------------------------------------------------------------------------


def nginx_conf(origin_port: int, port: int, workdir: Path, *, as_root: bool) -> str:
    """nginx proxy_cache in front of the loopback origin, one worker like one edge process.

    proxy_cache_lock is nginx's request coalescing (one origin fetch per key), as our edge
    does; the cache honours the origin's Cache-Control like ours.
    """
    temp = {kind: workdir / "tmp" / kind for kind in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    # A root master would hand the workers to "nobody", who cannot write a private workdir.
    user = "user root;\n" if as_root else ""
    return (
        f"{user}worker_processes 1;\n"
        "daemon off;\n"
        f"pid {workdir / 'nginx.pid'};\n"
        "error_log stderr warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "  access_log off;\n"
        f"  client_body_temp_path {temp['body']};\n"
        f"  proxy_temp_path {temp['proxy']};\n"
        f"  fastcgi_temp_path {temp['fastcgi']};\n"
        f"  uwsgi_temp_path {temp['uwsgi']};\n"
        f"  scgi_temp_path {temp['scgi']};\n"
        f"  proxy_cache_path {workdir / 'cache'} levels=1:2 keys_zone=edge:10m max_size=256m"
        " inactive=1h use_temp_path=off;\n"
        "  server {\n"
        f"    listen {LOOPBACK}:{port};\n"
        "    location / {\n"
        f"      proxy_pass http://{LOOPBACK}:{origin_port};\n"
        "      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n'
        "      proxy_cache edge;\n"
        "      proxy_cache_lock on;\n"
        "      add_header X-Cache-Status $upstream_cache_status;\n"
        "    }\n"
        "  }\n"
        "}\n"
    )


@contextlib.contextmanager
def nginx(origin_port: int, workdir: Path) -> Iterator[Endpoint]:
    """nginx on a free loopback port with the generated proxy_cache configuration."""
    port = free_port()
    conf = nginx_conf(origin_port, port, workdir, as_root=os.geteuid() == 0)
    write_files(workdir, {"nginx.conf": conf})
    for directory in ("tmp", "cache"):
        (workdir / directory).mkdir(exist_ok=True)
    argv = ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", "stderr"]
    with running("nginx", argv) as service:
        service.wait_ready(lambda: tcp_accepts(LOOPBACK, port), START_TIMEOUT_S)
        yield Endpoint("nginx", LOOPBACK, port, service.pid)
