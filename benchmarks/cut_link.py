"""A TCP link on loopback that the harness can cut and restore: an unreachable peer, simulated.

Loopback has no network to unplug, and without root (or on a machine shared with other work)
the benchmarks do not touch packet filters. So the one path between a router and an edge
runs through a relay in the harness: the router's topology names the relay as the edge's
control URL, and the edge's `--router` names a second relay in front of the router.

While the link is *cut*, every byte either side sends is read and dropped, as a network
partition drops packets: nobody is told (no FIN, no RST), a new connection is accepted and
then hears nothing, so each side sees only its own time-outs, as with a host behind a
broken link. When the link is *restored*, every connection that lived through the cut is
reset (SO_LINGER 0: an RST to both sides): the peer that gave up meanwhile (the router
closes a channel whose pongs stop) answers the other's next segment with an RST, which a
real link delivers at the next TCP retransmission after it heals, here at once; nothing
sent during the cut arrives late. New connections then pass again.

Freezing the edge with SIGSTOP instead would not do: a frozen edge also stops serving its
clients (so it could not serve the old object), and the kernel keeps the router's purge
request in the socket for it to handle at SIGCONT, so the purge arrives through the
fan-out after all.

The relays run on one event loop in a daemon thread; `cut` and `restore` are called from
the blocking harness and return once the loop has applied them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from cdnlab.supervisor import run_blocking

READ_BYTES = 64 * 1024


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER on, timeout 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    """One accepted connection and its upstream; `doomed` once it has lived through a cut."""

    def __init__(self, down: asyncio.StreamWriter) -> None:
        self.down = down
        self.up: asyncio.StreamWriter | None = None
        self.doomed = False
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for writer in (self.down, self.up):
            if writer is not None:
                _reset(writer)
        for task in self.tasks:
            task.cancel()


class CutLink:
    """A relay from 127.0.0.1:`port` (the kernel's choice) to `target_host`:`target_port`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.cut_now = False
        self.cuts = 0
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CutLink:
        run_blocking(self._start())
        return self

    def stop(self) -> None:
        run_blocking(self._stop())

    def cut(self) -> None:
        """From now on drop everything, tell nobody."""
        run_blocking(self._cut())

    def restore(self) -> None:
        """Reset every connection that saw the cut; pass traffic again."""
        run_blocking(self._restore())

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.reset()
        self._connections.clear()
        if self._server is not None:
            await self._server.wait_closed()

    async def _cut(self) -> None:
        self.cut_now = True
        self.cuts += 1
        for connection in self._connections:
            connection.doomed = True

    async def _restore(self) -> None:
        self.cut_now = False
        for connection in [c for c in self._connections if c.doomed]:
            connection.reset()
            self._connections.discard(connection)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        connection.doomed = self.cut_now
        self._connections.add(connection)
        try:
            if connection.doomed:  # accepted during a cut: hears nothing until reset
                await self._drain_into_nothing(reader)
                return
            try:
                up_reader, connection.up = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            connection.tasks = [
                asyncio.create_task(self._pump(reader, connection.up, connection)),
                asyncio.create_task(self._pump(up_reader, writer, connection)),
            ]
            await asyncio.gather(*connection.tasks, return_exceptions=True)
        finally:
            self._connections.discard(connection)
            for side in (connection.down, connection.up):
                if side is not None and not side.transport.is_closing():
                    side.close()

    async def _drain_into_nothing(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while await reader.read(READ_BYTES):
                pass

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> None:
        """Copy one direction; while the link is cut (or this connection saw a cut), drop."""
        try:
            while data := await reader.read(READ_BYTES):
                if self.cut_now or connection.doomed:
                    continue  # lost on the way, as a partition loses packets
                writer.write(data)
                await writer.drain()
            if not (self.cut_now or connection.doomed) and writer.can_write_eof():
                writer.write_eof()  # a FIN passes only while the link is up
        except OSError:
            connection.reset()
