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
MAX_UDP_QUERY_BYTES = MAX_TCP_QUERY_BYTES  # a longer datagram is dropped unanswered
UDP_BATCH = 64  # datagrams answered per readiness event before the loop runs other work


@dataclass(frozen=True, slots=True)
class TcpLimits:
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_connections: int = MAX_TCP_CONNECTIONS
    max_queries_per_connection: int = MAX_QUERIES_PER_CONNECTION


class _UdpReader:
    """Answers datagrams straight off the socket when the event loop says it is readable.

    Cheaper per query than asyncio's DatagramProtocol, which reads one datagram per loop
    iteration into a fresh 256 KiB buffer (malloc turns that into an mmap/munmap pair) and
    routes every send through a transport: here one wakeup drains up to UDP_BATCH
    datagrams with small reads, and answers go out with one sendto each.
    """

    def __init__(self, sock: socket.socket, service: DnsService, metrics: RouterMetrics) -> None:
        self._sock = sock
        self._service = service
        self._duration = metrics.tallies.durations["udp"]
        self._metrics = metrics

    def read_ready(self) -> None:
        recvfrom, sendto = self._sock.recvfrom, self._sock.sendto
        observe, service = self._duration.observe, self._service
        for _ in range(UDP_BATCH):
            try:
                data, addr = recvfrom(MAX_UDP_QUERY_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an error queued on the socket (ICMP about an earlier answer)
            started = perf_counter()
            response = (
                service.responder.respond(data, addr[0], "udp")
                if len(data) <= MAX_UDP_QUERY_BYTES
                else None
            )
            if response is None:
                self._drop("unanswerable")
                continue
            try:
                sendto(response, addr)
            except OSError:  # send buffer full, or the address is unreachable: UDP may drop
                self._drop("send_failed")
                continue
            observe(perf_counter() - started)

    def _drop(self, reason: str) -> None:
        self._metrics.dropped.labels(reason=reason).inc()


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
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._tcp_duration = metrics.tallies.durations["tcp"]

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        """Bind UDP and TCP on the same port (with port 0, one free for both) and serve."""
        udp_sock, tcp_sock = _bind_pair(self._listen)
        reader = _UdpReader(udp_sock, self, self._metrics)
        asyncio.get_running_loop().add_reader(udp_sock.fileno(), reader.read_ready)
        self._udp = udp_sock
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp_sock, backlog=TCP_BACKLOG)
        self._port = udp_sock.getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._udp is not None:
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
