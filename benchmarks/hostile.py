"""Hostile traffic: mutated datagrams and abusive TCP streams at a running router.

One router (`georouter serve` on georouter/data/cdn.toml, loopback, ports chosen by the kernel; no
edges, so it answers from the configured nodes) takes at least 1,000,000 UDP datagrams
made by the fuzz mutator (fuzz/mutator.py) from dnspython-made queries (ECS, OPT, DO,
0x20 case; fuzz/dns_target.py), a tenth of them plain random bytes, sent at 20,000/s for
at most 150 s (a sender too slow for the million fails the verdict, saying so), then
10,000 TCP streams of five kinds: a garbage length prefix, an oversized message, a valid
query left half-sent (slowloris-style, then abandoned), a valid query dribbled a few
octets at a time, pipelined messages (valid, mutated and junk after them); and 16
connections held idle until the router closes them. Every reply is checked as the fuzz
target checks it (ID, QR, size within the requestor's payload, parsed by dnspython); the
largest reply-to-query byte ratio over UDP is the amplification a spoofed source could
get from one datagram. At the end the router must still be running and answer a normal
query over UDP and TCP; every ERROR line it logged is counted. The goals: no crash, no
malformed reply, no error logged, no stream left open after the client's end. BENCH_QUICK=1
sends 20,000 datagrams and 1,000 streams, and holds none idle.
"""

from __future__ import annotations

import asyncio
import random
import re
import select
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from benchmarks.report import Table, fmt
from cdnlab.supervisor import running
from fuzz.dns_target import TOKENS as DNS_TOKENS
from fuzz.dns_target import check_reply, dns_seeds
from fuzz.mutator import Mutator
from fuzz.runner import FuzzFailure
from georouter.dns_server import IDLE_TIMEOUT_S, MAX_UDP_QUERY_BYTES
from georouter.responder import MIN_UDP_PAYLOAD, Transport
from georouter.wire import MalformedQuery, parse

LOOPBACK = "127.0.0.1"
SEND_BATCH = 64  # datagrams between receive drains and pacing checks
RANDOM_SHARE = 0.1  # datagrams of plain random bytes rather than mutated queries
MAX_RANDOM_BYTES = 600
DRAIN_S = 1.0  # after the last datagram, replies still in flight
STREAM_READ_S = 2.0  # a stream's replies (or the router's close) arrive within this
HOLD_MARGIN_S = 5.0  # an idle connection is closed by IDLE_TIMEOUT_S plus this
HEALTH_TIMEOUT_S = 2.0
HEALTH_ATTEMPTS = 3
ERROR_LINE = re.compile(r"level=(ERROR|CRITICAL)|Traceback")
KINDS = ("garbage_prefix", "oversized", "half_sent", "dribbled", "pipelined")
CHECK_CACHE_ENTRIES = 200_000  # verdicts by (reply less ID, payload): most replies repeat


@dataclass(frozen=True, slots=True)
class Load:
    datagrams: int
    datagrams_per_s: float
    streams: int
    stream_concurrency: int
    held_idle: int  # connections kept open and silent until the router closes them
    max_udp_s: float = 150.0  # a sender slower than the rate stops here (the verdict says so)


FULL_LOAD = Load(1_000_000, 20_000.0, 10_000, 64, held_idle=16)
QUICK_LOAD = Load(20_000, 10_000.0, 1_000, 64, held_idle=0, max_udp_s=10.0)


@dataclass(slots=True)
class Tally:
    """What the run saw; every reply is judged by `judge` before it is counted."""

    datagrams: int = 0
    udp_replies: int = 0
    streams: Counter[str] = field(default_factory=Counter)
    tcp_replies: int = 0
    malformed: Counter[str] = field(default_factory=Counter)  # by reason
    malformed_example: str = ""  # query and reply in hex, the first seen
    ratio: float = 0.0  # the largest UDP reply / query in octets
    ratio_query: bytes = b""
    held_closed: int = 0  # idle connections the router closed in time
    stuck: int = 0  # streams the router kept open after our EOF
    reset: int = 0  # streams refused or reset while we still wrote
    _verdicts: dict[tuple[bytes, int | None, Transport], str | None] = field(default_factory=dict)

    def judge(self, query: bytes, reply: bytes, transport: Transport) -> bool:
        """Count one reply; False (and counted as malformed) if it is not a proper answer."""
        # The payload only matters for a UDP reply over 512 octets (RFC 6891 §6.2.5): the
        # full parse that reads it is skipped for the rest.
        payload = _payload(query) if transport == "udp" and len(reply) > MIN_UDP_PAYLOAD else None
        key = (reply[2:], payload, transport)
        problem = self._verdicts.get(key, "")
        if problem == "":
            problem = reply_problem(query, reply, transport, payload)
            if len(self._verdicts) < CHECK_CACHE_ENTRIES:
                self._verdicts[key] = problem
        elif reply[:2] != query[:2]:
            problem = "answer does not carry the query's ID"
        if problem is None:
            return True
        self.malformed[problem.split(":")[0]] += 1
        if not self.malformed_example:
            self.malformed_example = f"query {query.hex()} reply {reply.hex()}"
        return False

    def note_ratio(self, query: bytes, reply: bytes) -> None:
        ratio = len(reply) / max(len(query), 1)
        if ratio > self.ratio:
            self.ratio, self.ratio_query = ratio, query


