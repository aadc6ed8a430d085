"""The shield tier's pure core: rendezvous hashing of cache keys over parents, and their
passive health (edge/parents.py); CDN-Loop identifiers (RFC 8586, edge/cdn_loop.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.cdn_loop import from_our_cdn, loop_id, names, with_loop_id
from edge.cli import _parser as edge_parser
from edge.cli import config_from_args
from edge.config import PARENT_FAIL_AFTER, PARENT_RETRY_S, load_config
from edge.errors import ConfigError
from edge.parents import ParentHealth, rank, weight
from edge.upstream import parent_failure

PARENTS = st.lists(
    st.from_regex(r"http://127\.0\.0\.[0-9]{1,3}:[0-9]{2,5}", fullmatch=True),
    min_size=1,
    max_size=6,
    unique=True,
)
KEYS = st.text(min_size=1, max_size=60)


@given(PARENTS, KEYS)
def test_each_key_maps_to_one_parent_whatever_the_order(parents: list[str], key: str) -> None:
    ranking = rank(parents, key)
    assert sorted(ranking) == sorted(parents)  # a permutation: each parent once
    assert rank(list(reversed(parents)), key) == ranking  # every edge agrees


@given(PARENTS, st.lists(KEYS, min_size=1, max_size=30), st.data())
def test_removing_a_parent_moves_only_its_keys(
    parents: list[str], keys: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(parents))
    rest = [p for p in parents if p != gone]
    for key in keys:
        home = rank(parents, key)[0]
        if home != gone:
            assert rank(rest, key)[0] == home
        elif rest:
            assert rank(rest, key)[0] == rank(parents, key)[1]  # its failover parent


@given(PARENTS, KEYS, st.data())
def test_candidates_follow_the_failover_order(
    parents: list[str], key: str, data: st.DataObject
) -> None:
    health = ParentHealth(parents, fail_after=1, retry_s=10)
    down = data.draw(st.sets(st.sampled_from(parents), max_size=len(parents) - 1))
    for parent in down:
        health.failed(parent, now=0.0)
    # The healthy parents in their rendezvous order: the order a failing fetch walks.
    assert health.candidates(key, now=1.0) == [p for p in rank(parents, key) if p not in down]


def test_weight_is_stable_across_processes() -> None:
    # blake2b, not the per-process salted hash(): a fixed value every run and every edge.
    assert weight("http://127.0.0.21:8080", "img.example.com/a.jpg") == weight(
        "http://127.0.0.21:8080", "img.example.com/a.jpg"
    )
    assert weight("http://127.0.0.21:8080", "/x") == 6350488023850510645


def test_down_after_consecutive_failures_then_retried() -> None:
    a, b = "http://127.0.0.21:8080", "http://127.0.0.22:8080"
    health = ParentHealth([a, b], fail_after=3, retry_s=10)
    assert health.failed(a, now=0) is None
    assert health.succeeded(a) is None  # a success resets the count
    assert [health.failed(a, now=t) for t in (1, 2, 3)] == [None, None, "down"]
    assert not health.is_up(a)
    assert health.candidates("k", now=12.9) == [b]
    assert a in health.candidates("k", now=13.0)  # retry_s after it went down
    assert health.failed(a, now=13.0) is None  # the retry failed: another period
    assert health.candidates("k", now=22.9) == [b]
    assert health.succeeded(a) == "up" and health.is_up(a)
    assert sorted(health.candidates("k", now=23)) == [a, b]


@given(st.lists(st.floats(min_value=0, max_value=9.99), min_size=1, max_size=20))
def test_a_parent_due_for_a_retry_is_handed_to_one_fetch_per_period(offsets: list[float]) -> None:
    # Half-open: fetches while the probe is out go elsewhere, not to a blackholed shield.
    a, b = "http://127.0.0.21:8080", "http://127.0.0.22:8080"
    health = ParentHealth([a, b], fail_after=1, retry_s=10)
    assert health.failed(a, now=0) == "down"
    probes = [t for t in sorted(offsets) if a in health.candidates("k", now=10 + t)]
    assert probes == [min(offsets)]
    assert a in health.candidates("k", now=30)  # the probe never answered: due again


def test_every_parent_down_goes_direct_or_offers_them_all() -> None:
    parents = ["http://127.0.0.21:8080", "http://127.0.0.22:8080"]
    direct = ParentHealth(parents, fail_after=1, retry_s=10)
    only = ParentHealth(parents, fail_after=1, retry_s=10, go_direct=False)
    for health in (direct, only):
        for parent in parents:
            assert health.failed(parent, now=0) == "down"
    assert direct.candidates("k", now=1) == []  # the origin, at once
    assert only.candidates("k", now=1) == rank(parents, "k")


def test_cdn_loop_identifier_and_detection_rfc8586_2() -> None:
    assert loop_id("edge-eu-1") == "georouter-edge-eu-1"
    assert loop_id("edge eu/1") == "georouter-edge_eu_1"  # a token (RFC 9110 §5.6.2)
    lines = ["foo.example.net:8080; x=1", " GeoRouter-Shield-1 ,other"]
    assert names(lines, loop_id("shield-1"))
    assert not names(lines, loop_id("shield-2"))
    assert not names(["georouter-edge-eu-10"], loop_id("edge-eu-1"))
    assert from_our_cdn(lines) and not from_our_cdn(["foo.example.net"]) and not from_our_cdn([])
    assert with_loop_id([], "georouter-a") == "georouter-a"
    assert with_loop_id(["x, y", ""], "georouter-a") == "x, y, georouter-a"


EDGE = """
[edge]
name = "edge-eu-1"
origin = "http://127.0.0.1:8000"
"""


def test_parent_settings_load_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(EDGE)
    parents = load_config(path).parents
    assert (parents.urls, parents.fail_after, parents.retry_s, parents.go_direct) == (
        (), PARENT_FAIL_AFTER, PARENT_RETRY_S, True,
    )  # fmt: skip
    path.write_text(
        EDGE + 'parents = ["http://127.0.0.21:8080/", "http://127.0.0.22:8080"]\n'
        "parent_fail_after = 5\nparent_retry_s = 2.5\ngo_direct = false\n"
    )
    parents = load_config(path).parents
    assert parents.urls == ("http://127.0.0.21:8080", "http://127.0.0.22:8080")
    assert (parents.fail_after, parents.retry_s, parents.go_direct) == (5, 2.5, False)


def test_parent_flags_repeat() -> None:
    args = edge_parser().parse_args(
        ["serve", "--name", "e", "--origin", "http://127.0.0.1:1",
         "--parent", "http://127.0.0.21:8080", "--parent", "http://127.0.0.22:8080"]
    )  # fmt: skip
    assert config_from_args(args).parents.urls == (
        "http://127.0.0.21:8080", "http://127.0.0.22:8080",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('parents = ["https://127.0.0.21:8443"]', "edge.parents[0]: expected an http://"),
        ('parents = ["http://127.0.0.21:8080/s"]', "edge.parents[0]: expected a content URL"),
        ('parents = ["http://a:1", "http://a:1"]', "edge.parents[1]: http://a:1 is listed twice"),
        ('parents = ["http://a:1", "http://A:1"]', "edge.parents[1]: http://a:1 is listed twice"),
        ('parents = ["http://u@127.0.0.21:8080"]', "edge.parents[0]: expected a content URL"),
        ("parent_fail_after = 0", "edge.parent_fail_after: expected an integer in 1..1000"),
        ("parent_retry_s = 0", "edge.parent_retry_s: expected a number in (0"),
        ('go_direct = "yes"', "edge.go_direct: expected"),
    ],
)  # fmt: skip
def test_bad_parent_settings_are_one_line(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(EDGE + extra + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"edge.toml: {message}") and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("status", "cache_status", "failed"),
    [
        (502, None, True),  # no cache member at all: a load balancer's, or a dead shield's
        (504, "shield-1; fwd=miss; detail=origin-timeout", True),  # the shield's own
        (503, "shield-1; fwd=uri-miss; fwd-status=503", False),  # the origin's, relayed
        (503, "origin-cache; hit, shield-1; fwd=miss; detail=origin-connect", True),
        (500, None, False),  # not a proxy's failure: the origin's word
        (200, None, False),
    ],
)
def test_only_a_parents_own_502_503_504_fails_it_rfc9110_15_6_rfc9211_2_3(
    status: int, cache_status: str | None, failed: bool
) -> None:
    headers = CIMultiDict({"Cache-Status": cache_status} if cache_status else {})
    assert parent_failure(status, headers) is failed
