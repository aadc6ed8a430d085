"""A bounded synthetic workload: clients in several countries resolve, then fetch.

Each request picks a client (an ECS subnet the embedded GeoLite2 places in a known country)
and an object by Zipf-like popularity, asks the router for the service name with that
client's subnet (RFC 7871), and fetches the object from the first address answered. Like a
stub resolver, a client reuses an answer for a while and forgets it when a fetch fails. The
run is paced to LOAD_RATE_RPS and stops by itself after LOAD_DURATION_S seconds or
LOAD_MAX_REQUESTS requests, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp
import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rdatatype

from cdn.config import HostPort

LOAD_DURATION_S = 60.0
LOAD_MAX_REQUESTS = 20_000
LOAD_CONCURRENCY = 8
LOAD_RATE_RPS = 250.0  # paced, so the load lasts long enough for dashboards to show it
LOAD_SEED = 7
ZIPF_EXPONENT = 1.1  # web object popularity is roughly Zipf with s near 1
ANSWER_REUSE_S = 5.0  # a client re-resolves this often (shorter than the answer TTL)
DNS_TIMEOUT_S = 1.0
FETCH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Client:
    country: str  # ISO 3166-1 alpha-2, as the embedded GeoLite2-City (2018) places the subnet
    subnet: str


# Checked with `georouter locate` (and by tests/test_demo_e2e.py) against the embedded database.
CLIENTS: tuple[Client, ...] = (
    Client("IE", "185.60.216.0/24"),
    Client("GB", "212.58.224.0/24"),
    Client("NL", "91.198.174.0/24"),
    Client("ZA", "41.0.0.0/24"),
    Client("US", "8.8.8.0/24"),
    Client("BR", "200.160.0.0/24"),
    Client("JP", "1.0.16.0/24"),
    Client("AU", "1.1.1.0/24"),
    Client("VN", "103.1.200.0/24"),
)

# Most popular first: small images and the feed are hot, the big hero image is the long tail.
OBJECTS: tuple[str, ...] = (
    "/img/thumb-1.png",
    "/api/posts",
    "/img/cat.jpg",
    "/static/app.v3.css",
    "/static/app.v3.js",
    "/",
    "/img/logo.png",
    "/img/thumb-2.png",
    "/api/users/1",
    "/img/dog.jpg",
    "/img/thumb-3.png",
    "/api/users/2",
    "/img/beach.jpg",
    "/img/thumb-4.png",
    "/api/users/3",
    "/img/hero.jpg",
)


class NoAnswer(LookupError):
    """The router gave no address for the service (e.g. fail-closed SERVFAIL)."""


@dataclass(frozen=True, slots=True)
class Request:
    client: Client
    path: str


def zipf_weights(n: int, exponent: float = ZIPF_EXPONENT) -> list[float]:
    """Relative popularity of ranks 1..n: 1 / rank**exponent."""
    return [1.0 / rank**exponent for rank in range(1, n + 1)]


def requests(
    rng: random.Random, clients: Sequence[Client] = CLIENTS, objects: Sequence[str] = OBJECTS
) -> Iterator[Request]:
    """An endless, seeded stream of (client, object) pairs: clients uniform, objects Zipf."""
    weights = list(itertools.accumulate(zipf_weights(len(objects))))
    while True:
        client = rng.choice(clients)
        path = rng.choices(objects, cum_weights=weights)[0]
        yield Request(client, path)


@dataclass(slots=True)
class WorkloadStats:
    requests: int = 0
    errors: int = 0
    by_status: Counter[str] = field(default_factory=Counter)  # Cache-Status verdicts

    def summary(self) -> str:
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        return f"load: {self.requests} requests, {self.errors} errors ({verdicts or 'none'})"


def cache_verdict(cache_status: str | None) -> str:
    """`hit`, `miss`... from an RFC 9211 Cache-Status value such as `edge-eu-1; fwd=miss`."""
    if not cache_status:
        return "none"
    params = cache_status.split(",")[-1].split(";")  # the cache nearest the client is last
    for param in params[1:]:
        key, _, value = param.strip().partition("=")
        if key == "fwd":
            return value
        if key == "hit":
            return "hit"
    return "other"


# What a failed request can raise; each counts as an error and drops the client's answer.
FETCH_ERRORS = (OSError, aiohttp.ClientError, TimeoutError, dns.exception.DNSException, NoAnswer)


class Workload:
    """The shell: runs `requests()` against a router and its edges with bounded concurrency."""

    def __init__(self, dns_server: HostPort, service: str, content_port: int) -> None:
        self.dns_server = dns_server
        self.service = service
        self.content_port = content_port
        self.stats = WorkloadStats()
        self._answers: dict[str, tuple[float, str]] = {}  # subnet -> (expiry, address)
        self._interval = 1.0 / LOAD_RATE_RPS
        self._next_slot = 0.0

    async def run(
        self,
        duration_s: float = LOAD_DURATION_S,
        max_requests: int = LOAD_MAX_REQUESTS,
        concurrency: int = LOAD_CONCURRENCY,
        seed: int = LOAD_SEED,
        rate_rps: float = LOAD_RATE_RPS,
    ) -> WorkloadStats:
        self._interval = 1.0 / rate_rps
        stream = itertools.islice(requests(random.Random(seed)), max_requests)
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            workers = [self._worker(session, stream) for _ in range(concurrency)]
            # The time bound is the normal end of a long run.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*workers), duration_s)
        return self.stats

    async def _worker(self, session: aiohttp.ClientSession, stream: Iterator[Request]) -> None:
        for request in stream:  # one shared iterator: the request bound holds across workers
            await self._pace()
            self.stats.requests += 1
            try:
                verdict = await self._one(session, request)
            except FETCH_ERRORS:
                self._answers.pop(request.client.subnet, None)
                self.stats.errors += 1
            else:
                self.stats.by_status[verdict] += 1

    async def _pace(self) -> None:
        """Hold the workers together to rate_rps: each request takes the next time slot."""
        now = asyncio.get_running_loop().time()
        slot = max(self._next_slot, now)
        self._next_slot = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _one(self, session: aiohttp.ClientSession, request: Request) -> str:
        address = await self._resolve(request.client.subnet)
        url = f"http://{address}:{self.content_port}{request.path}"
        async with session.get(url, headers={"Host": self.service}) as response:
            await response.read()
            return cache_verdict(response.headers.get("Cache-Status"))

    async def _resolve(self, subnet: str) -> str:
        loop = asyncio.get_running_loop()
        cached = self._answers.get(subnet)
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        query = dns.message.make_query(
            self.service, "A", use_edns=0, options=[dns.edns.ECSOption.from_text(subnet)]
        )
        response = await dns.asyncquery.udp(
            query, self.dns_server.host, timeout=DNS_TIMEOUT_S, port=self.dns_server.port
        )
        addresses = [
            rdata.address
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.A
            for rdata in rrset
        ]
        if not addresses:
            raise NoAnswer(f"no A record for {self.service} from {subnet}")
        self._answers[subnet] = (loop.time() + ANSWER_REUSE_S, addresses[0])
        return str(addresses[0])
