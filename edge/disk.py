"""The cache's second level: every stored response also lives in a file under cache.disk_path.

Theory of operation. One file per slot (host, target, Vary), named by a hash of the
slot and holding a checked record (edge/disk_format.py). The index is an
:class:`~edge.store.Store` of record heads with the byte budget ``cache.disk_size`` and
the memory level's eviction policy; it is changed only on the event loop, at once,
while the file operations it implies (write, unlink) go, in the same order, through a
bounded FIFO to one worker thread. So a purge queued after a write removes that write's
file, and the index always says what the files will be. A full queue drops the write
(counted) and leaves the index as it was.

A write goes to ``<name>.tmp``, is fsynced if ``cache.disk_fsync``, then renamed over
the name: a reader or a restart sees the old record or the new one, never half of one.
Stores are written within a second unless the queue is full, so a kill -9 loses at most
the last second of them.

At start a thread scans the directory: temporary files are deleted; each record's
header and meta are read and its length checked (a torn file is deleted). Until the
scan ends the level is not ``loaded`` (/healthz says 503); purges that arrive meanwhile
are replayed on the loaded index. Disk hits also wait for ``purges_synced``: the first
report reply from a router (which carries the purges this edge missed while down) has
been applied, or no router is configured.

A read checks the record's digest in the worker pool; a corrupt record is dropped,
counted and logged, never served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge.disk_format import (
    HEADER_BYTES,
    CorruptRecord,
    RecordHead,
    decode_entry,
    encode_meta,
    parse_head,
    record_header,
    record_name,
)
from edge.entry import CacheEntry, Vary
from edge.eviction import PolicyName, make_policy
from edge.metrics import EdgeMetrics
from edge.store import SlotKey, Store

__all__ = ["WRITE_QUEUE_LENGTH", "DiskLevel"]

WRITE_QUEUE_LENGTH: Final = 1024  # pending file operations; a write beyond is dropped
# (unlinks are always queued: they carry no bytes, and a purge must reach the disk)
SCAN_PREFIX_BYTES: Final = 64 * 1024  # header + meta of almost every record in one read
_SUFFIX: Final = ".rec"
_TMP: Final = ".tmp"

log = logging.getLogger("edge.disk")


@dataclass(frozen=True, slots=True)
class _Write:
    name: str
    meta: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class _Unlink:
    name: str


class DiskLevel:
    """The on-disk level under the memory store (edge.cache.LowerLevel)."""

    def __init__(
        self,
        path: Path,
        *,
        size_bytes: int,
        policy: PolicyName,
        fsync: bool,
        metrics: EdgeMetrics,
    ) -> None:
        self.path = path
        self._fsync = fsync
        self._m = metrics
        self.index: Store[RecordHead] = Store(
            size_bytes, make_policy(policy), size_bytes, on_victim=self._evicted
        )
        self.loaded = False
        self.purges_synced = False
        self._early: list[Callable[[], None]] = []  # purges before the index was loaded
        self._queue: deque[_Write | _Unlink] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        """Whether disk copies may be served: index loaded, missed purges applied."""
        return self.loaded and self.purges_synced

    async def start(self) -> None:
        """Begin the index scan and the writer; returns at once. OSError if the
        directory cannot be made or written (the caller names the setting)."""
        self.path.mkdir(parents=True, exist_ok=True)
        probe = self.path / ("probe" + _TMP)
        probe.write_bytes(b"")
        probe.unlink()
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Finish the queued file operations, then stop."""
        if self._task is None:
            return
        self._queue.append(_Unlink(""))  # a marker: the writer stops after it
        self._wake.set()
        await asyncio.gather(self._task, return_exceptions=True)

    # LowerLevel: called by the cache on the event loop.

    def stored(self, host: str, target: str, entry: CacheEntry) -> None:
        if len(self._queue) >= WRITE_QUEUE_LENGTH:
            # Dropped: the older record of this slot must not outlive the newer answer.
            self._m.disk_write_drops.inc()
            self._drop([(host, target, entry.vary)], lambda: None)
            return
        meta = encode_meta(host, target, entry)
        size = HEADER_BYTES + len(meta) + len(entry.body)
        head = RecordHead(host, target, entry.vary, entry.surrogate_keys, {}, 0, size)
        name = record_name(host, target, entry.vary)
        if self.index.put((host, target, entry.vary), head, size, entry.surrogate_keys):
            self._submit(_Write(name, meta, entry.body))
        else:
            self.removed(host, target, entry.vary)  # larger than the whole disk budget

    def removed(self, host: str, target: str, vary: Vary) -> None:
        self._drop([(host, target, vary)], lambda: self.removed(host, target, vary))

    def removed_url(self, host: str, target: str) -> None:
        slots = [(host, target, v) for v, _ in self.index.variants(host, target)]
        self._drop(slots, lambda: self.removed_url(host, target))

    def removed_prefix(self, host: str, prefix: str) -> None:
        slots = [k for k in self.index.slot_keys() if k[0] == host and k[1].startswith(prefix)]
        self._drop(slots, lambda: self.removed_prefix(host, prefix))

    def removed_key(self, key: str, host: str | None) -> None:
        slots = [k for k in self.index.tagged(key) if host is None or k[0] == host]
        self._drop(slots, lambda: self.removed_key(key, host))

    async def read(self, host: str, target: str) -> list[CacheEntry]:
        """Every intact stored variant of host+target (a corrupt one is dropped, counted)."""
        if not self.serving:
            return []
        found = []
        for variant, head in self.index.variants(host, target):
            name = record_name(host, target, variant)
            try:
                data = await asyncio.to_thread(self._file(name).read_bytes)
                got_host, got_target, entry = decode_entry(data)
                if (got_host, got_target, entry.vary) != (host, target, variant):
                    raise CorruptRecord("record of another slot")
            except (OSError, CorruptRecord) as exc:
                self._m.cache_level_errors.labels("disk", "read").inc()
                log.warning("event=disk_record_dropped file=%s error=%s", name, _quote(exc))
                self._drop([(host, target, variant)], lambda: None)
                continue
            if self.index.value((host, target, variant)) is not head:
                continue  # purged or replaced while it was read: not this record
            self.index.touch((host, target, variant))
            found.append(entry)
        return found

    def update_gauges(self) -> None:
        self._m.cache_level_objects.labels("disk").set(len(self.index))
        self._m.cache_level_bytes.labels("disk").set(self.index.bytes)

    # Internals.

    def _drop(self, slots: list[SlotKey], again: Callable[[], None]) -> None:
        if not self.loaded:
            self._early.append(again)
        for slot in slots:
            if self.index.remove(slot):
                self._submit(_Unlink(_slot_name(slot)))

    def _evicted(self, slot: SlotKey, _head: RecordHead) -> None:
        self._m.cache_level_evictions.labels("disk").inc()
        self._submit(_Unlink(_slot_name(slot)))

    def _submit(self, op: _Write | _Unlink) -> None:
        self._queue.append(op)
        self._wake.set()

    def _file(self, name: str) -> Path:
        return self.path / name[:2] / (name + _SUFFIX)

    async def _run(self) -> None:
        try:
            heads, dropped = await asyncio.to_thread(self._scan)
        except OSError as exc:  # an unreadable directory: start empty rather than never
            self._m.cache_level_errors.labels("disk", "read").inc()
            log.error("event=disk_scan_failed path=%s error=%s", self.path, _quote(exc))
            heads, dropped = [], 0
        for head in heads:
            slot = (head.host, head.target, head.vary)
            lean = dataclasses.replace(head, meta={})  # the index keeps no headers
            self.index.put(slot, lean, head.file_bytes, head.surrogate_keys)
        self.loaded = True
        for again in self._early:
            again()
        self._early.clear()
        log.info(
            "event=disk_index_loaded path=%s objects=%d bytes=%d dropped=%d",
            self.path, len(self.index), self.index.bytes, dropped,
        )  # fmt: skip
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                op = self._queue.popleft()
                if isinstance(op, _Unlink) and not op.name:
                    return
                await self._apply(op)

    async def _apply(self, op: _Write | _Unlink) -> None:
        try:
            if isinstance(op, _Write):
                await asyncio.to_thread(self._write, op)
            else:
                await asyncio.to_thread(self._file(op.name).unlink, missing_ok=True)
        except OSError as exc:
            self._m.cache_level_errors.labels("disk", "write").inc()
            log.warning("event=disk_write_failed file=%s error=%s", op.name, _quote(exc))
            if isinstance(op, _Write):
                self._forget(op.name)

    def _forget(self, name: str) -> None:
        """A write failed (disk full?): the index must not name a file that is not there."""
        for slot in self.index.slot_keys():
            if _slot_name(slot) == name:
                self.index.remove(slot)

    def _write(self, op: _Write) -> None:
        final = self._file(op.name)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_suffix(_TMP)
        with open(tmp, "wb") as f:
            f.write(record_header(op.meta, op.body))
            f.write(op.meta)
            f.write(op.body)
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, final)

    def _scan(self) -> tuple[list[RecordHead], int]:
        """Every intact record head under the path; deletes temporaries and torn files."""
        self.path.mkdir(parents=True, exist_ok=True)
        heads: list[RecordHead] = []
        dropped = 0
        for file in self.path.glob("*/*"):
            if file.suffix != _SUFFIX:
                file.unlink(missing_ok=True)  # an interrupted write
                continue
            try:
                heads.append(_read_head(file))
            except (OSError, CorruptRecord) as exc:
                dropped += 1
                self._m.cache_level_errors.labels("disk", "read").inc()
                log.warning("event=disk_record_dropped file=%s error=%s", file.name, _quote(exc))
                file.unlink(missing_ok=True)
        return heads, dropped


def _read_head(file: Path) -> RecordHead:
    with open(file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(SCAN_PREFIX_BYTES)
        head = None
        try:
            head = parse_head(prefix, size)
        except CorruptRecord:
            if len(prefix) < SCAN_PREFIX_BYTES or size < HEADER_BYTES:
                raise
        if head is None:  # meta longer than the first read
            f.seek(0)
            head = parse_head(f.read(min(size, HEADER_BYTES + (1 << 20))), size)
    if record_name(head.host, head.target, head.vary) + _SUFFIX != file.name:
        raise CorruptRecord("record of another slot")
    return head


def _slot_name(slot: SlotKey) -> str:
    return record_name(*slot)


def _quote(exc: BaseException) -> str:
    return repr(str(exc))
