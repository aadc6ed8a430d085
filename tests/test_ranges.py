"""Byte ranges from a complete stored response (RFC 9110 §14, §13.1.5)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.ranges import (
    MAX_RANGES,
    ByteRange,
    answer_range,
    early_length,
    early_range,
    parse_range,
    satisfiable,
)

BODY = b"0123456789A"
LAST_MODIFIED = "Wed, 01 Jan 2020 00:00:00 GMT"
STORED = CIMultiDict({"Content-Type": "text/plain", "ETag": '"v1"', "Last-Modified": LAST_MODIFIED})


def ask(*fields: tuple[str, str], method: str = "GET", status: int = 200):  # type: ignore[no-untyped-def]
    return answer_range(method, CIMultiDict(fields), status, STORED, BODY)


@pytest.mark.parametrize(
    ("range_value", "text", "content_range"),
    [
        ("bytes=0-1", b"01", "bytes 0-1/11"),
        ("bytes=1-", b"123456789A", "bytes 1-10/11"),
        ("bytes=-1", b"A", "bytes 10-10/11"),
        ("bytes=-100", BODY, "bytes 0-10/11"),
        ("bytes=5-100", b"56789A", "bytes 5-10/11"),
        ("BYTES = 0-1", None, None),  # whitespace around '=' is not allowed
        ("Bytes=2-3", b"23", "bytes 2-3/11"),  # the unit is case-insensitive
        ("bytes=0-1, 1-2", b"012", "bytes 0-2/11"),  # overlapping ranges coalesce
    ],
)
def test_single_range_rfc9110_14_1_2(
    range_value: str, text: bytes | None, content_range: str | None
) -> None:
    answer = ask(("Range", range_value))
    if text is None:
        assert answer is None
        return
    assert answer is not None
    assert (answer.status, answer.body) == (206, text)
    assert answer.headers == {"Content-Range": content_range}


def test_unsatisfiable_range_is_416_with_complete_length_rfc9110_15_5_17() -> None:
    answer = ask(("Range", "bytes=11-20"))
    assert answer is not None
    assert (answer.status, answer.headers, answer.body) == (
        416,
        {"Content-Range": "bytes */11"},
        b"",
    )


@pytest.mark.parametrize(
    "value", ["bytes=1-0", "bytes=-", "bytes=a-b", "items=0-1", "bytes=", "0-1", "bytes=0-1,x"]
)
def test_invalid_range_sets_are_ignored_rfc9110_14_2(value: str) -> None:
    assert ask(("Range", value)) is None


def test_range_applies_to_get_of_a_200_only_rfc9110_14_2() -> None:
    assert ask(("Range", "bytes=0-1"), method="HEAD") is None
    assert ask(("Range", "bytes=0-1"), status=404) is None
    assert ask() is None


def test_too_many_ranges_are_ignored_rfc9110_14_2() -> None:
    many = ", ".join(f"{i}-{i}" for i in range(0, 2 * (MAX_RANGES + 1), 2))
    assert ask(("Range", f"bytes={many}")) is None


def test_multiple_ranges_are_multipart_byteranges_rfc9110_14_6() -> None:
    answer = ask(("Range", "bytes=0-1, 5-6"))
    assert answer is not None and answer.status == 206
    content_type = answer.headers["Content-Type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("boundary=")[1]
    assert (
        answer.body
        == (
            f"\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/11\r\n\r\n01"
            f"\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-6/11\r\n\r\n56"
            f"\r\n--{boundary}--\r\n"
        ).encode()
    )


def test_multipart_boundary_never_occurs_in_the_body_rfc9110_14_6() -> None:
    body = b"georouter-byteranges-0 and more"
    answer = answer_range("GET", CIMultiDict(Range="bytes=0-1,5-6"), 200, STORED, body)
    assert answer is not None
    assert "boundary=georouter-byteranges-1" in answer.headers["Content-Type"]


@pytest.mark.parametrize(
    ("if_range", "ranged"),
    [
        ('"v1"', True),
        ('"v2"', False),
        ('W/"v1"', False),  # If-Range needs a strong validator
        (LAST_MODIFIED, True),
        ("Wed, 01 Jan 2020 00:00:01 GMT", False),
        ("garbage", False),
    ],
)
def test_if_range_rfc9110_13_1_5(if_range: str, ranged: bool) -> None:
    answer = ask(("Range", "bytes=0-1"), ("If-Range", if_range))
    assert (answer is not None) is ranged


def test_empty_representation_satisfies_no_range_rfc9110_14_1_1() -> None:
    assert satisfiable([(None, 5), (0, None)], 0) == []


@given(
    length=st.integers(0, 50),
    specs=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 60), st.none()),
            st.tuples(st.none(), st.integers(0, 60)),
            st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda t: (min(t), max(t))),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_satisfiable_ranges_are_in_bounds_sorted_and_disjoint(
    length: int, specs: list[tuple[int | None, int | None]]
) -> None:
    ranges = satisfiable(specs, length)
    for r in ranges:
        assert 0 <= r.first <= r.last < length
    for a, b in itertools.pairwise(ranges):
        assert a.last + 1 < b.first
    # Every byte a spec selects is covered, and nothing else.
    covered = {i for r in ranges for i in range(r.first, r.last + 1)}
    wanted: set[int] = set()
    for first, last in specs:
        if first is None:
            wanted.update(range(max(0, length - (last or 0)), length) if last else ())
        else:
            wanted.update(range(first, min(length - 1, length if last is None else last) + 1))
    assert covered == wanted


@given(st.text(max_size=40))
def test_parse_range_never_raises(value: str) -> None:
    specs = parse_range(value)
    assert specs is None or all(
        (first is None or last is None or first <= last) and (first, last) != (None, None)
        for first, last in specs
    )


def test_byte_range_content_range_rfc9110_14_4() -> None:
    assert ByteRange(0, 9).content_range(100) == "bytes 0-9/100"


@pytest.mark.parametrize(
    ("method", "fields", "expected"),
    [
        ("GET", {"Range": "bytes=0-99"}, (0, 99)),
        ("GET", {"Range": "bytes=-10"}, (None, 10)),
        ("GET", {"Range": "bytes=5-"}, (5, None)),
        ("GET", {}, None),
        ("HEAD", {"Range": "bytes=0-99"}, None),
        ("GET", {"Range": "bytes=0-1, 5-6"}, None),  # multipart waits for the whole object
        ("GET", {"Range": "bytes=0-99", "If-Range": '"v1"'}, None),  # needs the validator
        # RFC 9110 §13.2.2: preconditions are evaluated first, against the stored validators
        ("GET", {"Range": "bytes=0-99", "If-Match": '"v1"'}, None),
        ("GET", {"Range": "bytes=0-99", "If-None-Match": '"v1"'}, None),
        ("GET", {"Range": "bytes=0-99", "If-Modified-Since": LAST_MODIFIED}, None),
        ("GET", {"Range": "bytes=0-99", "If-Unmodified-Since": LAST_MODIFIED}, None),
        ("GET", {"Range": "items=0-1"}, None),
    ],
)
def test_early_range_on_a_miss_rfc9110_14_2_and_13_2_2(
    method: str, fields: dict[str, str], expected: tuple[int | None, int | None] | None
) -> None:
    assert early_range(method, CIMultiDict(fields)) == expected


@pytest.mark.parametrize(
    ("status", "fields", "expected"),
    [
        (200, {"Content-Length": "761387"}, 761387),
        (200, {}, None),  # unknown length: answered from the store once whole
        (200, {"Content-Length": "2000000"}, None),  # over the store's object limit
        (404, {"Content-Length": "10"}, None),
    ],
)
def test_early_length(status: int, fields: dict[str, str], expected: int | None) -> None:
    assert early_length(status, CIMultiDict(fields), 1_000_000) == expected
