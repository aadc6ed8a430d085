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
from typing import Protocol

from cdn.config import HostPort
from georouter.metrics import HotPathTallies, RouterMetrics
from georouter.responder import Responder
from georouter.wire import HEADER

IDLE_TIMEOUT_S = 10.0  # RFC 7766 §6.2.3: close idle connections, seconds not minutes
MAX_TCP_CONNECTIONS = 256  # open at once; more are closed at accept (RFC 7766 §6.2.2)
MAX_QUERIES_PER_CONNECTION = 1000
MAX_TCP_QUERY_BYTES = 4096  # a query is a question and an OPT: anything longer is abuse
TCP_BACKLOG = 1024
UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # rides out bursts; the kernel caps it (rmem_max)
BIND_ATTEMPTS = 16  # port 0: tries to find one port free for both UDP and TCP
MAX_UDP_QUERY_BYTES = MAX_TCP_QUERY_BYTES  # a longer datagram is dropped unanswered
UDP_BATCH = 64  # datagrams answered per readiness event before the loop runs other work


@dataclass(frozen=True, slots=True)
class TcpLimits:
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_connections: int = MAX_TCP_CONNECTIONS
    max_queries_per_connection: int = MAX_QUERIES_PER_CONNECTION


class ResponderSource(Protocol):
    """Whatever holds the current responder (a reload swaps it between queries)."""

    responder: Responder


class UdpShell:
    """Answers datagrams straight off a UDP socket: no transport, no per-query allocation
    beyond the message itself.

    `read_ready` serves a non-blocking socket from the event loop: one wakeup drains up to
    UDP_BATCH datagrams. (asyncio's DatagramProtocol reads one datagram per loop iteration
    into a fresh 256 KiB buffer, which malloc turns into an mmap/munmap pair: half the CPU
    per query went there.) `serve_blocking` is a DNS worker's whole life: blocking reads on
    a socket it shares with the other workers, where the kernel wakes one reader per
    datagram, so load spreads evenly however few client flows there are.
    """

    def __init__(
        self, sock: socket.socket, source: ResponderSource, tallies: HotPathTallies
    ) -> None:
        self._sock = sock
        self._source = source
        self._duration = tallies.durations["udp"]
        self._dropped = tallies.dropped

    def read_ready(self) -> None:
        recvfrom = self._sock.recvfrom
        for _ in range(UDP_BATCH):
            try:
                data, addr = recvfrom(MAX_UDP_QUERY_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an error queued on the socket (ICMP about an earlier answer)
            self._answer(data, addr)

    def serve_blocking(self) -> None:
        recvfrom = self._sock.recvfrom
        while True:
            try:
                data, addr = recvfrom(MAX_UDP_QUERY_BYTES + 1)
            except OSError:
                continue
            self._answer(data, addr)

    def _answer(self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:
        started = perf_counter()
        if len(data) > MAX_UDP_QUERY_BYTES:
            self._dropped["oversized"] += 1
            return
        response = self._source.responder.respond(data, addr[0], "udp")
        if response is None:
            self._dropped["unanswerable"] += 1
            return
        try:
            self._sock.sendto(response, addr)
        except OSError:  # send buffer full, or the address is unreachable: UDP may drop
            self._dropped["send_failed"] += 1
            return
        self._duration.observe(perf_counter() - started)


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
        self._udp: socket.socket | None = None
        self._serving_udp = False
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._tcp_duration = metrics.tallies.durations["tcp"]

    @property
    def port(self) -> int:
        return self._port

    @property
    def udp_socket(self) -> socket.socket:
        assert self._udp is not None, "start() first"
        return self._udp

    async def start(self, serve_udp: bool = True) -> None:
        """Bind UDP and TCP on the same port (with port 0, one free for both) and serve;
        with serve_udp=False the UDP socket is bound but left to DNS worker processes."""
        udp_sock, tcp_sock = _bind_pair(self._listen)
        if serve_udp:
            shell = UdpShell(udp_sock, self, self._metrics.tallies)
            asyncio.get_running_loop().add_reader(udp_sock.fileno(), shell.read_ready)
        self._serving_udp = serve_udp
        self._udp = udp_sock
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp_sock, backlog=TCP_BACKLOG)
        self._port = udp_sock.getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._udp is not None:
            if self._serving_udp:
                asyncio.get_running_loop().remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
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
            self._metrics.tallies.dropped["tcp_connection_limit"] += 1
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
                    self._metrics.tallies.dropped["tcp_bad_length"] += 1
                    return
                message = await reader.readexactly(length)
                started = perf_counter()
                response = self.responder.respond(message, peer, "tcp")
                if response is None:
                    self._metrics.tallies.dropped["unanswerable"] += 1
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
