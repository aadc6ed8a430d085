"""Per-client rate limits: the token buckets and the client address (pure), and 429 with
Retry-After from the real edge, with X-Forwarded-For honoured only from a trusted tier."""

from __future__ import annotations

import ipaddress

import aiohttp
from hypothesis import given
from hypothesis import strategies as st

from edge.armour import ArmourSettings
from edge.ratelimit import RateLimiter, RateSettings, TokenBuckets, client_address, retry_after
from tests.origin_app import ScriptedOrigin, get, metric, running_edge

pytest_plugins = ("tests.edge_fixtures",)

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def test_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3.0)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 0.0) == 0.5
    assert buckets.take("b", 0.0) == 0.0  # another client has its own bucket
    assert buckets.take("a", 0.5) == 0.0  # refilled at the rate


@given(st.lists(st.floats(0, 0.01), min_size=1, max_size=200))
def test_bucket_never_allows_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    buckets, now, allowed = TokenBuckets(rate=100.0, burst=5.0), 0.0, 0
    for gap in gaps:
        now += gap
        allowed += buckets.take("k", now) == 0.0
    assert allowed <= 5 + 100.0 * now + 1e-6


def test_buckets_track_a_bounded_number_of_clients() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1.0, max_tracked=10)
    for i in range(1000):
        buckets.take(i, 0.0)
    assert len(buckets._buckets) <= 10


def test_prefix_bucket_groups_a_slash_24_and_a_slash_56() -> None:
    limiter = RateLimiter(RateSettings(per_prefix_rps=1.0, per_prefix_burst=1.0))
    assert limiter.check(ipaddress.ip_address("192.0.2.1"), 0.0) is None
    assert limiter.check(ipaddress.ip_address("192.0.2.200"), 0.0) == ("prefix", 1.0)
    assert limiter.check(ipaddress.ip_address("192.0.3.1"), 0.0) is None
    assert limiter.check(ipaddress.ip_address("2001:db8:0:1::1"), 0.0) is None
    assert limiter.check(ipaddress.ip_address("2001:db8:0:ff::2"), 0.0) is not None
    assert retry_after(0.01) == "1" and retry_after(2.5) == "3"


def test_forwarded_for_is_honoured_only_from_a_trusted_peer() -> None:
    xff = ["198.51.100.7, 203.0.113.9"]
    assert str(client_address("192.0.2.1", xff, LOOPBACK)) == "192.0.2.1"
    assert str(client_address("127.0.0.5", xff, LOOPBACK)) == "203.0.113.9"
    # The right-most untrusted hop: entries a client wrote to the left are not believed.
    assert str(client_address("127.0.0.5", ["6.6.6.6, 127.0.0.9"], LOOPBACK)) == "6.6.6.6"
    assert str(client_address("127.0.0.5", ["garbage"], LOOPBACK)) == "127.0.0.5"
    assert str(client_address("127.0.0.5", xff, ())) == "127.0.0.5"
    assert client_address("", xff, LOOPBACK) is None


def limited(rps: float, trusted: str | None = None) -> ArmourSettings:
    networks = () if trusted is None else (ipaddress.ip_network(trusted),)
    rate = RateSettings(per_client_rps=rps, per_client_burst=3, trusted_proxies=networks)
    return ArmourSettings(rate=rate)


async def test_client_over_its_rate_gets_429_with_retry_after(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/a", body=b"a", headers={"Cache-Control": "max-age=60"})
    async with running_edge(origin.url, armour=limited(0.01)) as edge:
        statuses = [(await get(client, edge, "/a"))[0] for _ in range(3)]
        status, headers, _ = await get(client, edge, "/a")
        assert statuses == [200, 200, 200] and status == 429
        assert int(headers["Retry-After"]) >= 1
        assert metric(edge.metrics, "edge_rate_limited_total", {"scope": "client"}) == 1


async def test_forwarded_for_from_a_trusted_tier_names_the_client(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/a", body=b"a", headers={"Cache-Control": "max-age=60"})
    async with running_edge(origin.url, armour=limited(0.01, "127.0.0.0/8")) as edge:
        for _ in range(3):
            await get(client, edge, "/a", headers={"X-Forwarded-For": "203.0.113.5"})
        limited_one = await get(client, edge, "/a", headers={"X-Forwarded-For": "203.0.113.5"})
        other = await get(client, edge, "/a", headers={"X-Forwarded-For": "203.0.113.6"})
    assert (limited_one[0], other[0]) == (429, 200)


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/a", body=b"a", headers={"Cache-Control": "max-age=60"})
    async with running_edge(origin.url, armour=limited(0.01, "10.0.0.0/8")) as edge:
        statuses = [
            (await get(client, edge, "/a", headers={"X-Forwarded-For": f"203.0.113.{i}"}))[0]
            for i in range(4)
        ]
    assert statuses == [200, 200, 200, 429]
