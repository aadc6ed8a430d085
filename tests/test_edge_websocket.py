"""WebSocket pass-through (RFC 6455) through a real `edge serve` process, with aiohttp's
WebSocket client in front and a real aiohttp WebSocket origin behind, all on loopback.

Covered: echo (text, binary, a 1 MiB message at the limit), ping/pong and close codes
carried both ways, subprotocols negotiated end to end, an origin's refusal relayed as HTTP,
each limit at its edge (tunnels: 503; message size: 1009; idle: 1001; pings keep a quiet
chat open), the edge's memory while a client does not read, the drain on SIGTERM (the
chat goes on, new upgrades get 503, 1001 at the end), tunnels in /healthz and the load
report, and that tunnels bypass the cache and the origin's body-rate floor.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from cdnlab.loopback import free_port
from edge.config import Limits, WebSocketSettings
from edge.metrics import EdgeMetrics
from edge.tunnel import Tunnels
from tests.origin_app import FakeRouter, poll
from tests.test_edge_process import TOKEN, Process, spawn, stop
from tests.ws_origin import WebSocketOrigin

MiB = 1024 * 1024


@pytest.fixture
async def origin() -> AsyncIterator[WebSocketOrigin]:
    async with WebSocketOrigin() as served:
        yield served


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@asynccontextmanager
async def running_edge(
    tmp_path: Path,
    origin: str,
    websocket: str = "",
    limits: str = "",
    routers: tuple[str, ...] = (),
    drain_s: str = "1",
) -> AsyncIterator[Process]:
    """A real `edge serve` process; ``websocket`` and ``limits`` are TOML table bodies."""
    config = tmp_path / "edge.toml"
    config.write_text(f"[websocket]\n{websocket}\n[limits]\n{limits}\n")
    argv = [sys.executable, "-m", "edge", "serve", "--config", str(config),
            "--name", "edge-ws-1", "--origin", origin, "--token", TOKEN, "--drain-s", drain_s,
            "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"]  # fmt: skip
    for router in routers:
        argv += ["--router", router]
    edge = await spawn(argv)
    try:
        yield edge
    finally:
        await stop(edge)


def ws_url(edge: Process, path: str = "/echo") -> str:
    return f"http://{edge.fields['content']}{path}"


async def scrape(client: aiohttp.ClientSession, edge: Process) -> str:
    async with client.get(f"http://{edge.fields['control']}/metrics") as resp:
        return await resp.text()


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a scraped exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{name}{{{wanted}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def scraped_when(
    client: aiohttp.ClientSession, edge: Process, name: str, **labels: str
) -> str:
    """A scrape taken once ``name{labels}`` has a sample (tunnels end asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not sample(text := await scrape(client, edge), name, **labels):
        assert loop.time() < deadline, f"no {name}{labels} within 5 s"
        await asyncio.sleep(0.02)
    return text


async def healthz(client: aiohttp.ClientSession, edge: Process) -> tuple[int, dict[str, object]]:
    async with client.get(f"http://{edge.fields['control']}/healthz") as resp:
        return resp.status, await resp.json()


async def refused_status(client: aiohttp.ClientSession, url: str) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(url)
    return refused.value.status


async def test_echo_text_binary_and_a_message_at_the_size_limit_rfc6455_5_6(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    async with running_edge(tmp_path, origin.url) as edge:
        async with client.ws_connect(ws_url(edge), max_msg_size=0) as ws:
            await ws.send_str("héllo")
            assert await ws.receive_str(timeout=5) == "héllo"
            await ws.send_bytes(b"\x00\xff")
            assert await ws.receive_bytes(timeout=5) == b"\x00\xff"
            whole = bytes(range(256)) * (MiB // 256)  # max_message_bytes: 1 MiB passes
            await ws.send_bytes(whole)
            assert await ws.receive_bytes(timeout=10) == whole
        text = await scraped_when(
            client, edge, "edge_websocket_closes_total", code="1000", by="client"
        )
    assert sample(text, "edge_websocket_upgrades_total", result="accepted") == 1
    assert sample(text, "edge_websocket_messages_total", direction="client_to_origin") == 3
    assert sample(text, "edge_websocket_messages_total", direction="origin_to_client") == 3
    assert sample(text, "edge_websocket_message_bytes_total", direction="origin_to_client") == (
        len("héllo".encode()) + 2 + MiB
    )
    assert sample(text, "edge_websocket_closes_total", code="1000", by="client") == 1
    assert origin.seen.close_codes == [1000]


async def test_message_over_the_limit_closes_both_legs_1009_rfc6455_7_4_1(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    async with running_edge(tmp_path, origin.url, "max_message_bytes = 4096") as edge:
        async with client.ws_connect(ws_url(edge)) as ws:
            await ws.send_bytes(b"x" * 4096)
            assert await ws.receive_bytes(timeout=5) == b"x" * 4096
            await ws.send_bytes(b"x" * 4097)
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
        await poll(lambda: origin.seen.close_codes == [1009])
        text = await scraped_when(
            client, edge, "edge_websocket_closes_total", code="1009", by="edge"
        )
    assert sample(text, "edge_websocket_closes_total", code="1009", by="edge") == 1


async def test_pings_and_pongs_pass_both_ways_rfc6455_5_5_2(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    async with (
        running_edge(tmp_path, origin.url) as edge,
        client.ws_connect(ws_url(edge), autoping=False) as ws,
    ):
        # The client's ping reaches the origin; the origin's pong comes back.
        await ws.ping(b"from-client")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"from-client")
        assert origin.seen.pings == [b"from-client"]
        # The origin's ping reaches the client; the client's pong reaches the origin.
        await ws.send_str("ping:from-origin")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.PING, b"from-origin")
        await ws.pong(msg.data)
        assert await ws.receive_str(timeout=5) == "pong:from-origin"


async def test_close_codes_and_reasons_are_carried_each_way_rfc6455_7_4(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    async with running_edge(tmp_path, origin.url) as edge:
        async with client.ws_connect(ws_url(edge)) as ws:
            await ws.send_str("close:4321:done for today")
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4321, "done for today")
        async with client.ws_connect(ws_url(edge)) as ws:
            await ws.close(code=4000, message=b"bye")
        await poll(lambda: len(origin.seen.close_codes) == 2)
        assert origin.seen.close_codes[1] == 4000
        # An origin that drops the connection without a Close (1006, never sent on the
        # wire): the client gets 1011.
        async with client.ws_connect(ws_url(edge)) as ws:
            await ws.send_str("abort")
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1011)
        text = await scraped_when(
            client, edge, "edge_websocket_closes_total", code="1006", by="origin"
        )
    assert sample(text, "edge_websocket_closes_total", code="other", by="origin") == 1
    assert sample(text, "edge_websocket_closes_total", code="other", by="client") == 1
    assert sample(text, "edge_websocket_closes_total", code="1006", by="origin") == 1


async def test_subprotocol_is_negotiated_end_to_end_rfc6455_4_1(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    async with running_edge(tmp_path, origin.url) as edge:
        async with client.ws_connect(ws_url(edge), protocols=("chat.v2", "chat.v1")) as ws:
            assert ws.protocol == "chat.v1"  # the origin's choice among the client's offers
        async with client.ws_connect(ws_url(edge), protocols=("other",)) as ws:
            assert ws.protocol is None
    assert origin.seen.offered == ["chat.v2,chat.v1", "other"]
    sent = origin.seen.headers[0]
    assert "edge-ws-1" in sent["Via"] and sent["X-Forwarded-For"] == "127.0.0.1"


async def test_origin_refusing_the_upgrade_is_relayed_as_http(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    async with running_edge(tmp_path, origin.url) as edge:
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
        async with client.get(ws_url(edge, "/refuse"), headers=upgrade) as resp:
            assert resp.status == 403
            assert resp.headers["X-Why"] == "banned"
            assert await resp.text() == "no chat for you"
        # A client speaking another version is told which one we speak (RFC 6455 §4.4).
        async with client.get(ws_url(edge), headers={**upgrade, "Sec-WebSocket-Version": "8"}) as r:
            assert (r.status, r.headers["Sec-WebSocket-Version"]) == (426, "13")
        text = await scrape(client, edge)
    assert sample(text, "edge_websocket_upgrades_total", result="origin_status") == 1
    assert sample(text, "edge_websocket_upgrades_total", result="handshake") == 1
    assert origin.seen.handshakes == 1


async def test_tunnels_beyond_max_tunnels_get_503_and_count_as_load(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    async with running_edge(tmp_path, origin.url, "max_tunnels = 2") as edge:
        first = await client.ws_connect(ws_url(edge))
        second = await client.ws_connect(ws_url(edge))
        assert await refused_status(client, ws_url(edge)) == 503
        status, health = await healthz(client, edge)
        assert (status, health["tunnels"], health["utilization"]) == (200, 2, 1.0)
        await first.close()
        await poll(lambda: len(origin.seen.close_codes) == 1)
        third = await client.ws_connect(ws_url(edge))  # a slot is free again
        await third.send_str("still here")
        assert await third.receive_str(timeout=5) == "still here"
        text = await scrape(client, edge)
        await second.close()
        await third.close()
    assert sample(text, "edge_websocket_upgrades_total", result="limit") == 1
    assert sample(text, "edge_websocket_tunnels") == 2
    assert origin.seen.handshakes == 3


async def test_idle_tunnel_is_closed_1001_after_idle_timeout(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    settings = "idle_timeout_s = 0.5\nping_interval_s = 0"
    async with running_edge(tmp_path, origin.url, settings) as edge:
        async with client.ws_connect(ws_url(edge)) as ws:
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "idle timeout")
        await poll(lambda: origin.seen.close_codes == [1001])
        text = await scraped_when(
            client, edge, "edge_websocket_closes_total", code="1001", by="edge"
        )
    assert sample(text, "edge_websocket_closes_total", code="1001", by="edge") == 1


async def test_pings_keep_a_quiet_chat_open_past_the_idle_timeout(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    settings = "idle_timeout_s = 0.6\nping_interval_s = 0.2"
    async with running_edge(tmp_path, origin.url, settings) as edge:
        async with client.ws_connect(ws_url(edge), autoping=False) as ws:
            # More than three idle timeouts of a quiet chat whose client answers pings.
            loop = asyncio.get_running_loop()
            until = loop.time() + 2.0
            pings = 0
            while loop.time() < until:
                msg = await ws.receive(timeout=1.0)
                assert (msg.type, msg.data) == (WSMsgType.PING, b"edge-keepalive")
                await ws.pong(msg.data)
                pings += 1
            assert pings >= 4
            await ws.send_str("still open")
            assert await ws.receive_str(timeout=5) == "still open"
        text = await scrape(client, edge)
    assert sample(text, "edge_websocket_keepalive_pings_total") >= 8  # both legs
    # The quiet origin leg is pinged too, by the edge itself (no client ping was relayed).
    assert origin.seen.pings and {bytes(p) for p in origin.seen.pings} == {b"edge-keepalive"}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_client_that_does_not_read_does_not_grow_the_edge(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    # The origin would send 512 MiB; the edge's memory may grow by far less than that.
    async with (
        WebSocketOrigin(flood_bytes=512 * MiB) as origin,
        running_edge(tmp_path, origin.url) as edge,
    ):
        pid = edge.proc.pid
        before = rss_bytes(pid)
        async with client.ws_connect(ws_url(edge, "/flood")) as ws:
            await poll(lambda: origin.seen.flood_sent >= 4 * MiB, timeout_s=10)
            # Back-pressure: the origin's sends stall once every buffer is full.
            stalled = -1
            for _ in range(200):
                if origin.seen.flood_sent == stalled:
                    break
                stalled = origin.seen.flood_sent
                await asyncio.sleep(0.25)  # sampling a rate, not waiting for an event
            grown = rss_bytes(pid) - before
            print(f"flood: origin sent {stalled / MiB:.1f} MiB, edge RSS +{grown / MiB:.1f} MiB")
            assert origin.seen.flood_sent < 64 * MiB
            assert grown < 64 * MiB, f"edge RSS grew by {grown / MiB:.1f} MiB"
            first = await ws.receive_bytes(timeout=5)  # the reader wakes: data flows
            assert len(first) == 64 * 1024


async def test_drain_keeps_open_tunnels_refuses_new_ones_then_closes_1001(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    async with running_edge(tmp_path, origin.url, drain_s="3") as edge:
        async with client.ws_connect(ws_url(edge)) as chat:
            edge.proc.send_signal(signal.SIGTERM)
            await e2e_wait_status(client, edge, 503)
            await chat.send_str("during the drain")
            assert await chat.receive_str(timeout=5) == "during the drain"
            assert await refused_status(client, ws_url(edge)) == 503
            msg = await chat.receive(timeout=15)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        assert await asyncio.wait_for(edge.proc.wait(), 15) == 0
    assert origin.seen.close_codes == [1001]
    assert any("event=websocket_close_all tunnels=1" in line for line in edge.log)


async def test_sigint_closes_open_tunnels_with_1001_at_once(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    async with (
        running_edge(tmp_path, origin.url, drain_s="60") as edge,
        client.ws_connect(ws_url(edge)) as chat,
    ):
        edge.proc.send_signal(signal.SIGINT)
        msg = await chat.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        assert await asyncio.wait_for(edge.proc.wait(), 10) == 0


async def test_an_unreachable_origin_is_a_502(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    closed = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    async with running_edge(tmp_path, closed) as edge:
        assert await refused_status(client, ws_url(edge)) == 502
        text = await scrape(client, edge)
    assert sample(text, "edge_websocket_upgrades_total", result="origin_error") == 1
    assert sample(text, "edge_websocket_tunnels") == 0


async def e2e_wait_status(client: aiohttp.ClientSession, edge: Process, status: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (await healthz(client, edge))[0] != status:
        assert loop.time() < deadline, "healthz never changed"
        await asyncio.sleep(0.02)


async def test_tunnels_bypass_the_cache_and_the_origin_body_rate_floor(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    # A floor no trickle of chat could meet, judged over a short window, and a short read
    # timeout: a fetch would be cut, a tunnel must not be.
    limits = "origin_min_bytes_per_s = 1000000\norigin_min_rate_window_s = 0.1\n"
    limits += "origin_read_timeout_s = 0.3"
    async with running_edge(tmp_path, origin.url, limits=limits) as edge:
        async with client.ws_connect(ws_url(edge)) as ws:
            for n in range(4):
                await ws.send_str(f"tick {n}")
                assert await ws.receive_str(timeout=5) == f"tick {n}"
                with pytest.raises(TimeoutError):  # quiet longer than the window and timeout
                    await ws.receive(timeout=0.3)
        async with client.ws_connect(ws_url(edge)) as ws:
            pass
        text = await scrape(client, edge)
    assert origin.seen.handshakes == 2  # the second upgrade was not answered from a cache
    assert sample(text, "edge_cache_objects") == 0
    assert sample(text, "edge_origin_timeouts_total", limit="rate") == 0
    assert sample(text, "edge_requests_total", cache="miss", method="GET", code="101") == 0


async def test_load_report_carries_open_tunnels(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    async with (
        FakeRouter(TOKEN) as router,
        running_edge(tmp_path, origin.url, "max_tunnels = 4", routers=(router.url,)) as edge,
    ):
        async with client.ws_connect(ws_url(edge)), client.ws_connect(ws_url(edge)):
            await poll(lambda: bool(router.reports) and router.reports[-1].tunnels == 2)
        report = router.reports[-1]
        assert report.utilization >= 0.5  # two of four tunnel slots
        await poll(lambda: router.reports[-1].tunnels == 0)


async def test_an_upgrade_that_already_passed_this_node_is_508_rfc8586_2(
    tmp_path: Path, origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    # The tunnel adds this node to CDN-Loop: without the check, a loop would open tunnel
    # after tunnel until max_tunnels.
    async with running_edge(tmp_path, origin.url) as edge:
        loop = {"CDN-Loop": "other-cdn, georouter-edge-ws-1; v=1"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(ws_url(edge), headers=loop)
        assert refused.value.status == 508
        text = await scrape(client, edge)
    assert sample(text, "edge_cdn_loops_total") == 1
    assert origin.seen.handshakes == 0


async def test_a_site_with_websockets_off_answers_403_rfc6455_4_2_2(
    origin: WebSocketOrigin, client: aiohttp.ClientSession
) -> None:
    # The shell alone, as a site's handler will call it with its `websocket` switch.
    metrics = EdgeMetrics()
    tunnels = Tunnels("edge-ws-1", WebSocketSettings(), Limits(), metrics)
    await tunnels.start()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await tunnels.handle(request, origin.url, enabled=False)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/echo"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(url)
        assert refused.value.status == 403
    finally:
        await runner.cleanup()
        await tunnels.close()
    assert (
        metrics.registry.get_sample_value("edge_websocket_upgrades_total", {"result": "disabled"})
        == 1
    )
    assert origin.seen.handshakes == 0


async def test_a_second_independent_client_websockets_library(
    tmp_path: Path, origin: WebSocketOrigin
) -> None:
    # The `websockets` library (its own framing, masking and close handshake).
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with running_edge(tmp_path, origin.url) as edge:
        uri = f"ws://{edge.fields['content']}/echo"
        async with connect(uri, subprotocols=["chat.v1"], max_size=None) as ws:
            assert ws.subprotocol == "chat.v1"
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x01" * 70_000)  # a 64-bit length frame (RFC 6455 §5.2)
            assert await ws.recv() == b"\x01" * 70_000
            pong = await ws.ping(b"p")
            await asyncio.wait_for(pong, 5)
            await ws.send("close:4100:over")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4100, "over")
