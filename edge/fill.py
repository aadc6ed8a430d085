"""A fill running in the background, read by a client while it arrives (Range on a miss).

Theory of operation. A Range request for an uncached object (edge/ranges.py early_range)
leads its key's flight and starts the fetch of the *whole* object as a background task:
the task outlives the client's request, so the object is stored even if that client only
wanted its first bytes and left. The task publishes the answer's head here, then each
chunk; the client's 206 is cut from the chunks as they arrive, so it goes out as soon as
its bytes are in rather than after the whole object. Other requests for the key follow
the flight as usual (edge/coalesce.py): one origin fetch for everyone.

Published heads:
    FillHead, length known  -> a storable 200 the store can take: the range is sent
                               from the chunks as they arrive (206, or 416 at once)
    FillHead, length None   -> storable, but of unknown length or another status: the
                               client waits for the fill, then is answered from the store
    PassOn                  -> not storable: the fill hands its answer to the client,
                               which relays it as it is (nothing stored, one fetch)
    None                    -> the fill ended without an answer to hand on (cancelled)
A fill that fails (the origin breaks, a digest mismatch) fails the reader: before the head
it gets the error, after it a cut response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edge.directives import Headers
from edge.errors import OriginError
from edge.origin import OriginResponse


@dataclass(frozen=True, slots=True)
class FillHead:
    """The head of a background fill's answer, as its waiting client needs it."""

    status: int
    headers: Headers
    length: int | None  # None: the range cannot be cut as the body arrives
    member: str  # this cache's Cache-Status member for the waiting client


@dataclass(frozen=True, slots=True)
class PassOn:
    """An answer the store will not keep, handed to the waiting client to relay; the fill
    holds the origin connection until ``relayed`` is set."""

    response: OriginResponse
    fwd: str  # Cache-Status fwd (RFC 9211 §2.2)
    relayed: asyncio.Event


class Filling:
    """One background fill's progress: its head, the chunks so far, its end or failure."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._head: asyncio.Future[FillHead | PassOn | None] = loop.create_future()
        # A client that left never reads a failed head: that is not an unhandled error.
        self._head.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._chunks: list[bytes] = []
        self.size = 0
        self._ended = False
        self._error: OriginError | None = None
        self._changed = asyncio.Event()
        self._abandoned = False

    def publish(self, head: FillHead | PassOn | None) -> None:
        if not self._head.done():
            self._head.set_result(head)
            if self._abandoned and isinstance(head, PassOn):
                head.relayed.set()  # its client has left already: nobody will relay it

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.size += len(chunk)
        self._changed.set()

    def body(self) -> bytes:
        return b"".join(self._chunks)

    def end(self) -> None:
        self._ended = True
        self._changed.set()

    def fail(self, exc: OriginError) -> None:
        if not self._head.done():
            self._head.set_exception(exc)
        self._error = exc
        self._changed.set()

    def close(self) -> None:
        """The fill is over (ended, failed or cancelled): nobody waits for ever."""
        self.publish(None)
        if not self._ended and self._error is None:
            self.fail(OriginError("invalid", "background fill stopped"))

    def abandon(self) -> None:
        """The waiting client is done (or gone): a handed-on answer is released, now
        or when it is published (the client may leave before the fill's head)."""
        self._abandoned = True
        if self._head.done() and not self._head.cancelled() and self._head.exception() is None:
            head = self._head.result()
            if isinstance(head, PassOn):
                head.relayed.set()

    async def head(self) -> FillHead | PassOn | None:
        """The published head; raises the fill's OriginError if it failed before one."""
        return await asyncio.shield(self._head)

    async def finished(self) -> None:
        """Wait for the end of the fill; raises its OriginError if it failed."""
        while not self._ended:
            if self._error is not None:
                raise self._error
            self._changed.clear()
            await self._changed.wait()

    async def read(self, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes ``first``..``last`` (inclusive) of the body, as they arrive; raises the
        fill's OriginError if it fails before they are all in."""
        index, offset = 0, 0
        while True:
            while index < len(self._chunks):
                chunk = self._chunks[index]
                start, offset = offset, offset + len(chunk)
                index += 1
                if offset <= first:
                    continue
                piece = chunk[max(first - start, 0) : last + 1 - start]
                if piece:
                    yield piece
                if offset > last:
                    return
            if self._error is not None:
                raise self._error
            if self._ended:
                return
            self._changed.clear()
            await self._changed.wait()
