"""Real nats-server processes for the tests: JetStream on loopback, ephemeral ports.

`start_nats(supervisor, workdir, count)` starts one server, or a cluster of `count` with
routes between them on loopback; each keeps its JetStream store under workdir and has
no monitoring port and no other listener. Stopped by PID through the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from cdnlab.loopback import free_port
from cdnlab.supervisor import ChildSpec, Supervisor
from tests.e2e import which

HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0
NATS_SERVER = which("nats-server")
needs_nats = pytest.mark.skipif(
    NATS_SERVER is None, reason="nats-server not installed (make test-packages)"
)


@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    config: Path

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def spec(self) -> ChildSpec:
        assert NATS_SERVER is not None
        return ChildSpec(self.name, (NATS_SERVER, "-c", str(self.config)), ready_event=None)


def _config(node: NatsNode, store: Path, peers: list[NatsNode]) -> str:
    text = f"""server_name: {node.name}
listen: "{HOST}:{node.port}"
jetstream {{ store_dir: "{store}" }}
"""
    if peers:
        routes = ", ".join(f'"nats-route://{HOST}:{p.cluster_port}"' for p in peers)
        text += f"""cluster {{
  name: georouter-test
  listen: "{HOST}:{node.cluster_port}"
  routes: [{routes}]
}}
"""
    return text


async def start_nats(supervisor: Supervisor, workdir: Path, count: int = 1) -> list[NatsNode]:
    """Start `count` servers (a JetStream cluster if more than one); return once every
    one accepts clients and JetStream answers."""
    nodes = [
        NatsNode(f"nats-{i}", free_port(HOST), free_port(HOST), workdir / f"nats-{i}.conf")
        for i in range(1, count + 1)
    ]
    for node in nodes:
        store = workdir / f"{node.name}-store"
        store.mkdir(parents=True, exist_ok=True)
        peers = [p for p in nodes if p is not node] if count > 1 else []
        node.config.write_text(_config(node, store, peers))
    for node in nodes:
        await supervisor.start(node.spec)
    await asyncio.gather(*(wait_ready(node) for node in nodes))
    return nodes


async def wait_ready(node: NatsNode, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until a client can connect and JetStream answers (a cluster needs a meta leader)."""
    end = asyncio.get_running_loop().time() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            nc = await nats.connect(node.url, allow_reconnect=False, connect_timeout=0.5)
            try:
                await nc.jetstream(timeout=1.0).account_info()
                return
            finally:
                await nc.close()
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"{node.name} not ready within {timeout_s} s")
        await asyncio.sleep(0.1)
