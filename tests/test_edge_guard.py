"""Slowloris and connection floods against the real edge's content port, with raw sockets:
each deadline and cap of [armour] at its limit (edge/guard.py)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from edge.armour import ArmourSettings
from edge.server import EdgeServer
from tests.origin_app import ScriptedOrigin, metric, running_edge

pytest_plugins = ("tests.edge_fixtures",)

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
CLOSED_WITHIN_S = 5.0  # functional deadline: the edge cuts a stalled client well before


async def connect(
    edge: EdgeServer, local: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert edge.content is not None
    return await asyncio.open_connection(
        edge.content.host, edge.content.port, local_addr=(local, 0)
    )


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the edge sends until it closes the connection (fails at the deadline)."""
    return await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S)


def armour(**changes: float) -> ArmourSettings:
    return ArmourSettings(**changes)  # type: ignore[arg-type]


async def test_half_sent_head_is_answered_408_and_closed_at_the_head_deadline(
    origin: ScriptedOrigin,
) -> None:
    async with running_edge(origin.url, armour=armour(head_timeout_s=0.5)) as edge:
        reader, writer = await connect(edge)
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
        answer = await until_closed(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert metric(edge.metrics, "edge_client_timeouts_total", {"phase": "head"}) == 1
        assert origin.fetches["/a"] == 0


async def test_head_fed_one_byte_at_a_time_is_closed_at_the_head_deadline(
    origin: ScriptedOrigin,
) -> None:
    # Each byte arrives well within any idle timeout; only a deadline on the whole head
    # (HAProxy timeout http-request) stops it.
    settings = armour(head_timeout_s=1.0, keepalive_timeout_s=30.0)
    async with running_edge(origin.url, armour=settings) as edge:
        reader, writer = await connect(edge)
        started = time.monotonic()
        answer = b""
        for byte in GET[:-2]:
            writer.write(bytes([byte]))
            try:  # the attacker's pace (0.2 s a byte), watching for the edge's answer
                answer = await asyncio.wait_for(reader.read(), 0.2)
                break
            except TimeoutError:
                pass
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < CLOSED_WITHIN_S
        assert metric(edge.metrics, "edge_client_timeouts_total", {"phase": "head"}) == 1


async def test_connection_sending_nothing_is_closed_at_the_head_deadline(
    origin: ScriptedOrigin,
) -> None:
    settings = armour(head_timeout_s=0.5, keepalive_timeout_s=60.0)
    async with running_edge(origin.url, armour=settings) as edge:
        reader, writer = await connect(edge)
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 408 ")
        writer.close()


async def test_idle_keepalive_connection_is_closed_at_the_keepalive_timeout(
    origin: ScriptedOrigin,
) -> None:
    origin.script("/a", body=b"hello", headers={"Cache-Control": "max-age=60"})
    settings = armour(head_timeout_s=30.0, keepalive_timeout_s=0.5)
    async with running_edge(origin.url, armour=settings) as edge:
        reader, writer = await connect(edge)
        writer.write(GET)
        answer = await until_closed(reader)  # answered, then closed when idle
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello")


async def test_requests_on_one_connection_are_not_cut_by_an_earlier_head_deadline(
    origin: ScriptedOrigin,
) -> None:
    origin.script("/a", body=b"hello", headers={"Cache-Control": "max-age=60"})
    settings = armour(head_timeout_s=0.5, keepalive_timeout_s=30.0)
    async with running_edge(origin.url, armour=settings) as edge:
        async with aiohttp.ClientSession() as client:
            for _ in range(3):  # one keep-alive connection, longer than the head deadline
                async with client.get(f"http://{edge.content}/a") as resp:
                    assert resp.status == 200 and await resp.read() == b"hello"
                await asyncio.sleep(0.3)  # idle between requests, as a browser is
        assert metric(edge.metrics, "edge_client_timeouts_total", {"phase": "head"}) == 0


async def test_stalled_body_is_closed_at_the_body_read_deadline(origin: ScriptedOrigin) -> None:
    origin.script("/up", body=b"ok")
    settings = armour(body_read_timeout_s=0.5, head_timeout_s=30.0)
    async with running_edge(origin.url, armour=settings) as edge:
        reader, writer = await connect(edge)
        writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        answer = await until_closed(reader)
        writer.close()
        assert b" 200 " not in answer
        assert metric(edge.metrics, "edge_client_timeouts_total", {"phase": "body"}) == 1


async def test_connections_over_the_per_client_cap_are_refused_503(origin: ScriptedOrigin) -> None:
    settings = armour(max_connections_per_client=2, max_connections=100)
    async with running_edge(origin.url, armour=settings) as edge:
        held = [await connect(edge) for _ in range(2)]
        reader, writer = await connect(edge)
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 503 ")
        writer.close()
        # Another address is not this client's cap.
        other_reader, other_writer = await connect(edge, "127.0.0.2")
        other_writer.write(GET)
        assert not (await other_reader.readline()).startswith(b"HTTP/1.1 503")
        other_writer.close()
        refused = metric(
            edge.metrics, "edge_client_connections_refused_total", {"cap": "per_client"}
        )
        assert refused == 1
        for _, w in held:
            w.close()


async def test_connections_over_the_total_cap_are_refused_until_one_closes(
    origin: ScriptedOrigin,
) -> None:
    origin.script("/a", body=b"hello")
    settings = armour(max_connections_per_client=2, max_connections=3)
    async with running_edge(origin.url, armour=settings) as edge:
        held = [await connect(edge, "127.0.0.1") for _ in range(2)]
        held.append(await connect(edge, "127.0.0.2"))
        reader, writer = await connect(edge, "127.0.0.3")
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 503 ")
        writer.close()
        assert metric(edge.metrics, "edge_client_connections_refused_total", {"cap": "total"}) == 1
        held[0][1].close()
        deadline = time.monotonic() + CLOSED_WITHIN_S
        while edge.guard.connections.open >= 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        reader, writer = await connect(edge, "127.0.0.3")
        writer.write(GET)
        assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        writer.close()
        for _, w in held[1:]:
            w.close()


async def test_quiet_websocket_tunnel_outlives_the_body_and_head_deadlines() -> None:
    # A tunnel's silence is the tunnel's business (websocket.idle_timeout_s), not a stalled
    # request body's or head's.
    from tests.ws_origin import WebSocketOrigin

    settings = armour(body_read_timeout_s=0.3, head_timeout_s=0.3, keepalive_timeout_s=0.3)
    async with WebSocketOrigin() as ws_origin, running_edge(ws_origin.url, armour=settings) as edge:
        url = f"ws://{edge.content}/echo"
        async with aiohttp.ClientSession() as client, client.ws_connect(url, autoping=False) as ws:
            await asyncio.sleep(1.0)  # quiet, past every deadline: what is under test
            await ws.send_bytes(b"still here")
            assert (await ws.receive(timeout=5)).data == b"still here"
        assert metric(edge.metrics, "edge_client_timeouts_total", {"phase": "body"}) == 0
