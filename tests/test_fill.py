"""The background fill's reader (edge/fill.py): a range cut from chunks as they arrive."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import OriginError
from edge.fill import Filling, PassOn
from edge.origin import OriginResponse


async def _read_while_filling(chunks: list[bytes], first: int, last: int) -> bytes:
    filling = Filling()

    async def feed() -> None:
        for chunk in chunks:
            await asyncio.sleep(0)  # let the reader run between chunks
            filling.add(chunk)
        filling.end()

    feeder = asyncio.create_task(feed())
    got = b"".join([piece async for piece in filling.read(first, last)])
    await feeder
    return got


@given(
    st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=12),
    st.integers(0, 700),
    st.integers(0, 700),
)
def test_read_yields_exactly_the_range_rfc9110_14_1_2(chunks: list[bytes], a: int, b: int) -> None:
    body = b"".join(chunks)
    first, last = sorted((a % len(body), b % len(body)))
    got = asyncio.run(_read_while_filling(chunks, first, last))
    assert got == body[first : last + 1]


async def test_a_failed_fill_fails_its_reader() -> None:
    filling = Filling()
    filling.add(b"0123")
    reader = filling.read(0, 9)
    assert await anext(reader) == b"0123"
    filling.fail(OriginError("digest", "mismatch"))
    with pytest.raises(OriginError):
        await anext(reader)


async def test_close_before_a_head_releases_the_waiter() -> None:
    filling = Filling()
    filling.close()
    assert await filling.head() is None


async def _pass_on_after_client_left() -> bool:
    filling = Filling()
    filling.abandon()  # the client left before the fill had a head
    handed = PassOn(cast(OriginResponse, None), "miss", asyncio.Event())
    filling.publish(handed)
    return handed.relayed.is_set()


def test_pass_on_published_after_client_left_is_released_rfc9110_14_2() -> None:
    # A not-storable answer handed to a Range client (RFC 9110 §14.2) that has already
    # gone must be released at once, or the fill holds the origin response for ever.
    assert asyncio.run(_pass_on_after_client_left())
