"""asyncio shells around the responder: UDP datagrams and DNS over TCP (RFC 7766).

They only move bytes: every decision is `Responder.respond`. `DnsService.responder` is read
once per query, so a reload can swap it while queries are in flight.

Overload. The parser bounds the work of any one message; these shells bound how much of it a
flood can queue in front of other clients. UDP: a query that has waited in the receive
buffer longer than MAX_QUEUE_AGE_S is dropped unanswered (its asker has retried by then), so
a backlog is bounded by the time it represents, not by the buffer's size; the age is the
kernel's receive timestamp (SO_TIMESTAMPNS). Reading it costs more than the read itself, so
while the queue is fresh it is read once per AGE_CHECK_INTERVAL_S, and on every datagram
while it is stale: the queue is FIFO, so a datagram read after a fresh one arrived after it,
and one slow query cannot hide a stale run (a count of datagrams between checks would).

TCP: each client address (an IPv6 client's /64) may hold a share of the connection cap; at
either cap the oldest idle connection is closed to make room (RFC 7766 §6.2.3 lets a server
close idle connections), and only if none is idle is the new one refused. A connection
answers at most TCP_QUERIES_PER_TURN pipelined queries before other connections and the UDP
socket get a turn, and buffers at most TCP_READ_LIMIT_BYTES of them (the rest stays in the
kernel, so a client's pipeline is flow-controlled).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import math
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

from cdn.config import HostPort
from georouter.armour import Guard, random_secrets
from georouter.metrics import RouterMetrics
from georouter.responder import Responder
from georouter.tallies import HotPathTallies
from georouter.wire import HEADER

IDLE_TIMEOUT_S = 10.0  # RFC 7766 §6.2.3: close idle connections, seconds not minutes
MAX_TCP_CONNECTIONS = 256  # open at once; the oldest idle one makes room (RFC 7766 §6.2.3)
MAX_TCP_CONNECTIONS_PER_CLIENT = 32  # one address's share (§6.2.2: looser than a client's 1)
MAX_QUERIES_PER_CONNECTION = 1000
MAX_TCP_QUERY_BYTES = 4096  # a query is a question and an OPT: anything longer is abuse
TCP_QUERIES_PER_TURN = 4  # pipelined answers before the connection yields to the others
TCP_READ_LIMIT_BYTES = MAX_TCP_QUERY_BYTES + 2  # buffered per connection: about two queries
IPV6_CLIENT_PREFIX = 64  # an IPv6 client is its /64 for the per-client share
MAX_QUEUE_AGE_S = 0.5  # a datagram queued longer is dropped: resolvers retry within ~0.4-1 s
AGE_CHECK_INTERVAL_S = 0.01  # while the queue is fresh, how often a datagram's age is read
# Python does not export it; 35 is SO_TIMESTAMPNS (struct timespec) on Linux, whose
# asm-generic value most architectures share. Elsewhere queue ages are not checked.
SO_TIMESTAMPNS = 35 if sys.platform == "linux" else None
_TIMESPEC = struct.Struct("@qq")
Address = tuple[str, int] | tuple[str, int, int, int]
_TIMESTAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
TCP_BACKLOG = 1024
UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # rides out bursts; the kernel caps it (rmem_max)
BIND_ATTEMPTS = 16  # port 0: tries to find one port free for both UDP and TCP
MAX_UDP_QUERY_BYTES = MAX_TCP_QUERY_BYTES  # a longer datagram is dropped unanswered
UDP_BATCH = 64  # datagrams answered per readiness event before the loop runs other work


@dataclass(frozen=True, slots=True)
class TcpLimits:
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_connections: int = MAX_TCP_CONNECTIONS
    max_connections_per_client: int = MAX_TCP_CONNECTIONS_PER_CLIENT
    max_queries_per_connection: int = MAX_QUERIES_PER_CONNECTION


class ResponderSource(Protocol):
    """Whatever holds the current responder (a reload swaps it between queries)."""

    responder: Responder
    guard: Guard


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
        self,
        sock: socket.socket,
        source: ResponderSource,
        tallies: HotPathTallies,
        clock: Callable[[], float] = time.time,  # the receive timestamps' clock
    ) -> None:
        self._sock = sock
        self._clock = clock
        self._source = source
        self._duration = tallies.durations["udp"]
        self._dropped = tallies.dropped
        dated = SO_TIMESTAMPNS is not None and sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS)
        self._next_check = 0.0 if dated else math.inf  # monotonic time of the next age check

    def read_ready(self) -> None:
        recvfrom, monotonic = self._sock.recvfrom, time.monotonic
        for _ in range(UDP_BATCH):
            try:
                if monotonic() < self._next_check:
                    data, addr = recvfrom(MAX_UDP_QUERY_BYTES + 1)
                elif (received := self._receive_dated()) is not None:
                    data, addr = received
                else:
                    continue
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an error queued on the socket (ICMP about an earlier answer)
            self._answer(data, addr)

    def serve_blocking(self) -> None:
        recvfrom, monotonic = self._sock.recvfrom, time.monotonic
        while True:
            try:
                if monotonic() < self._next_check:
                    data, addr = recvfrom(MAX_UDP_QUERY_BYTES + 1)
                elif (received := self._receive_dated()) is not None:
                    data, addr = received
                else:
                    continue
            except OSError:
                continue
            self._answer(data, addr)

    def _receive_dated(self) -> tuple[bytes, Address] | None:
        """The next datagram with its age checked: None if it waited past MAX_QUEUE_AGE_S
        (dropped, and the next one is checked too); else no check for a while."""
        data, ancillary, _, addr = self._sock.recvmsg(MAX_UDP_QUERY_BYTES + 1, _TIMESTAMP_SPACE)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = _TIMESPEC.unpack(payload)
                if self._clock() - seconds - nanoseconds * 1e-9 > MAX_QUEUE_AGE_S:
                    self._dropped["stale"] += 1
                    return None
        self._next_check = time.monotonic() + AGE_CHECK_INTERVAL_S
        return data, addr

    def _answer(self, data: bytes, addr: Address) -> None:
        started = perf_counter()
        if len(data) > MAX_UDP_QUERY_BYTES:
            self._dropped["oversized"] += 1
            return
        source = self._source
        response = source.guard.respond(data, addr[0], "udp", source.responder)
        if response is None:
            self._dropped["unanswerable"] += 1
            return
        try:
            self._sock.sendto(response, addr)
        except OSError:  # send buffer full, or the address is unreachable: UDP may drop
            self._dropped["send_failed"] += 1
            return
        self._duration.observe(perf_counter() - started)


class CannotListen(OSError):
    """An address of the DNS listener could not be bound: which one, and the OS error."""

    def __init__(self, where: HostPort, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.where = where
        self.error = error


class DnsService:
    """The router's DNS listener: UDP and TCP on each of its host:port addresses (an IPv4
    and an IPv6 one, say). The TCP limits are the service's, shared by every address."""

    def __init__(
        self,
        responder: Responder,
        listen: HostPort | tuple[HostPort, ...],
        metrics: RouterMetrics,
        limits: TcpLimits = TcpLimits(),
        guard: Guard | None = None,  # None: cookies with a random secret, no RRL
    ) -> None:
        self.responder = responder
        self.guard = guard or Guard(random_secrets(), None, metrics.tallies)
        self._listen = listen if isinstance(listen, tuple) else (listen,)
        self._metrics = metrics
        self._limits = limits
        self._udp: list[socket.socket] = []
        self._serving_udp = False
        self._tcp: list[asyncio.Server] = []
        # Least recently active first: re-inserted at each answer, so the first idle one
        # found is the one idle longest.
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._per_client: Counter[str] = Counter()
        self._tcp_duration = metrics.tallies.durations["tcp"]

    @property
    def port(self) -> int:
        """The first address's port (the one chosen by the OS for port 0)."""
        return int(self._udp[0].getsockname()[1]) if self._udp else 0

    @property
    def addresses(self) -> tuple[HostPort, ...]:
        """Every address served, with the ports bound."""
        return tuple(
            HostPort(where.host, int(sock.getsockname()[1]))
            for where, sock in zip(self._listen, self._udp, strict=True)
        )

    @property
    def udp_socket(self) -> socket.socket:
        return self.udp_sockets[0]

    @property
    def udp_sockets(self) -> tuple[socket.socket, ...]:
        assert self._udp, "start() first"
        return tuple(self._udp)

    async def start(self, serve_udp: bool = True) -> None:
        """Bind UDP and TCP on the same port of each address (with port 0, one free for
        both) and serve; with serve_udp=False the UDP sockets are bound but left to DNS
        worker processes. An address that cannot be bound raises CannotListen."""
        try:
            for where in self._listen:
                await self._start_one(where, serve_udp)
        except BaseException:
            await self.stop()
            raise

    async def _start_one(self, where: HostPort, serve_udp: bool) -> None:
        # IPv6-only if an IPv4 address on the same port is listed too ("[::]:53" and
        # "0.0.0.0:53"); else dual-stack, as "[::]:53" alone always served IPv4 on Linux
        # (RFC 3493 §5.3, IPV6_V6ONLY).
        v6only = any(":" not in other.host and other.port == where.port for other in self._listen)
        try:
            udp_sock, tcp_sock = _bind_pair(where, v6only=v6only)
        except OSError as exc:
            raise CannotListen(where, exc) from None
        self._udp.append(udp_sock)
        if serve_udp:
            shell = UdpShell(udp_sock, self, self._metrics.tallies)
            asyncio.get_running_loop().add_reader(udp_sock.fileno(), shell.read_ready)
        self._serving_udp = serve_udp
        server = await asyncio.start_server(
            self._serve_tcp, sock=tcp_sock, backlog=TCP_BACKLOG, limit=TCP_READ_LIMIT_BYTES
        )
        self._tcp.append(server)

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        for udp in self._udp:
            if self._serving_udp:
                asyncio.get_running_loop().remove_reader(udp.fileno())
            udp.close()
        self._udp = []
        for server in self._tcp:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._tcp:
            await server.wait_closed()
        self._tcp = []

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        client = _client_of(str(writer.get_extra_info("peername")[0]))
        if task is None or not self._make_room(client):
            writer.transport.abort()
            return
        connection = _Connection(client, writer)
        self._connections[task] = connection
        self._per_client[client] += 1
        self._metrics.tcp_connections.inc()
        try:
            await self._converse(reader, writer, task, connection)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client left, stalled or stopped mid-message: just close
        finally:
            self._forget(task)
            writer.transport.abort()

    def _make_room(self, client: str) -> bool:
        """Whether a new connection from `client` may be served, closing the oldest idle
        one (that client's, at its share; anyone's, at the cap) to make room."""
        limits = self._limits
        if self._per_client[client] >= limits.max_connections_per_client:
            if self._close_idle(client):
                return True
            self._metrics.tallies.dropped["tcp_client_limit"] += 1
            return False
        if len(self._connections) >= limits.max_connections:
            if self._close_idle(None):
                return True
            self._metrics.tallies.dropped["tcp_connection_limit"] += 1
            return False
        return True

    def _close_idle(self, client: str | None) -> bool:
        for task, connection in self._connections.items():
            if connection.idle and client in (None, connection.client):
                self._forget(task)
                connection.writer.close()  # FIN: the client sees the end between messages
                self._metrics.tallies.dropped["tcp_idle_closed"] += 1
                return True
        return False

    def _forget(self, task: asyncio.Task[None]) -> None:
        connection = self._connections.pop(task, None)
        if connection is not None:
            self._per_client[connection.client] -= 1
            if not self._per_client[connection.client]:
                del self._per_client[connection.client]
            self._metrics.tcp_connections.dec()

    async def _converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[None],
        connection: _Connection,
    ) -> None:
        """Answer queries in order (pipelined ones too) until EOF, idleness or a limit."""
        peer = str(writer.get_extra_info("peername")[0])
        for answered in range(1, self._limits.max_queries_per_connection + 1):
            async with asyncio.timeout(self._limits.idle_timeout_s):
                connection.idle = True
                try:
                    prefix = await reader.readexactly(2)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    return  # EOF between messages: the normal end
                connection.idle = False
                length = int.from_bytes(prefix)
                if not HEADER.size <= length <= MAX_TCP_QUERY_BYTES:
                    self._metrics.tallies.dropped["tcp_bad_length"] += 1
                    return
                message = await reader.readexactly(length)
                started = perf_counter()
                response = self.guard.respond(message, peer, "tcp", self.responder)
                if task not in self._connections:
                    return  # closed to make room while it read: it was idle after all
                self._connections[task] = self._connections.pop(task)  # most recently active
                if response is None:
                    self._metrics.tallies.dropped["unanswerable"] += 1
                    continue
                writer.write(len(response).to_bytes(2) + response)
                self._tcp_duration.observe(perf_counter() - started)
                await writer.drain()
                if answered % TCP_QUERIES_PER_TURN == 0:
                    await asyncio.sleep(0)  # pipelined queries never wait on the loop: yield


@dataclass(slots=True, eq=False)
class _Connection:
    client: str  # the per-client share's key
    writer: asyncio.StreamWriter
    idle: bool = True  # between messages: may be closed to make room


def _client_of(peer: str) -> str:
    """The key of a client's share: its address, or an IPv6 address's /64."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if address.version == 4:
        return peer
    return str(ipaddress.ip_network((address, IPV6_CLIENT_PREFIX), strict=False))


def _bind_pair(listen: HostPort, *, v6only: bool) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to one address and port."""
    for _ in range(BIND_ATTEMPTS):
        udp = _bound(listen.host, listen.port, socket.SOCK_DGRAM, v6only)
        try:
            return udp, _bound(listen.host, udp.getsockname()[1], socket.SOCK_STREAM, v6only)
        except OSError as exc:
            udp.close()
            if listen.port or exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {listen.host}")


def _bound(host: str, port: int, kind: socket.SocketKind, v6only: bool) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES)
            if SO_TIMESTAMPNS is not None:
                with contextlib.suppress(OSError):  # without it, queue ages go unchecked
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