@dataclass(frozen=True, slots=True)
class Outcome:
    load: Load
    tally: Tally
    alive: bool
    answers_normal_query: bool
    errors_logged: int
    seconds: float
    first_error: str = ""


def reply_problem(
    query: bytes, reply: bytes, transport: Transport, payload: int | None
) -> str | None:
    """None for a well-formed answer to `query` (the fuzz target's oracle), else why not."""
    try:
        check_reply(query, reply, transport, payload)
    except FuzzFailure as exc:
        return str(exc)
    return None


def _payload(query: bytes) -> int | None:
    try:
        edns = parse(query).edns
    except MalformedQuery as exc:
        edns = exc.edns
    return None if edns is None else edns.payload


def verdict(outcome: Outcome) -> list[str]:
    """The goals missed; empty when the router passed."""
    problems = []
    if (sent := outcome.tally.datagrams) < outcome.load.datagrams:
        problems.append(f"only {sent:,} datagrams sent in {outcome.load.max_udp_s:.0f} s")
    if not outcome.alive:
        problems.append("the router process died")
    elif not outcome.answers_normal_query:
        problems.append("the router no longer answers a normal query")
    if malformed := sum(outcome.tally.malformed.values()):
        problems.append(f"{malformed:,} malformed replies")
    if outcome.tally.stuck:
        problems.append(f"{outcome.tally.stuck:,} TCP streams left open after the client's EOF")
    if outcome.errors_logged:
        problems.append(f"{outcome.errors_logged} ERROR lines logged")
    if outcome.load.held_idle and outcome.tally.held_closed < outcome.load.held_idle:
        held = outcome.load.held_idle - outcome.tally.held_closed
        problems.append(f"{held} idle connections not closed by the router")
    return problems


def hostile_table(outcome: Outcome) -> Table:
    tally, load = outcome.tally, outcome.load
    crashes = 0 if outcome.alive and outcome.answers_normal_query else 1
    malformed = sum(tally.malformed.values())
    streams = ", ".join(f"{kind} {tally.streams[kind]:,}" for kind in KINDS)
    rows = [
        ["UDP datagrams sent", fmt(tally.datagrams), f"≥ {load.datagrams:,}"],
        ["UDP answers", fmt(tally.udp_replies), ""],
        ["TCP streams", f"{sum(tally.streams.values()):,} ({streams})", f"≥ {load.streams:,}"],
        ["TCP answers", fmt(tally.tcp_replies), ""],
        ["TCP streams reset while sending", fmt(tally.reset), ""],
        ["crashes", str(crashes), "0"],
        ["malformed replies", fmt(malformed), "0"],
        ["ERROR lines logged", str(outcome.errors_logged), "0"],
        ["TCP streams left open after EOF", fmt(tally.stuck), "0"],
        ["largest UDP reply/query bytes", fmt(tally.ratio, 2), ""],
    ]
    if load.held_idle:
        rows.append(["idle connections closed", f"{tally.held_closed}/{load.held_idle}", "all"])
    problems = verdict(outcome)
    notes = [
        f"{outcome.seconds:.0f} s; datagrams sent at {load.datagrams_per_s:,.0f}/s; a datagram "
        "without an answer is one the router drops by design (no readable header, QR set, "
        f"over {MAX_UDP_QUERY_BYTES} octets) or one lost on a loaded machine.",
        f"Largest ratio from the query {tally.ratio_query.hex() or 'n/a'}.",
        "Verdict: " + ("all goals met." if not problems else "; ".join(problems) + "."),
    ]
    if tally.malformed_example:
        notes.append(f"First malformed reply: {tally.malformed_example[:400]}")
    if outcome.first_error:
        notes.append(f"First ERROR line: {outcome.first_error[:300]}")
    return Table("Hostile traffic at a running router", ["what", "count", "goal"], rows, notes)


