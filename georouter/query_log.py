"""The router's query log: one JSON line per (sampled) query, for forensics.

Off unless `[query_log] path` is set. The responder calls `record` after deciding each
answer; when the log is off the responder holds None and pays one test per query. When on,
the sample is drawn first, and only a kept query is parsed again for its name, type and
ECS option and formatted; the line goes to cdn/jsonlog.py's bounded queue, which a writer
thread drains into a file rotated by size. A full queue drops the line and counts it: a
slow disk never slows the DNS path.

Fields: time, client (the resolver's address), transport, ecs (the client subnet the
query carried, "192.0.2.0/24", or null), name, type, rcode, region (the answering region
of a geo-routed name: the client's own unless spilled or failed over; null otherwise),
client_region (where the client was placed), answer (the node addresses handed out),
reason (the selector's decision: geo, drained, spillover, failover, fail_open or
fail_closed; "static" for a name answered from the zone data; null for a malformed
query).

Every DNS worker process writes its own file (`worker_path`): several processes appending
to one file would interleave rotations. The main process (TCP, and UDP without workers)
writes `path` itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from dnslib.dns import QTYPE

from cdn.jsonlog import JsonLinesLog, JsonLogSettings
from georouter.geo import Placement
from georouter.selector import Decision
from georouter.tallies import HotPathTallies
from georouter.wire import MalformedQuery, parse

MAX_NAME_CHARS = 255  # a presentation name is at most 253 characters: longer is not one


def worker_path(path: str, index: int) -> str:
    """The file of DNS worker `index` (1-based): queries.jsonl -> queries.worker1.jsonl."""
    where = Path(path)
    return str(where.with_name(f"{where.stem}.worker{index}{where.suffix}"))


class QueryLog:
    """One process's query log; start() with the process, stop() writes what is queued."""

    def __init__(
        self,
        settings: JsonLogSettings,
        tallies: HotPathTallies,
        *,
        path: str | None = None,
        sample: Callable[[], float] = random.random,
    ) -> None:
        lines = tallies.query_log
        self._log = JsonLinesLog(
            settings,
            on_drop=lambda: lines.update(("dropped",)),
            on_write=lambda: lines.update(("written",)),
            sample=sample,
            path=path,
        )

    def start(self) -> None:
        self._log.start()

    def stop(self) -> None:
        self._log.stop()

    def record(
        self,
        data: bytes,
        client_ip: str,
        transport: str,
        rcode: str,
        decided: tuple[Placement, Decision] | None,
    ) -> None:
        """One answered query (the sample decides whether it is written)."""
        if not self._log.wanted():
            return
        fields: dict[str, object] = {"client": client_ip, "transport": transport}
        fields |= _question(data)
        fields["rcode"] = rcode
        if decided is None:
            fields |= {"region": None, "client_region": None, "answer": []}
            fields["reason"] = "static" if fields["name"] is not None else None
        else:
            placement, decision = decided
            fields["region"] = decision.region
            fields["client_region"] = placement.region
            aaaa = fields["type"] == "AAAA"  # a dual-stack node answers with the asked family
            fields["answer"] = [str(n.ipv6 if aaaa else n.ipv4 or n.ipv6) for n in decision.nodes]
            fields["reason"] = decision.reason
        self._log.write(**fields)


def _question(data: bytes) -> dict[str, object]:
    try:
        query = parse(data)
    except MalformedQuery:
        return {"ecs": None, "name": None, "type": None}
    subnet = query.edns.subnet if query.edns is not None else None
    ecs = None if subnet is None else f"{subnet.address_text}/{subnet.source_prefix}"
    qtype = QTYPE.forward.get(query.qtype, f"TYPE{query.qtype}")  # RFC 3597 §5 for unknown
    return {"ecs": ecs, "name": _text(query.name), "type": qtype}


def _text(wire: bytes) -> str:
    """A wire-format name in presentation form ("cdn.example.com."), bytes outside
    printable ASCII escaped as \\DDD (RFC 1035 §5.1)."""
    labels, pos = [], 0
    while pos < len(wire) and wire[pos]:
        label = wire[pos + 1 : pos + 1 + wire[pos]]
        labels.append("".join(chr(b) if 0x21 <= b <= 0x7E and b not in b".\\" else f"\\{b:03d}"
                              for b in label))  # fmt: skip
        pos += 1 + wire[pos]
    return (".".join(labels) + ".")[:MAX_NAME_CHARS]
