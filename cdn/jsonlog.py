"""A JSON-lines log written off the hot path: the edge's access log, the router's query log.

The caller formats the line and puts it on a bounded queue (no I/O, no lock held for
long); a QueueListener thread drains it into a RotatingFileHandler (rotation by size,
`backups` old files kept: path.1 … path.N). A full queue drops the line and says so
(`on_drop`): a slow disk never slows the program. `sample` keeps that fraction of the
lines (1.0: all), decided per line by `wanted()`. `on_write` is called by the writer
thread for each line it wrote.

Settings come from one TOML table shape, read by `parse_json_log`: `path` (none: no log),
`sample`, `max_bytes`, `backups`, `queue_size`.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler

from cdn.tomltable import Table

LOG_MAX_BYTES = 100 * 1024 * 1024  # per file before it rotates
LOG_BACKUPS = 5  # rotated files kept (path.1 ... path.5)
LOG_QUEUE = 10_000  # lines waiting for the writer thread; more are dropped
STOP_WAIT_S = 0.5  # stop() waits that long for the writer to make room for its end marker
MAX_LOG_BYTES = 1 << 40
MAX_LOG_BACKUPS = 1000
MAX_LOG_QUEUE = 10_000_000


@dataclass(frozen=True, slots=True)
class JsonLogSettings:
    """A `[access_log]` or `[query_log]` table."""

    path: str | None = None  # None: no log (the default)
    sample: float = 1.0  # the fraction of lines kept
    max_bytes: int = LOG_MAX_BYTES
    backups: int = LOG_BACKUPS
    queue_size: int = LOG_QUEUE


def parse_json_log(t: Table) -> JsonLogSettings:
    with t:
        return JsonLogSettings(
            path=t.get("path", str, None),
            sample=t.real("sample", 0, 1, 1.0, lo_open=True),
            max_bytes=t.integer("max_bytes", 1024, MAX_LOG_BYTES, LOG_MAX_BYTES),
            backups=t.integer("backups", 0, MAX_LOG_BACKUPS, LOG_BACKUPS),
            queue_size=t.integer("queue_size", 1, MAX_LOG_QUEUE, LOG_QUEUE),
        )


def _nothing() -> None:
    pass


class _Queue(QueueHandler):
    """Puts the already formatted line, never blocking, saying what does not fit."""

    def __init__(self, q: queue.Queue[logging.LogRecord], on_drop: Callable[[], None]) -> None:
        super().__init__(q)
        self._on_drop = on_drop

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._on_drop()


class _File(RotatingFileHandler):
    def __init__(self, settings: JsonLogSettings, path: str, on_write: Callable[[], None]) -> None:
        super().__init__(path, maxBytes=settings.max_bytes, backupCount=settings.backups)
        self._on_write = on_write

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self._on_write()


class _Listener(QueueListener):
    """Stops even when its queue is full (the stalled disk this log is built for):
    QueueListener puts its end marker with put_nowait, which raises queue.Full then."""

    def __init__(self, q: queue.Queue[logging.LogRecord], file: _File, on_drop: Callable[[], None]):
        super().__init__(q, file)
        self._q = q
        self._on_drop = on_drop

    def enqueue_sentinel(self) -> None:
        try:  # the writer has STOP_WAIT_S to make room
            self._q.put(self._sentinel, timeout=STOP_WAIT_S)  # type: ignore[attr-defined]
            return
        except queue.Full:
            pass
        while True:  # then the oldest lines make room, counted as dropped
            try:
                self._q.put_nowait(self._sentinel)  # type: ignore[attr-defined]
                return
            except queue.Full:
                try:
                    self._q.get_nowait()
                    self._on_drop()
                except queue.Empty:
                    pass


class JsonLinesLog:
    """Started with its program, stopped with it (stop() writes what is queued)."""

    def __init__(
        self,
        settings: JsonLogSettings,
        *,
        on_drop: Callable[[], None],
        on_write: Callable[[], None] = _nothing,
        sample: Callable[[], float] = random.random,
        path: str | None = None,  # instead of settings.path (a DNS worker's own file)
    ) -> None:
        where = path or settings.path
        assert where is not None
        self.settings = settings
        self._sample = sample
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue(settings.queue_size)
        self._enqueue = _Queue(self._queue, on_drop)
        self.file = _File(settings, where, on_write)
        self._listener = _Listener(self._queue, self.file, on_drop)

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        try:
            if self._listener._thread is not None:  # started
                self._listener.stop()
        finally:
            self.file.close()

    def wanted(self) -> bool:
        """Whether this line is kept (the sample)."""
        return self.settings.sample >= 1.0 or self._sample() < self.settings.sample

    def write(self, **fields: object) -> None:
        """Queue one line: `time` (RFC 3339, UTC, milliseconds), then `fields`."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        line = json.dumps({"time": f"{stamp}.{int(now % 1 * 1000):03d}Z", **fields})
        record = logging.LogRecord("jsonlog", logging.INFO, "", 0, line, None, None)
        self._enqueue.enqueue(record)