def run(config_path: Path, load: Load, seed: int = 15) -> Outcome:
    """Start a router, send the hostile load, check it survived; the router is stopped."""
    argv = [sys.executable, "-m", "georouter", "serve", "--config", str(config_path)]
    argv += ["--dns", f"{LOOPBACK}:0", "--control", f"{LOOPBACK}:0"]
    started = time.monotonic()
    with running("georouter-hostile", argv, ready_event="listening") as service:
        host, port = service.ready()["dns"].rsplit(":", 1)
        where = (host, int(port))
        tally = Tally()
        send_datagrams(where, load, tally, random.Random(seed))
        asyncio.run(send_streams(where, load, tally, random.Random(seed + 1)))
        alive = service.alive()
        healthy = alive and answers_normal_query(where)
        log = service.child.log_path.read_text(errors="replace").splitlines()
        errors = [line for line in log if ERROR_LINE.search(line)]
        return Outcome(
            load, tally, alive, healthy, len(errors), time.monotonic() - started,
            errors[0] if errors else "",
        )  # fmt: skip


def hostile_queries(rng: random.Random) -> Callable[[], bytes]:
    """Mutated valid queries, and now and then plain random bytes."""
    mutator = Mutator(dns_seeds(), DNS_TOKENS, rng.randrange(2**32), MAX_UDP_QUERY_BYTES + 64)

    def next_query() -> bytes:
        if rng.random() < RANDOM_SHARE:
            return rng.randbytes(rng.randint(0, MAX_RANDOM_BYTES))
        return mutator.generate()

    return next_query


def send_datagrams(where: tuple[str, int], load: Load, tally: Tally, rng: random.Random) -> None:
    """Send `load.datagrams` at the load's rate, judging every reply as it comes."""
    make = hostile_queries(rng)
    pending: dict[bytes, bytes] = {}  # ID -> the query that carried it, last 65,536
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.connect(where)
        sock.setblocking(False)
        interval = SEND_BATCH / load.datagrams_per_s
        next_batch = time.monotonic()
        stop = next_batch + load.max_udp_s
        for start in range(0, load.datagrams, SEND_BATCH):
            if time.monotonic() > stop:
                break
            for serial in range(start, min(start + SEND_BATCH, load.datagrams)):
                query = make()
                if len(query) >= 2:  # a unique ID, so the reply finds its query
                    query = (serial & 0xFFFF).to_bytes(2) + query[2:]
                    pending[query[:2]] = query
                try:
                    sock.send(query)
                except BlockingIOError:
                    select.select([], [sock], [], 0.01)
                    continue
                tally.datagrams += 1
            next_batch += interval
            _receive(sock, pending, tally, max(0.0, next_batch - time.monotonic()))
        _receive(sock, pending, tally, DRAIN_S, until_quiet=True)


def _receive(
    sock: socket.socket,
    pending: dict[bytes, bytes],
    tally: Tally,
    wait_s: float,
    until_quiet: bool = False,
) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            reply = sock.recv(65535)
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                return
            continue
        except ConnectionRefusedError:
            continue  # an ICMP error about an earlier datagram
        tally.udp_replies += 1
        query = pending.pop(reply[:2], None)
        if query is None:
            tally.malformed["reply to no query sent"] += 1
            continue
        if tally.judge(query, reply, "udp"):
            tally.note_ratio(query, reply)
        if until_quiet:
            deadline = time.monotonic() + DRAIN_S


async def send_streams(
    where: tuple[str, int], load: Load, tally: Tally, rng: random.Random
) -> None:
    """`load.streams` hostile TCP streams, `stream_concurrency` at a time, and the held ones."""
    make = hostile_queries(rng)
    seeds = dns_seeds()
    gate = asyncio.Semaphore(load.stream_concurrency)

    async def one(index: int) -> None:
        async with gate:
            kind = KINDS[index % len(KINDS)]
            tally.streams[kind] += 1
            await _stream(where, kind, tally, rng, make, seeds)

    held = [asyncio.create_task(_hold_idle(where, tally)) for _ in range(load.held_idle)]
    await asyncio.gather(*(one(i) for i in range(load.streams)))
    await asyncio.gather(*held)


