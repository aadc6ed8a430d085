"""The scaling benchmark's pure pieces, without running a benchmark: the generated topologies
(each loads with the router's own loader), the ECS query mixes (each parses with dnspython,
RFC 7871 §6), knee detection on curves, the tables and the PNG plots."""

from __future__ import annotations

import ipaddress
import math
import random
import struct
import tempfile
from dataclasses import replace
from pathlib import Path

import dns.edns
import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import scaling
from benchmarks.cdn import TOPOLOGY
from benchmarks.headline import tables_in
from benchmarks.processes import CpuShares
from benchmarks.report import Part, render
from benchmarks.scaling import (
    EdgePoint,
    Plan,
    Results,
    RouterPoint,
    crossed_limits,
    edge_curves,
    edge_table,
    figures,
    prometheus_sum,
    router_curves,
    router_table,
)
from benchmarks.scaling_curves import Curve, plot
from benchmarks.scaling_inputs import (
    EXTRA_COUNTRIES,
    PROBE_INTERVAL_S,
    UNPLACED_OCTETS,
    Shape,
    ecs_queries,
    random_slash24s,
    topology_toml,
    write_mix,
)
from georouter.config import RouterConfig, load_config
from georouter.geo import GEO_CACHE_ENTRIES
from georouter.responder import SHAPE_CACHE_ENTRIES

SHIPPED = load_config(TOPOLOGY)
SHIPPED_TEXT = TOPOLOGY.read_text()
HEALTH_URL = "http://127.0.0.1:9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _shapes(plan: Plan) -> set[Shape]:
    """Every topology a plan measures (as scaling.router_points builds them)."""
    base = Shape(plan.nodes[0], plan.regions[0], plan.overrides[0])
    per_region = base.nodes // base.regions
    shapes = {Shape(n, base.regions, base.overrides) for n in plan.nodes}
    shapes |= {Shape(r * per_region, r, base.overrides) for r in plan.regions}
    return shapes | {Shape(base.nodes, base.regions, o) for o in plan.overrides}


def _load(shape: Shape, tmp_path: Path) -> RouterConfig:
    path = tmp_path / f"{shape.nodes}-{shape.regions}-{shape.overrides}.toml"
    path.write_text(topology_toml(SHIPPED_TEXT, SHIPPED, shape, HEALTH_URL))
    return load_config(path)


@pytest.mark.parametrize(
    "shape", sorted(_shapes(scaling.FULL) | _shapes(scaling.QUICK), key=lambda s: s.label)
)
def test_every_planned_topology_loads_with_the_routers_loader(shape: Shape, tmp_path: Path) -> None:
    config = _load(shape, tmp_path)
    assert (len(config.nodes), len(config.regions), len(config.overrides)) == (
        shape.nodes,
        shape.regions,
        shape.overrides,
    )
    per_region = {r.name: sum(n.region == r.name for n in config.nodes) for r in config.regions}
    assert max(per_region.values()) - min(per_region.values()) <= 1  # spread round-robin
    assert {n.control_url for n in config.nodes} == {HEALTH_URL}
    assert config.health.probe_interval_s == PROBE_INTERVAL_S
    assert all(o.network.prefixlen == 24 and o.network.is_global for o in config.overrides)


def test_the_smallest_topology_is_the_shipped_one(tmp_path: Path) -> None:
    config = _load(Shape(6, 3, 0), tmp_path)
    assert config.zones == SHIPPED.zones and config.policy == SHIPPED.policy
    assert config.regions == SHIPPED.regions
    shipped = {(n.name, n.region, n.capacity_rps) for n in SHIPPED.nodes if n.role == "edge"}
    assert {(n.name, n.region, n.capacity_rps) for n in config.nodes} == shipped
    assert replace(config.health, probe_interval_s=SHIPPED.health.probe_interval_s,
                   probe_timeout_s=SHIPPED.health.probe_timeout_s) == SHIPPED.health  # fmt: skip


def test_added_regions_each_claim_a_country_of_their_own(tmp_path: Path) -> None:
    config = _load(Shape(100, 50, 0), tmp_path)
    added = config.regions[len(SHIPPED.regions) :]
    assert all(region.countries for region in added)
    claimed = [code for region in added for code in region.countries]
    assert sorted(claimed) == sorted(EXTRA_COUNTRIES)


def test_fewer_regions_than_shipped_is_refused() -> None:
    with pytest.raises(ValueError, match="at least the shipped 3 regions"):
        topology_toml(SHIPPED_TEXT, SHIPPED, Shape(2, 2, 0), HEALTH_URL)


