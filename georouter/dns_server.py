"""asyncio shells around the responder: UDP datagrams and DNS over TCP (RFC 7766).

They only move bytes: every decision is `Responder.respond`. `DnsService.responder` is read
once per query, so a reload can swap it while queries are in flight.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass
from time import perf_counter
from typing import cast

from georouter.config import HostPort
from georouter.metrics import RouterMetrics
from georouter.responder import Responder
from georouter.wire import HEADER

IDLE_TIMEOUT_S = 10.0  # RFC 7766 §6.2.3: close idle connections, seconds not minutes
MAX_TCP_CONNECTIONS = 256  # open at once; more are closed at accept (RFC 7766 §6.2.2)
MAX_QUERIES_PER_CONNECTION = 1000
MAX_TCP_QUERY_BYTES = 4096  # a query is a question and an OPT: anything longer is abuse
TCP_BACKLOG = 1024
UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # rides out bursts; the kernel caps it (rmem_max)
BIND_ATTEMPTS = 16  # port 0: tries to find one port free for both UDP and TCP


@dataclass(frozen=True, slots=True)
class TcpLimits:
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_connections: int = MAX_TCP_CONNECTIONS
    max_queries_per_connection: int = MAX_QUERIES_PER_CONNECTION


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, service: DnsService, metrics: RouterMetrics) -> None:
        self._service = service
        self._duration = metrics.query_duration.labels(transport="udp")
        self._dropped = metrics.dropped.labels(reason="unanswerable")
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        started = perf_counter()
        response = self._service.responder.respond(data, str(addr[0]), "udp")
        if response is None:
            self._dropped.inc()
        elif self._transport is not None:
            self._transport.sendto(response, addr)
        self._duration.observe(perf_counter() - started)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors about earlier answers: nothing to retry on a stateless server."""


class DnsService:
    """The router's DNS listener: UDP and TCP on one host:port."""

    def __init__(
        self,
        responder: Responder,
        listen: HostPort,
        metrics: RouterMetrics,
        limits: TcpLimits = TcpLimits(),
    ) -> None:
        self.responder = responder
        self._listen = listen
        self._metrics = metrics
        self._limits = limits
        self._port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._tcp_duration = metrics.query_duration.labels(transport="tcp")

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        """Bind UDP and TCP on the same port (with port 0, one free for both) and serve."""
        udp_sock, tcp_sock = _bind_pair(self._listen)
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self, self._metrics), sock=udp_sock
        )
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp_sock, backlog=TCP_BACKLOG)
        self._port = udp_sock.getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._connections) >= self._limits.max_connections:
            self._metrics.dropped.labels(reason="tcp_connection_limit").inc()
            writer.transport.abort()
            return
        self._connections.add(task)
        self._metrics.tcp_connections.inc()
        try:
            await self._converse(reader, writer, str(writer.get_extra_info("peername")[0]))
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client left, stalled or stopped mid-message: just close
        finally:
            self._connections.discard(task)
            self._metrics.tcp_connections.dec()
            writer.transport.abort()

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        """Answer queries in order (pipelined ones too) until EOF, idleness or a limit."""
        for _ in range(self._limits.max_queries_per_connection):
            async with asyncio.timeout(self._limits.idle_timeout_s):
                try:
                    prefix = await reader.readexactly(2)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    return  # EOF between messages: the normal end
                length = int.from_bytes(prefix)
                if not HEADER.size <= length <= MAX_TCP_QUERY_BYTES:
                    self._metrics.dropped.labels(reason="tcp_bad_length").inc()
                    return
                message = await reader.readexactly(length)
                started = perf_counter()
                response = self.responder.respond(message, peer, "tcp")
                if response is None:
                    self._metrics.dropped.labels(reason="unanswerable").inc()
                    continue
                writer.write(len(response).to_bytes(2) + response)
                self._tcp_duration.observe(perf_counter() - started)
                await writer.drain()


def _bind_pair(listen: HostPort) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to one address and port."""
    for _ in range(BIND_ATTEMPTS):
        udp = _bound(listen.host, listen.port, socket.SOCK_DGRAM)
        try:
            return udp, _bound(listen.host, udp.getsockname()[1], socket.SOCK_STREAM)
        except OSError as exc:
            udp.close()
            if listen.port or exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {listen.host}")


def _bound(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