async def _stream(
    where: tuple[str, int],
    kind: str,
    tally: Tally,
    rng: random.Random,
    make: Callable[[], bytes],
    seeds: list[bytes],
) -> None:
    try:
        reader, writer = await asyncio.open_connection(*where)
    except OSError:
        tally.reset += 1
        return
    sent: dict[bytes, bytes] = {}
    try:
        if kind == "garbage_prefix":
            length = rng.choice((0, 1, 11, MAX_UDP_QUERY_BYTES + 1, 65535, rng.randrange(65536)))
            writer.write(length.to_bytes(2) + rng.randbytes(rng.randint(0, 200)))
        elif kind == "oversized":
            length = rng.randint(MAX_UDP_QUERY_BYTES + 1, 65535)
            writer.write(length.to_bytes(2) + rng.randbytes(min(length, 8192)))
        elif kind == "half_sent":
            query = rng.choice(seeds)
            cut = rng.randint(1, len(query) + 1)
            writer.write((len(query).to_bytes(2) + query)[:cut])
            await writer.drain()
            await asyncio.sleep(0.01)  # a client that stalls, then gives up
            return
        elif kind == "dribbled":
            query = _stamped(rng.choice(seeds), 1, sent)
            message = len(query).to_bytes(2) + query
            for at in range(0, len(message), 5):
                if writer.transport.is_closing():
                    return
                writer.write(message[at : at + 5])
                await writer.drain()
                await asyncio.sleep(0.001)
        else:  # pipelined: valid and mutated messages, then junk, in one write
            burst = b""
            for serial in range(rng.randint(2, 10)):
                query = rng.choice(seeds) if serial % 2 else make()
                query = _stamped(query, serial + 1, sent) if len(query) >= 2 else query
                burst += len(query).to_bytes(2) + query
            writer.write(burst + rng.randbytes(rng.randint(0, 64)))
        await writer.drain()
        writer.write_eof()  # done sending: the router must answer what it can and close
        await _read_replies(reader, sent, tally)
    except OSError:
        tally.reset += 1  # closed on us mid-write: its right with garbage, or at its cap
    finally:
        writer.transport.abort()


def _stamped(query: bytes, ident: int, sent: dict[bytes, bytes]) -> bytes:
    query = ident.to_bytes(2) + query[2:]
    sent[query[:2]] = query
    return query


async def _read_replies(
    reader: asyncio.StreamReader, sent: dict[bytes, bytes], tally: Tally
) -> None:
    """Length-prefixed replies until the router closes; a stream it keeps open past
    STREAM_READ_S after our end of it is counted as stuck."""
    try:
        async with asyncio.timeout(STREAM_READ_S):
            while True:
                try:
                    prefix = await reader.readexactly(2)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        tally.malformed["truncated TCP reply"] += 1
                    return  # the router closed: the normal end
                try:
                    reply = await reader.readexactly(int.from_bytes(prefix))
                except asyncio.IncompleteReadError:
                    tally.malformed["truncated TCP reply"] += 1
                    return
                tally.tcp_replies += 1
                query = sent.pop(reply[:2], None)
                if query is None:
                    tally.malformed["reply to no query sent"] += 1
                else:
                    tally.judge(query, reply, "tcp")
    except TimeoutError:
        tally.stuck += 1


async def _hold_idle(where: tuple[str, int], tally: Tally) -> None:
    """A silent connection: the router must close it after its idle timeout."""
    reader, writer = await asyncio.open_connection(*where)
    try:
        async with asyncio.timeout(IDLE_TIMEOUT_S + HOLD_MARGIN_S):
            await reader.read()
        tally.held_closed += 1
    except TimeoutError:
        pass
    finally:
        writer.transport.abort()


def answers_normal_query(where: tuple[str, int]) -> bool:
    """A plain A query for the service name, over UDP and over TCP, answered with data."""
    query = dns.message.make_query("cdn.example.com.", "A", use_edns=0)
    for _ in range(HEALTH_ATTEMPTS):
        try:
            by_udp = dns.query.udp(query, where[0], port=where[1], timeout=HEALTH_TIMEOUT_S)
            by_tcp = dns.query.tcp(query, where[0], port=where[1], timeout=HEALTH_TIMEOUT_S)
        except (OSError, dns.exception.Timeout):
            continue
        return all(r.rcode() == dns.rcode.NOERROR and r.answer for r in (by_udp, by_tcp))
    return False