@settings(max_examples=15, deadline=None)
@given(
    nodes=st.integers(1, 40),
    regions=st.integers(3, 70),
    overrides=st.integers(0, 40),
)
def test_any_small_shape_loads(nodes: int, regions: int, overrides: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        config = _load(Shape(nodes, regions, overrides), Path(scratch))
    assert (len(config.nodes), len(config.regions), len(config.overrides)) == (
        nodes,
        regions,
        overrides,
    )


@settings(max_examples=30)
@given(count=st.integers(0, 3000), seed=st.integers(0, 2**32))
def test_random_slash24s_are_distinct_and_public(count: int, seed: int) -> None:
    prefixes = random_slash24s(count, random.Random(seed))
    assert len(prefixes) == len(set(prefixes)) == count
    assert all(0 <= p < 2**24 and p >> 16 not in UNPLACED_OCTETS for p in prefixes)


def _frames(path: Path) -> list[bytes]:
    data, messages, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("!H", data, offset)
        messages.append(data[offset + 2 : offset + 2 + length])
        offset += 2 + length
    return messages


def _ecs(wire: bytes) -> tuple[str, ipaddress.IPv4Network, int]:
    message = dns.message.from_wire(wire)
    (option,) = [o for o in message.options if isinstance(o, dns.edns.ECSOption)]
    network = ipaddress.IPv4Network(f"{option.address}/{option.srclen}")
    return message.question[0].name.to_text(), network, message.flags


def test_a_mix_file_cycles_its_subnets_as_ecs_queries_rfc7871_6(tmp_path: Path) -> None:
    subnets = random_slash24s(7, random.Random(1))
    path = tmp_path / "mix.bin"
    write_mix(path, "cdn.example.com.", subnets, 20)
    messages = _frames(path)
    assert len(messages) == 20
    for index, wire in enumerate(messages):
        name, network, flags = _ecs(wire)
        assert name == "cdn.example.com."
        assert network == ipaddress.IPv4Network((subnets[index % 7] << 8, 24))
        assert flags == 0  # no RD: an authoritative server is asked as a resolver asks it
    assert [_ecs(w)[1] for w in ecs_queries("cdn.example.com.", subnets)] == [
        _ecs(w)[1] for w in messages[:7]
    ]


def _curve(ys: tuple[float, ...], higher_is_better: bool = True) -> Curve:
    xs = tuple(float(10**i) for i in range(len(ys)))
    return Curve("t", "items", "q/s", xs, ys, higher_is_better, "why")


@pytest.mark.parametrize(
    ("ys", "higher_is_better", "knee"),
    [
        ((100.0, 90.0, 60.0), True, 2),  # -10 %, then -33 %
        ((100.0, 79.0, 78.0), True, 1),
        ((100.0, 85.0, 70.0), True, None),  # -15 %, -17.6 %: a slope, no knee
        ((100.0, 150.0, 200.0), True, None),  # better and better
        ((10.0, 11.0, 20.0), False, 2),  # a cost: +10 %, then +82 %
        ((10.0, 8.0, 6.0), False, None),
        ((100.0, math.nan, 10.0), True, None),  # a missing point compares with nothing
        ((0.0, 50.0, 10.0), True, 2),
    ],
)
def test_the_knee_is_the_first_step_more_than_a_fifth_worse(
    ys: tuple[float, ...], higher_is_better: bool, knee: int | None
) -> None:
    assert _curve(ys, higher_is_better).knee() == knee


def test_a_knee_sentence_names_the_point_the_drop_and_the_evidence() -> None:
    curve = replace(_curve((1000.0, 900.0, 300.0)), evidence=("CPU µs/query", (10.0, 11.0, 35.0)))
    sentence = curve.knee_sentence()
    assert "knee at 100 items" in sentence and "drops 67 %" in sentence
    assert "900 at 10 to 300" in sentence and "CPU µs/query 11 to 35" in sentence
    assert sentence.endswith("why")
    assert "no knee" in _curve((1000.0, 900.0)).knee_sentence()


def test_the_limits_a_wider_mix_crosses_are_the_routers_caches() -> None:
    assert crossed_limits(1000, 10_000) == [f"the query-shape cache ({SHAPE_CACHE_ENTRIES:,})"]
    assert crossed_limits(10_000, 100_000) == [f"the GeoIP cache ({GEO_CACHE_ENTRIES:,})"]
    assert crossed_limits(100, 1000) == []


def test_prometheus_sum_adds_the_samples_with_the_labels() -> None:
    text = (
        'edge_requests_total{cache="hit",code="200"} 7.0\n'
        'edge_requests_total{cache="miss",code="200"} 2.0\n'
        'edge_requests_created{cache="hit",code="200"} 1.7e9\n'
        "edge_cache_objects 5.0\n"
    )
    assert prometheus_sum(text, "edge_requests") == 9.0
    assert prometheus_sum(text, "edge_requests", 'cache="hit"') == 7.0
    assert prometheus_sum(text, "edge_cache_objects") == 5.0


CPU = CpuShares(server=80.0, tool=60.0, others=5.0, stolen=0.0)


def _router_points() -> list[RouterPoint]:
    def point(dimension: str, shape: Shape, clients: int, qps: float) -> RouterPoint:
        return RouterPoint(dimension, shape, clients, qps, 0, CPU, 90 * 2**20, 1.0, 0.5, 2.0)

    base = Shape(6, 3, 0)
    return [
        point("nodes", base, 100, 60_000.0),
        point("nodes", Shape(600, 3, 0), 100, 6_000.0),
        point("clients", base, 100, 60_000.0),
        point("clients", base, 10_000, 30_000.0),
    ]


def _edge_points() -> list[EdgePoint]:
    return [
        EdgePoint(1000, 1000, 1.0, False, 60 * 2**20, 40 * 2**20, 9000.0, 5.0, 1.0, 0, CPU),
        EdgePoint(10_000, 9000, 8.0, True, 80 * 2**20, 40 * 2**20, 5000.0, 9.0, 1.0, 0, CPU),
    ]


def test_tables_render_and_read_back(tmp_path: Path) -> None:
    router = router_table(_router_points(), scaling.FULL)
    edge = edge_table(_edge_points(), 5.0, 200.0)
    assert len(router.rows) == 4 and router.rows[1][6] == "6,000"
    assert edge.rows[1][1] == "9,000 (budget)"
    assert edge.rows[0][9] == f"{20 * 2**20 / 1000:,.0f}"  # B/object: RSS growth / objects
    text = render([Part("How cost grows", "", [router, edge])], [], router, "", "")
    assert [t.title for t in tables_in(text)][-2:] == [router.title, edge.title]


def test_curves_name_the_knees_of_both_programs() -> None:
    curves = router_curves(_router_points()) + edge_curves(_edge_points())
    knees = {curve.title: curve.knee() for curve in curves}
    assert knees["router q/s vs nodes"] == 1
    assert knees["router q/s vs /24s"] == 1
    assert knees["edge hits/s vs objects stored"] == 1
    clients = next(c for c in curves if c.title == "router q/s vs /24s")
    assert "outgrows the query-shape cache" in clients.knee_sentence()


def test_a_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "img" / "curves.png"
    plot(path, [_curve((5.0, 4.0, 1.0)), _curve((1.0, 2.0, 9.0), False)], 2, "title")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_figures_are_written_next_to_the_page_and_linked(tmp_path: Path) -> None:
    results = Results(router=_router_points(), edge=_edge_points())
    lines = figures(results, tmp_path / "img")
    assert lines == [
        "![georouter: cost as the work grows](img/scaling-router.png)",
        "![edge: cache hits as the cache fills](img/scaling-edge.png)",
    ]
    for name in ("scaling-router.png", "scaling-edge.png"):
        assert (tmp_path / "img" / name).read_bytes().startswith(PNG_SIGNATURE)
    intro = scaling.intro(results, lines)
    assert "Knees in this run" in intro and "knee at 600 nodes" in intro


def test_a_router_not_up_within_its_start_budget_is_shown_so() -> None:
    late = replace(_router_points()[1], qps=math.nan, cpu=scaling.NO_CPU, start_s=math.inf)
    row = router_table([_router_points()[0], late], scaling.FULL).rows[1]
    assert row[5] == f"> {scaling.FULL.start_budget_s:g}" and row[6] == "n/a"
    assert row[-1] == "not up within the start budget"
    start = next(c for c in router_curves([_router_points()[0], late]) if "start" in c.title)
    assert start.knee() == 1  # never up is the worst a start can be


def test_a_plot_leaves_out_points_that_were_not_measured(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    curve = Curve("t", "overrides", "s", (0.0, 100.0, 10_000.0), (1.0, math.nan, math.inf), False)
    plot(path, [curve], 1, "title")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
