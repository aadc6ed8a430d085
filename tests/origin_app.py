"""Test doubles at the edge's I/O boundary: a scripted origin, a raw-bytes origin, a
recording fake router, a helper that runs a real in-process edge in front of them, and
the small request and metric helpers the edge tests share (their shared fixtures are in
tests/edge_fixtures.py).

Everything binds 127.0.0.1 port 0 and is stopped by the test that started it: each double
is an async context manager (``async with ScriptedOrigin() as origin:``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from cdn.config import HostPort
from cdn.purge import Purge
from cdn.report import LoadReport, ReportReply
from edge.config import CacheSettings, EdgeConfig, Limits
from edge.metrics import EdgeMetrics
from edge.server import EdgeServer

LOOPBACK = "127.0.0.1"
CACHEABLE = {"Cache-Control": "max-age=60"}


class _Served:
    """Start on enter, stop on exit: the shape every double here shares."""

    async def start(self) -> str:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class _ServedApp(_Served):
    """An aiohttp application on 127.0.0.1 port 0; ``url`` once started."""

    url = ""
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.url = f"http://{LOOPBACK}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Script:
    """What the origin answers for one path. ``etag``: answer 304 to a matching
    If-None-Match. ``gate``: hold the response until the test sets it. ``chunks``:
    send the body in these pieces (chunked transfer coding)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"origin body"
    etag: str | None = None
    delay_s: float = 0.0
    gate: asyncio.Event | None = None
    chunks: int = 0


@dataclass(frozen=True)
class Seen:
    method: str
    path_qs: str
    headers: CIMultiDictProxy[str]
    body: bytes


class ScriptedOrigin(_ServedApp):
    """An aiohttp origin whose answers the test scripts per path; it counts fetches.
    Its Date header follows ``clock`` (the edge's, when a test moves time)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.scripts: dict[str, Script] = {}
        self.seen: list[Seen] = []
        self.fetches: collections.Counter[str] = collections.Counter()

    def script(self, path: str, **kwargs: object) -> Script:
        script = self.scripts[path] = Script(**kwargs)  # type: ignore[arg-type]
        return script

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, request.headers, body))
        self.fetches[request.path_qs] += 1
        script = self.scripts.get(request.path_qs) or self.scripts.get(request.path)
        if script is None:
            return web.Response(status=404, text="not scripted")
        if script.gate is not None:
            await script.gate.wait()
        if script.delay_s:
            await asyncio.sleep(script.delay_s)  # a scripted slow origin, not synchronisation
        headers = {"Date": formatdate(self.clock(), usegmt=True), **script.headers}
        if script.etag is not None:
            headers["ETag"] = script.etag
            if request.headers.get("If-None-Match") == script.etag:
                return web.Response(status=304, headers=headers)
        if not script.chunks:
            return web.Response(status=script.status, headers=headers, body=script.body)
        return await _chunked(request, script, headers)


async def _chunked(
    request: web.Request, script: Script, headers: dict[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(status=script.status, headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    step = max(1, len(script.body) // script.chunks)
    for start in range(0, len(script.body), step):
        await response.write(script.body[start : start + step])
    await response.write_eof()
    return response


class RawOrigin(_Served):
    """A TCP origin that answers each request with fixed bytes (malformed status lines,
    broken chunking, truncated bodies, bodies longer than their Content-Length), then
    closes the connection; ``keep_alive`` answers every request on a connection instead,
    each with the same bytes, until the client closes it."""

    def __init__(self, payload: bytes, *, keep_alive: bool = False) -> None:
        self.payload = payload
        self.keep_alive = keep_alive
        self.connections = 0
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{LOOPBACK}:{port}"
        return self.url

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # requests without a body
                self.requests += 1
                writer.write(self.payload)
                await writer.drain()
                if not self.keep_alive:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        writer.close()


class FakeRouter(_ServedApp):
    """Records the load reports POSTed to /api/v1/report; ``refuse`` answers 503."""

    def __init__(self, token: str = "t0ken") -> None:
        self.token = token
        self.reports: list[LoadReport] = []
        self.unauthorized = 0
        self.refuse = False
        self.owed: list[Purge] = []  # purges sent with each reply until a report acks them

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/report", self._report)
        return app

    async def _report(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.unauthorized += 1
            return web.Response(status=401)
        if self.refuse:
            return web.Response(status=503)
        report = LoadReport.from_json(await request.read())
        self.reports.append(report)
        self.owed = [p for p in self.owed if p.id not in report.acks]
        if not self.owed:
            return web.Response(status=204)
        return web.Response(body=ReportReply("accepted", tuple(self.owed)).to_json())


def edge_config(origin: str, **changes: object) -> EdgeConfig:
    """An edge config on loopback port 0; ``changes`` may name EdgeConfig, Limits or
    CacheSettings fields."""
    limits = {k: v for k, v in changes.items() if k in Limits.__dataclass_fields__}
    cache = {k: v for k, v in changes.items() if k in CacheSettings.__dataclass_fields__}
    top = {k: v for k, v in changes.items() if k not in limits and k not in cache}
    cfg = EdgeConfig(
        source="test",
        name="edge-test-1",
        listen=HostPort(LOOPBACK, 0),
        control=HostPort(LOOPBACK, 0),
        origin=origin,
        token="t0ken",
        drain_s=0.5,
        limits=dataclasses.replace(Limits(), **limits),  # type: ignore[arg-type]
        cache=dataclasses.replace(CacheSettings(), **cache),  # type: ignore[arg-type]
    )
    return dataclasses.replace(cfg, **top)  # type: ignore[arg-type]


class FakeClock:
    """Wall-clock time that only moves when the test says so (starts at the real time,
    so the origin's Date headers agree with it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def running_edge(
    origin: str, clock: Callable[[], float] = time.time, **changes: object
) -> AsyncIterator[EdgeServer]:
    """A real edge (content and control ports bound) in this event loop."""
    server = EdgeServer(edge_config(origin, **changes), clock)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


CANCEL_DEADLINE_S = 10.0


async def poll(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, checking often; fail the test at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def background(job: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``job`` as a task for the block; cancel it and wait for it on the way out
    (a task that ignores its cancel fails the test instead of hanging it)."""
    task = asyncio.create_task(job)
    try:
        yield task
    finally:
        task.cancel()
        async with asyncio.timeout(CANCEL_DEADLINE_S):
            await asyncio.gather(task, return_exceptions=True)


async def get(
    client: aiohttp.ClientSession, edge: EdgeServer, path: str, method: str = "GET", **kw: Any
) -> tuple[int, CIMultiDict[str], bytes]:
    """One request to the edge's content port: status, response headers, body."""
    async with client.request(method, f"http://{edge.content}{path}", **kw) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def metric(metrics: EdgeMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample of the edge's registry (0 before the first increment)."""
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0
