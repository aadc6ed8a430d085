"""Topology nodes with role = "shield": probed, shown and purged like edges, never named
in DNS answers nor counted in a region's capacity (georouter/config.py, fleet.py)."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from cdn.report import LoadReport
from cdnlab.simulation import make_config
from cdnlab.status import render_table, rows_from_json
from georouter.config import HealthSettings, Node, Policy, Region, load_config
from georouter.errors import ConfigError
from georouter.fleet import Fleet
from georouter.metrics import RouterMetrics
from tests.test_config import BASE, write

SHIELD_NODE = """
[[nodes]]
name = "shield-1"
region = "na"
ipv4 = "127.0.0.21"
capacity_rps = 100
control_url = "http://127.0.0.21:9080"
role = "shield"
"""


def test_role_defaults_to_edge_and_reads_shield(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE + SHIELD_NODE))
    assert [(n.name, n.role) for n in cfg.nodes] == [("edge-1", "edge"), ("shield-1", "shield")]


def test_a_bad_role_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, BASE + SHIELD_NODE.replace('"shield"', '"parent"')))
    assert "nodes[1].role: expected edge | shield, got 'parent'" in str(error.value)


def test_a_service_pool_cannot_name_a_shield(tmp_path: Path) -> None:
    text = (BASE + SHIELD_NODE).replace(
        'services = ["cdn"]', '[[zones.services]]\nname = "cdn"\nnodes = ["shield-1"]'
    )
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert "'shield-1' is a shield (role), never named in answers" in str(error.value)


EDGE = Node("edge-na-1", "na", 2000.0, "http://127.0.0.11:9080", IPv4Address("127.0.0.11"))
SHIELD = Node(
    "shield-1", "na", 5000.0, "http://127.0.0.21:9080", IPv4Address("127.0.0.21"), role="shield"
)
CONFIG = make_config(
    (Region("na", 39.8, -98.6),), (EDGE, SHIELD), Policy("na"), HealthSettings(fall=2, rise=1)
)


def test_a_healthy_shield_is_never_eligible_nor_capacity() -> None:
    fleet = Fleet(CONFIG, lambda _: None)
    for node in (EDGE, SHIELD):
        fleet.apply_probe(node.name, True, 0.1)
        fleet.apply_report(LoadReport(node.name, 1, "up", 3, 400.0, 2000.0, 0.1, 0.9), 0.2)
    assert fleet.statuses["shield-1"].state == "up"  # probed and shown
    pool = fleet.snapshot.pools[4]["na"]
    assert {c.node.name for c in pool.eligible} == {"edge-na-1"}  # never answered
    metrics = RouterMetrics()
    metrics.set_capacities(CONFIG.nodes)
    capacity = metrics.registry.get_sample_value
    assert capacity("georouter_node_capacity_rps", {"region": "na", "node": "edge-na-1"}) == 2000
    assert capacity("georouter_node_capacity_rps", {"region": "na", "node": "shield-1"}) is None


def test_status_table_shows_the_role() -> None:
    body = {"nodes": [{"name": "shield-1", "region": "eu", "state": "up", "role": "shield"},
                      {"name": "edge-eu-1", "region": "eu", "state": "up"}]}  # fmt: skip
    table = render_table(rows_from_json(body, {}), "12:00:00")
    assert table.splitlines()[1].split()[-1] == "role"
    assert table.splitlines()[2].split()[-1] == "shield"
    assert table.splitlines()[3].split()[-1] == "edge"
