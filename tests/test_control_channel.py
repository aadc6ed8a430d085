"""The router's report channel endpoint (GET /api/v1/channel): bearer check before the
upgrade, reports and replies as text messages, rejection with 1008, a loss takes the
node out, a drain does not, replacement, the per-node cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from cdn.report import CHANNEL_PATH, LoadReport
from georouter.control import ControlPlane, make_control_app
from tests.test_control import AUTH, NODES, Clock, make_plane

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def plane(tmp_path: Path) -> ControlPlane:
    return make_plane(Clock(), tmp_path / "state")


@pytest.fixture
async def client(plane: ControlPlane) -> AsyncIterator[Client]:
    async with TestClient(TestServer(make_control_app(plane), host="127.0.0.1")) as c:
        yield c


def report(node: str = "edge-eu-1", seq: int = 1, status: str = "up") -> str:
    r = LoadReport(node, seq, status, 4, 600.0, 2000.0, 0.3, 0.8)  # type: ignore[arg-type]
    return r.to_json().decode()


def closes(plane: ControlPlane, reason: str) -> float:
    value = plane.metrics.registry.get_sample_value(
        "georouter_channel_closes_total", {"reason": reason}
    )
    return value or 0.0


def open_channels(plane: ControlPlane) -> float:
    return plane.metrics.registry.get_sample_value("georouter_channels_open") or 0.0


async def until(predicate: object, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_channel_needs_the_bearer_token_before_the_upgrade_rfc6750_3(
    client: Client,
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(CHANNEL_PATH, headers={"Authorization": "Bearer nope"})
    assert caught.value.status == 401


async def test_reports_and_replies_ride_the_channel(client: Client, plane: ControlPlane) -> None:
    async with client.ws_connect(CHANNEL_PATH, headers=AUTH) as ws:
        await ws.send_str(report(seq=1))
        assert (await ws.receive_json()) == {"result": "accepted"}
        await ws.send_str(report(seq=1))
        assert (await ws.receive_json()) == {"result": "stale"}
        status = plane.fleet.statuses["edge-eu-1"]
        assert status.report_on_channel and open_channels(plane) == 1


async def test_a_lost_channel_takes_the_node_out(client: Client, plane: ControlPlane) -> None:
    plane.fleet.apply_probe("edge-eu-1", True, plane.clock())
    ws = await client.ws_connect(CHANNEL_PATH, headers=AUTH)
    await ws.send_str(report())
    await ws.receive_json()
    assert plane.fleet.statuses["edge-eu-1"].state == "up"
    await ws.close()  # no drain report before: as if the process died
    await until(lambda: closes(plane, "lost") == 1)
    status = plane.fleet.statuses["edge-eu-1"]
    assert (status.state, status.reason) == ("down", "channel_closed")
    assert open_channels(plane) == 0


async def test_a_drained_channel_leaves_the_node_draining(
    client: Client, plane: ControlPlane
) -> None:
    ws = await client.ws_connect(CHANNEL_PATH, headers=AUTH)
    await ws.send_str(report(status="draining"))
    await ws.receive_json()
    await ws.close()
    await until(lambda: closes(plane, "drain") == 1)
    assert plane.fleet.statuses["edge-eu-1"].reason == "edge_draining"


@pytest.mark.parametrize(
    ("message", "code"),
    [(report(node="edge-nowhere"), 1008), ("{", 1008), (b"\x00", 1003)],
)
async def test_a_bad_message_closes_the_channel_without_a_loss(
    client: Client, plane: ControlPlane, message: str | bytes, code: int
) -> None:
    async with client.ws_connect(CHANNEL_PATH, headers=AUTH) as ws:
        if isinstance(message, bytes):
            await ws.send_bytes(message)
        else:
            await ws.send_str(message)
            assert "error" in await ws.receive_json()
        msg = await ws.receive()
        assert msg.type == WSMsgType.CLOSE and ws.close_code == code
    await until(lambda: closes(plane, "rejected") == 1)
    assert closes(plane, "lost") == 0


async def test_a_newer_channel_replaces_the_older(client: Client, plane: ControlPlane) -> None:
    old = await client.ws_connect(CHANNEL_PATH, headers=AUTH)
    await old.send_str(report(seq=1))
    await old.receive_json()
    async with client.ws_connect(CHANNEL_PATH, headers=AUTH) as new:
        await new.send_str(report(seq=2))
        await new.receive_json()
        assert (await old.receive()).type == WSMsgType.CLOSE
        await until(lambda: closes(plane, "replaced") == 1)
        assert plane.fleet.statuses["edge-eu-1"].reason != "channel_closed"
    await old.close()


async def test_open_channels_are_capped_per_configured_node(
    client: Client, plane: ControlPlane
) -> None:
    cap = 2 * len(NODES)
    sockets = [await client.ws_connect(CHANNEL_PATH, headers=AUTH) for _ in range(cap)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(CHANNEL_PATH, headers=AUTH)
    assert caught.value.status == 503 and closes(plane, "over_limit") == 1
    for ws in sockets:
        await ws.close()
    await until(lambda: closes(plane, "unbound") == cap)
