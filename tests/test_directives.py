"""Cache-Control and Surrogate-Control parsing (RFC 9111 §5.2; Edge Architecture 1.0):
table-driven cases with the RFC section in each name, plus Hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.directives import (
    MAX_DELTA_SECONDS,
    parse_cache_control,
    parse_delta_seconds,
    parse_surrogate_control,
    response_cache_control,
    split_list,
    unquote,
)


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


# --- Cache-Control parsing (RFC 9111 §5.2, §4.2.1, §1.2.2) -------------------


@pytest.mark.parametrize(
    ("lines", "max_age"),
    [
        (["max-age=3600"], 3600),
        (["MaX-AgE=3600"], 3600),  # directive names are case-insensitive
        (['max-age="3600"'], 3600),  # §5.2: the quoted form is accepted
        (["max-age=003600"], 3600),
        (["max-age=1800, max-age=1"], 1800),  # §4.2.1: first occurrence wins
        (["max-age=1", "max-age=1800"], 1),
        (['extension="max-age=3600", max-age=1'], 1),  # commas/equals inside quotes
        (['max-age=1, extension="max-age=3600"'], 1),
        (['extension="max-age=3600", max-age="1"'], 1),
        (["max-age=-3600"], 0),  # invalid: stale (§4.2.1)
        (["max-age='3600'"], 0),
        (["max-age=3600.0"], 0),
        (["max-age= 3600"], 0),
        (["max-age=a3600"], 0),
        (["max-age=99999999999"], MAX_DELTA_SECONDS),  # §1.2.2 overflow saturates
        (["max-age =3600"], None),  # not a directive at all
        (["foobar, no-store"], None),
    ],
)
def test_cache_control_max_age_parsing_rfc9111_5_2(lines: list[str], max_age: int | None) -> None:
    cc = parse_cache_control(h(*(("Cache-Control", line) for line in lines)))
    assert cc.seconds("max-age") == max_age


def test_unqualified_no_cache_beats_qualified_rfc9111_4_2_1() -> None:
    cc = parse_cache_control(h(("Cache-Control", 'no-cache="a", No-Cache')))
    assert "no-cache" in cc and cc.fields("no-cache") is None


def test_qualified_directive_lists_fields_rfc9111_5_2_2_4() -> None:
    cc = parse_cache_control(h(("Cache-Control", 'no-cache="A, b", private="Set-Cookie"')))
    assert cc.fields("no-cache") == {"a", "b"}
    assert cc.fields("private") == {"set-cookie"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("2147483647", 2**31 - 1), ("2147483648", 2**31), ("1" * 5000, 2**31)],
)
def test_delta_seconds_saturate_at_2_31_rfc9111_1_2_2(value: str, expected: int) -> None:
    assert parse_delta_seconds(value) == expected


@given(st.text(max_size=60))
def test_parsers_never_raise_on_arbitrary_text(text: str) -> None:
    headers = h(("Cache-Control", text), ("Surrogate-Control", text))
    parse_cache_control(headers)
    parse_surrogate_control(headers)
    split_list([text])
    unquote(text)


@given(st.lists(st.from_regex(r"[a-z0-9\-]{1,8}(=[0-9]{1,4})?", fullmatch=True), max_size=6))
def test_cache_control_round_trips_generated_directives(members: list[str]) -> None:
    cc = parse_cache_control(h(("Cache-Control", ", ".join(members))))
    for member in members:
        name, _, value = member.partition("=")
        assert name in cc
    first = {}
    for member in members:
        name, eq, value = member.partition("=")
        first.setdefault(name, value if eq else None)
    assert dict(cc.directives) == first


@pytest.mark.parametrize(
    ("lines", "members"),
    [
        (["a, b", "c"], ["a", "b", "c"]),
        ([' a ,, "x, y" , b'], ["a", '"x, y"', "b"]),
        (['"un, closed'], ['"un, closed']),
        ([r'"esc\", aped", z'], [r'"esc\", aped"', "z"]),
    ],
)
def test_list_members_keep_quoted_commas_rfc9110_5_6_1(
    lines: list[str], members: list[str]
) -> None:
    assert split_list(lines) == members


def test_unquote_removes_quotes_and_escapes_rfc9110_5_6_4() -> None:
    assert unquote(r'"a\"b\\c"') == 'a"b\\c'
    assert unquote("token") == "token"


# --- Surrogate-Control (W3C Edge Architecture Specification 1.0) --------------


@pytest.mark.parametrize(
    ("lines", "directives"),
    [
        (["max-age=3600"], {"max-age": "3600"}),
        (["MaX-aGe=3600, foobar"], {"max-age": "3600", "foobar": None}),
        (["max-age=3600;georouter-edge"], {"max-age": "3600"}),
        (["max-age=3600;not-for-you"], None),
        (["max-age=1, max-age=3600;georouter-edge"], {"max-age": "3600"}),  # targeted wins
        (["no-store"], {"no-store": None}),
    ],
)
def test_surrogate_control_addressed_to_us(
    lines: list[str], directives: dict[str, str | None] | None
) -> None:
    parsed = parse_surrogate_control(h(*(("Surrogate-Control", line) for line in lines)))
    assert (None if parsed is None else dict(parsed.directives)) == directives


def test_surrogate_control_replaces_cache_control() -> None:
    headers = h(("Cache-Control", "no-store"), ("Surrogate-Control", "max-age=60;georouter-edge"))
    assert response_cache_control(headers).seconds("max-age") == 60
    assert "no-store" not in response_cache_control(headers)
    other = h(("Cache-Control", "max-age=5"), ("Surrogate-Control", "max-age=60;other"))
    assert response_cache_control(other).seconds("max-age") == 5
