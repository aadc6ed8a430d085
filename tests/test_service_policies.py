"""Per-service policies and health-derived TTL: config, selector, responder, end to end."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Literal

import dns.asyncquery
import dns.edns
import dns.message
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdnlab.loopback import SUBNETS, Cdn, poll, start_cdn
from cdnlab.simulation import make_config
from georouter.config import DEFAULT_CONFIG, Policy, RouterConfig, ServicePolicy, load_config
from georouter.errors import ConfigError
from georouter.fleet import Fleet
from georouter.geo import Placement
from georouter.metrics import RouterMetrics
from georouter.responder import Responder
from georouter.selector import Selector
from georouter.tallies import HotPathTallies
from tests.test_config import BASE, edited, write
from tests.test_responder import CLIENT, FakePlacer, ask
from tests.test_selector import NODES, REGIONS, load, up

EXTRA_NODES = """
[[nodes]]
name = "edge-2"
region = "eu"
ipv4 = "127.0.0.12"
capacity_rps = 100
control_url = "http://127.0.0.12:9080"
"""


def tables(*entries: str) -> str:
    """BASE with its `services` list replaced by [[zones.services]] tables, and an eu node."""
    body = "".join(f"\n[[zones.services]]\n{entry}\n" for entry in entries)
    return edited('services = ["cdn"]\n', body) + EXTRA_NODES


# ---- config ---------------------------------------------------------------------------------


def test_plain_list_and_tables_load_alike(tmp_path: Path) -> None:
    plain = load_config(write(tmp_path, BASE + EXTRA_NODES))
    table = load_config(write(tmp_path, tables('name = "cdn"')))
    assert plain.services == table.services == (ServicePolicy("cdn.example.com."),)
    assert plain.zones[0].services == table.zones[0].services == ("cdn.example.com.",)


def test_service_tables_load_every_key(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            tables(
                'name = "cdn"',
                'name = "chat"\nnodes = ["edge-1"]\nttl = 30\ndegraded_ttl = 3\n'
                'all_down = "servfail"\nmax_spill_regions = 1',
                'name = "img.example.com."\nregions = ["eu"]',
            ),
        )
    )
    cdn, chat, img = config.services
    assert cdn == ServicePolicy("cdn.example.com.")
    assert chat == ServicePolicy("chat.example.com.", frozenset({"edge-1"}), 30, 3, "servfail", 1)
    assert (img.name, img.nodes, img.label) == ("img.example.com.", {"edge-2"}, "img.example.com")
    assert (config.policy.answer_ttl, config.policy.degraded_ttl) == (20, 5)


def test_policy_degraded_ttl_is_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, edited("[policy]\n", "[policy]\ndegraded_ttl = 2\n")))
    assert config.policy.degraded_ttl == 2


# fmt: off
SERVICE_CASES = [
    ("mixed_list", edited('services = ["cdn"]', 'services = ["cdn", {name = "chat"}]'),
     "zones[0].services[1]", "not a mix"),
    ("mixed_table_first", edited('services = ["cdn"]', 'services = [{name = "chat"}, "cdn"]'),
     "zones[0].services[1]", "not a mix"),
    ("unknown_node", tables('name = "chat"\nnodes = ["edge-9"]'),
     "zones[0].services[0].nodes[0]", "unknown node 'edge-9'"),
    ("unknown_region", tables('name = "chat"\nregions = ["apac"]'),
     "zones[0].services[0].regions[0]", "unknown region 'apac' (known: ap, eu, na)"),
    ("nodes_and_regions", tables('name = "chat"\nnodes = ["edge-1"]\nregions = ["eu"]'),
     "zones[0].services[0].regions", "give nodes or regions, not both"),
    ("empty_pool", tables('name = "chat"\nnodes = []'),
     "zones[0].services[0].nodes", "expected at least one"),
    ("region_without_nodes", tables('name = "chat"\nregions = ["ap"]'),
     "zones[0].services[0].regions", "expected at least one"),
    ("bad_all_down", tables('name = "chat"\nall_down = "panic"'),
     "zones[0].services[0].all_down", "expected 'fail-open' or 'servfail'"),
    ("negative_ttl", tables('name = "chat"\nttl = -1'),
     "zones[0].services[0].ttl", "expected an integer in 0..2147483647"),
    ("spill_beyond_regions", tables('name = "chat"\nmax_spill_regions = 3'),
     "zones[0].services[0].max_spill_regions", "expected an integer in 0..2"),
    ("duplicate", tables('name = "chat"', 'name = "chat.example.com."'),
     "zones[0].services[1].name", "service chat.example.com. listed twice"),
    ("missing_name", tables('ttl = 5'), "zones[0].services[0].name", "required key missing"),
    ("outside_zone", tables('name = "chat.example.net."'),
     "zones[0].services[0].name", "not inside the zone"),
    ("typo", tables('name = "chat"\nttll = 5'),
     "zones[0].services[0].ttll", "unknown key (did you mean 'ttl'?)"),
    ("policy_degraded_ttl", edited("[policy]\n", "[policy]\ndegraded_ttl = -5\n"),
     "policy.degraded_ttl", "expected an integer in 0..2147483647"),
]
# fmt: on


@pytest.mark.parametrize(
    ("text", "key", "expectation"),
    [c[1:] for c in SERVICE_CASES],
    ids=[c[0] for c in SERVICE_CASES],
)
def test_service_defect_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, key: str, expectation: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.source, caught.value.key) == (str(path), key)
    assert expectation in caught.value.message
    assert "\n" not in str(caught.value)


# ---- selector -------------------------------------------------------------------------------

CHAT = ServicePolicy("chat.example.com.", nodes=frozenset({"na-1", "eu-1"}))


def setup(*services: ServicePolicy, policy: Policy | None = None) -> tuple[Fleet, Selector]:
    cfg = make_config(REGIONS, NODES, policy or Policy("na", answers_per_response=2))
    selector = Selector(cfg.policy, cfg.regions, random.Random(3), services)
    fleet = Fleet(cfg, selector.update)
    up(fleet)
    return fleet, selector


def down(fleet: Fleet, *names: str) -> None:
    for name in names:
        for _ in range(2):  # health.fall
            fleet.apply_probe(name, False, 1.0)


def test_service_pool_never_names_other_nodes() -> None:
    _, selector = setup(CHAT)
    for region in ("na", "eu", "ap"):
        for _ in range(50):
            decision = selector.pick(region, 4, CHAT.name)
            assert {n.name for n in decision.nodes} <= {"na-1", "eu-1"}
    # ap has no chat node: served from the first region of its failover order, as home.
    ap = selector.pick("ap", 4, CHAT.name)
    assert (ap.region, [n.name for n in ap.nodes], ap.reason, ap.ttl) == ("eu", ["eu-1"], "geo", 20)
    # Other names keep the whole region.
    assert {n.name for n in selector.pick("eu", 4, "cdn.example.com.").nodes} == {"eu-1", "eu-2"}


def test_service_pool_fails_over_within_the_pool() -> None:
    fleet, selector = setup(CHAT)
    down(fleet, "eu-1")  # eu-2 is up, but not in the chat pool
    decision = selector.pick("eu", 4, CHAT.name)
    assert ([n.name for n in decision.nodes], decision.reason) == (["na-1"], "failover")


def test_ttl_by_decision_reason_and_region_state() -> None:
    fleet, selector = setup()
    healthy = selector.pick("eu", 4)
    assert (healthy.reason, healthy.ttl) == ("geo", 20)
    down(fleet, "eu-2")  # eu degraded: one of its nodes is down
    degraded = selector.pick("eu", 4)
    assert (degraded.reason, [n.name for n in degraded.nodes], degraded.ttl) == (
        "geo",
        ["eu-1"],
        5,
    )
    assert selector.pick("na", 4).ttl == 20  # other regions are not affected
    down(fleet, "eu-1")
    failover = selector.pick("eu", 4)
    assert (failover.region, failover.reason, failover.ttl) == ("na", "failover", 5)
    up(fleet, "eu-1", "eu-2")
    up(fleet, "eu-1", "eu-2")  # health.rise
    back = selector.pick("eu", 4)
    assert (back.region, back.reason, back.ttl) == ("eu", "geo", 20)


def test_spillover_and_fail_open_answers_are_short() -> None:
    fleet, selector = setup()
    load(fleet, "eu-1", 0.95)
    load(fleet, "eu-2", 0.95)
    spill = selector.pick("eu", 4)
    assert (spill.reason, spill.ttl) == ("spillover", 5)
    down(fleet, *(n.name for n in NODES))
    everything = selector.pick("eu", 4)
    assert (everything.reason, everything.ttl) == ("fail_open", 5)


def test_service_ttls_override_the_policy_and_short_never_exceeds_normal() -> None:
    chat = replace(CHAT, ttl=60, degraded_ttl=10)
    tiny = ServicePolicy("tiny.example.com.", ttl=3)  # degraded_ttl 5 from [policy]: cut to 3
    fleet, selector = setup(chat, tiny)
    assert selector.pick("eu", 4, chat.name).ttl == 60
    assert selector.pick("eu", 4, tiny.name).ttl == 3
    down(fleet, "eu-1")
    assert (selector.pick("eu", 4, chat.name).reason, selector.pick("eu", 4, chat.name).ttl) == (
        "failover",
        10,
    )
    assert selector.pick("eu", 4, tiny.name).ttl == 3


def test_max_spill_regions_limits_how_far_clients_go() -> None:
    stay = ServicePolicy("stay.example.com.", max_spill_regions=0)
    near = ServicePolicy("near.example.com.", max_spill_regions=1, all_down="servfail")
    fleet, selector = setup(stay, near)
    down(fleet, "eu-1", "eu-2")
    assert selector.pick("eu", 4, stay.name).reason == "fail_open"  # eu's own nodes
    assert {n.region for n in selector.pick("eu", 4, stay.name).nodes} == {"eu"}
    assert selector.pick("eu", 4, near.name).region == "na"  # eu's first failover region
    down(fleet, "na-1", "na-2", "na-3")
    assert selector.pick("eu", 4, near.name).reason == "fail_closed"  # ap is too far
    assert selector.pick("eu", 4).region == "ap"  # the default has no limit


# ---- responder: the answer cache follows the TTL ---------------------------------------------


def shipped(answers: int = 1) -> RouterConfig:
    config = load_config(DEFAULT_CONFIG)
    return replace(config, policy=replace(config.policy, answers_per_response=answers))


def answer(responder: Responder, name: str = "cdn.example.com") -> tuple[frozenset[str], int]:
    response = ask(responder, dns.message.make_query(name, "A"))
    rrset = next(r for r in response.answer if r.rdtype == dns.rdatatype.A)
    return frozenset(rr.address for rr in rrset), rrset.ttl


def test_cached_answer_gets_the_normal_ttl_back_after_recovery() -> None:
    # One address per answer: "edge-na-2 alone" is the same node list whether na is
    # degraded (edge-na-1 down) or healthy again, so only the TTL tells them apart, and a
    # cache keyed by node list alone would keep serving the short TTL after recovery.
    config = shipped()
    selector = Selector(config.policy, config.regions, random.Random(5), config.services)
    fleet = Fleet(config, selector.update)
    responder = Responder(config, FakePlacer(), selector, HotPathTallies())
    up(fleet, *(n.name for n in config.nodes))
    na2 = str(next(n.ipv4 for n in config.nodes if n.name == "edge-na-2"))
    down(fleet, "edge-na-1")
    assert answer(responder) == ({na2}, 5)
    up(fleet, "edge-na-1")
    up(fleet, "edge-na-1")  # health.rise
    seen = {answer(responder) for _ in range(200)}
    assert (frozenset({na2}), 20) in seen and all(ttl == 20 for _, ttl in seen)


def with_chat(text: str, nodes: str = '"edge-eu-1", "edge-na-1"') -> str:
    """The shipped config with a `chat` service on the given nodes only."""
    services = (
        '\n[[zones.services]]\nname = "cdn"\n\n[[zones.services]]\nname = "img"\n'
        f'\n[[zones.services]]\nname = "chat"\nnodes = [{nodes}]\n'
    )
    return re.sub(r"^services = .*$", services, text, count=1, flags=re.M)


def test_service_pool_and_decision_label_in_the_responder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, with_chat(DEFAULT_CONFIG.read_text())))
    metrics = RouterMetrics()
    selector = Selector(config.policy, config.regions, random.Random(5), config.services)
    fleet = Fleet(config, selector.update)
    placer = FakePlacer({CLIENT: Placement("ap", 16)})
    responder = Responder(config, placer, selector, metrics.tallies)
    up(fleet, *(n.name for n in config.nodes))
    eu1 = str(next(n.ipv4 for n in config.nodes if n.name == "edge-eu-1"))
    # ap has no chat node: its first failover region, eu, answers as home.
    assert {answer(responder, "chat.example.com") for _ in range(20)} == {(frozenset({eu1}), 20)}
    assert metrics.tallies.decisions == {("chat.example.com", "geo"): 20}


# ---- end to end: the real router and edges ---------------------------------------------------


async def ask_ttl(cdn: Cdn, subnet: str, name: str) -> tuple[set[str], int]:
    ecs = dns.edns.ECSOption.from_text(subnet)
    query = dns.message.make_query(name, "A", use_edns=0, options=[ecs])
    response = await dns.asyncquery.udp(query, cdn.dns.host, port=cdn.dns.port, timeout=2.0)
    rrset = next(r for r in response.answer if r.rdtype == dns.rdatatype.A)
    return {rr.address for rr in rrset}, rrset.ttl


@pytest.mark.timeout(90)
async def test_e2e_service_pool_and_health_derived_ttl(tmp_path: Path) -> None:
    async with start_cdn(tmp_path, edit=with_chat) as cdn:
        eu, na = cdn.ips("eu"), cdn.ips("na")
        chat_nodes = {cdn.ip("edge-eu-1"), cdn.ip("edge-na-1")}
        for subnet in SUBNETS.values():
            for _ in range(10):
                ips, _ = await ask_ttl(cdn, subnet, "chat.example.com")
                assert ips and ips <= chat_nodes
        assert await ask_ttl(cdn, SUBNETS["eu"], "cdn.example.com") == (eu, 20)

        for node in ("edge-eu-1", "edge-eu-2"):
            cdn.supervisor.kill(cdn.child(node))
        failover = await poll(
            lambda: ask_ttl(cdn, SUBNETS["eu"], "cdn.example.com"),
            lambda got: got[0] <= na,
            10,
            "eu fails over to na",
        )
        assert failover[1] == 5  # a failover answer: policy.degraded_ttl
        chat = await ask_ttl(cdn, SUBNETS["eu"], "chat.example.com")
        assert chat == ({cdn.ip("edge-na-1")}, 5)

        await cdn.restart_edge("edge-eu-1")
        await cdn.restart_edge("edge-eu-2")
        back = await poll(
            lambda: ask_ttl(cdn, SUBNETS["eu"], "cdn.example.com"),
            lambda got: got[0] == eu,
            15,
            "eu answers again",
        )
        assert back[1] == 20


# ---- property: a pool is never left, and the TTL follows the reason -------------------------

NODE_NAMES = [n.name for n in NODES]
STATES = st.sampled_from(["up", "down", "saturated", "unknown"])


@settings(max_examples=150, deadline=None)
@given(
    pool=st.sets(st.sampled_from(NODE_NAMES), min_size=1),
    states=st.lists(STATES, min_size=len(NODES), max_size=len(NODES)),
    spill=st.one_of(st.none(), st.integers(0, 2)),
    region=st.sampled_from(["na", "eu", "ap"]),
    family=st.sampled_from([4, 6]),
)
def test_pick_stays_in_the_pool_and_ttl_follows_reason(
    pool: set[str], states: list[str], spill: int | None, region: str, family: Literal[4, 6]
) -> None:
    service = ServicePolicy("s.example.com.", frozenset(pool), max_spill_regions=spill)
    cfg = make_config(REGIONS, NODES, Policy("na"))
    selector = Selector(cfg.policy, cfg.regions, random.Random(1), (service,))
    fleet = Fleet(cfg, selector.update)
    for name, state in zip(NODE_NAMES, states, strict=True):
        if state != "unknown":
            fleet.apply_probe(name, True, 0.0)
        if state == "down":
            down(fleet, name)
        if state == "saturated":
            load(fleet, name, 0.99)
    decision = selector.pick(region, family, service.name)
    assert {n.name for n in decision.nodes} <= pool
    if decision.reason in ("spillover", "failover", "fail_open"):
        assert decision.ttl == 5
    elif decision.nodes:
        region_pool = fleet.snapshot.pool(decision.region, family)
        degraded = any(n.name in pool for n in region_pool.down)
        assert decision.ttl == (5 if degraded else 20)
