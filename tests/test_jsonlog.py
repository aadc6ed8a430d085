"""cdn/jsonlog.py: stopping a log whose writer is stalled (a slow disk)."""

from __future__ import annotations

import threading
from pathlib import Path

from cdn.jsonlog import JsonLinesLog, JsonLogSettings


def test_stop_with_a_full_queue_does_not_raise_queue_full_and_closes_the_file(
    tmp_path: Path,
) -> None:
    """QueueListener.stop() puts its end marker with put_nowait: on a full queue that
    raised queue.Full out of Router.stop and the workers' SIGTERM handler."""
    path = tmp_path / "log.jsonl"
    writing, go_on = threading.Event(), threading.Event()
    dropped = []

    def on_write() -> None:  # the disk stalls after the first line
        writing.set()
        go_on.wait()

    def on_drop() -> None:
        dropped.append(1)
        go_on.set()  # stop() made room by dropping the oldest line: the disk recovers

    log = JsonLinesLog(JsonLogSettings(str(path), queue_size=3), on_drop=on_drop, on_write=on_write)
    log.start()
    try:
        log.write(n=0)
        assert writing.wait(timeout=10)  # the writer holds line 0, the queue is empty
        for n in range(1, 4):
            log.write(n=n)
        assert not dropped  # the queue is full, nothing dropped yet
        log.stop()
    finally:
        go_on.set()
    assert log.file.stream is None  # closed
    assert dropped == [1]
    assert [line.count('"n": ') for line in path.read_text().splitlines()] == [1, 1, 1]
