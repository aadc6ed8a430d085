"""RFC 9111 rules as plain function calls: parsing, freshness, age,
storability, header updates, Vary, conditionals and invalidation targets."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.directives import EMPTY_CACHE_CONTROL, parse_cache_control
from edge.rules import (
    HEURISTIC_MAX_S,
    corrected_initial_age,
    edge_policy_reason,
    freshness_lifetime,
    invalidation_targets,
    is_stream,
    not_modified,
    parse_age,
    parse_http_date,
    relayed_at_once,
    selecting_value,
    storable_reason,
    stored_headers,
    strip_hop_by_hop,
    update_headers,
    vary_names,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
NOW_DATE = email.utils.formatdate(NOW, usegmt=True)


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


@given(st.text(max_size=60))
def test_parsers_never_raise_on_arbitrary_text(text: str) -> None:
    headers = h(("Age", text), ("Vary", text), ("Expires", text), ("Date", text))
    parse_age(headers)
    vary_names(headers)
    parse_http_date(text, NOW)
    freshness_lifetime(200, headers, EMPTY_CACHE_CONTROL, NOW)


# --- HTTP-date (RFC 9110 §5.6.7) ---------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Thu, 18 Aug 2050 02:01:18 GMT",
        "THU, 18 AUG 2050 02:01:18 gMT",  # names are case-insensitive
        "Thursday, 18-Aug-50 02:01:18 GMT",  # rfc850, two-digit year within 50 years
        "Thu Aug 18 02:01:18 2050",  # asctime
    ],
)
def test_http_date_formats_rfc9110_5_6_7(value: str) -> None:
    assert parse_http_date(value, NOW) == 2544400878.0


def test_asctime_pads_single_digit_days_rfc9110_5_6_7() -> None:
    assert parse_http_date("Thu Aug  8 02:01:18 2050", NOW) == 2544400878.0 - 10 * 86400


def test_rfc850_year_more_than_50_years_ahead_is_past_rfc9110_5_6_7() -> None:
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", NOW) == 784111777.0


@pytest.mark.parametrize(
    "value",
    [
        "Thu, 18 Aug 2050 02:01:18 UTC",
        "Thu, 18 Aug 2050 02:01:18 AEST",
        "Thu, 18 Aug 50 02:01:18 GMT",
        "Thu 18 Aug 2050 02:01:18 GMT",
        "Thu, 18  Aug  2050 02:01:18 GMT",
        "Thu, 18-Aug-2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 02.01.18 GMT",
        "Thu, 18 Aug 2050 2:01:18 GMT",
        "Thu, 31 Feb 2050 02:01:18 GMT",
        "0",
        "",
    ],
)
def test_invalid_http_dates_rfc9110_5_6_7(value: str) -> None:
    assert parse_http_date(value, NOW) is None


@given(st.integers(0, 253402300799))
def test_imf_fixdate_round_trip(ts: int) -> None:
    assert parse_http_date(email.utils.formatdate(ts, usegmt=True), NOW) == ts


# --- Age and freshness (RFC 9111 §4.2) ---------------------------------------


@pytest.mark.parametrize(
    ("lines", "age"),
    [
        ([], 0),
        (["7200"], 7200),
        ([" 0 "], 0),
        (["abc"], 2**31),  # untrustworthy values count as stale (see parse_age)
        (["-7200"], 2**31),
        (["7200.0"], 2**31),
        (["7200, 0"], 2**31),
        (["0, 0"], 2**31),
        (["0", "0"], 2**31),
        (["7200;foo=bar"], 2**31),
        (["2147483649"], 2**31),
    ],
)
def test_age_parsing_rfc9111_5_1(lines: list[str], age: int) -> None:
    assert parse_age(h(*(("Age", line) for line in lines))) == age


def test_corrected_initial_age_takes_the_larger_estimate_rfc9111_4_2_3() -> None:
    # Apparent age from Date (100 s) vs Age + response delay (30 + 2 s).
    headers = h(("Date", date(-100)), ("Age", "30"))
    assert corrected_initial_age(headers, NOW - 2, NOW) == 100
    headers = h(("Date", date(0)), ("Age", "30"))
    assert corrected_initial_age(headers, NOW - 2, NOW) == 32


def lifetime(status: int, *pairs: tuple[str, str]) -> float:
    headers = h(("Date", NOW_DATE), *pairs)
    return freshness_lifetime(status, headers, parse_cache_control(headers), NOW)


def test_s_maxage_beats_max_age_in_a_shared_cache_rfc9111_4_2_1() -> None:
    assert lifetime(200, ("Cache-Control", "max-age=3600, s-maxage=1")) == 1
    assert lifetime(200, ("Cache-Control", "max-age=1"), ("Cache-Control", "s-maxage=3600")) == 3600


def test_max_age_beats_expires_rfc9111_4_2_1() -> None:
    assert lifetime(200, ("Cache-Control", "max-age=0"), ("Expires", date(3600))) == 0
    assert lifetime(200, ("Cache-Control", "max-age=60"), ("Expires", "0")) == 60


def test_expires_minus_date_rfc9111_4_2_1() -> None:
    assert lifetime(200, ("Expires", date(300))) == 300
    assert lifetime(200, ("Expires", date(-300))) == 0


def test_invalid_expires_means_already_expired_rfc9111_5_3() -> None:
    # Even for a heuristically cacheable status with Last-Modified.
    assert lifetime(200, ("Expires", "0"), ("Last-Modified", date(-86400))) == 0


def test_expires_without_valid_date_uses_receipt_time_rfc9111_4_2_1() -> None:
    headers = h(("Date", "foo"), ("Expires", date(10)))
    assert freshness_lifetime(200, headers, parse_cache_control(headers), NOW) == 10


def test_heuristic_is_a_tenth_of_last_modified_age_rfc9111_4_2_2() -> None:
    assert lifetime(200, ("Last-Modified", date(-1000))) == 100
    assert lifetime(200, ("Last-Modified", date(-10 * 365 * 86400))) == HEURISTIC_MAX_S


@pytest.mark.parametrize("status", [201, 202, 403, 502, 503, 504, 599])
def test_no_heuristic_for_other_statuses_rfc9111_4_2_2(status: int) -> None:
    assert lifetime(status, ("Last-Modified", date(-86400))) == 0


def test_public_allows_heuristic_for_any_status_rfc9111_4_2_2() -> None:
    assert lifetime(599, ("Last-Modified", date(-1000)), ("Cache-Control", "public")) == 100


# --- Storing (RFC 9111 §3) ---------------------------------------------------


def reason(
    status: int = 200, method: str = "GET", req: CIMultiDict[str] | None = None, **fields: str
) -> str | None:
    req = req if req is not None else h()
    headers = h(*((k.replace("_", "-"), v) for k, v in fields.items()))
    return storable_reason(
        method, req, parse_cache_control(req), status, headers, parse_cache_control(headers)
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"Cache_Control": "max-age=60"}, None),
        ({"Cache_Control": "no-store, max-age=60"}, "no-store"),
        ({"Cache_Control": "No-StOrE"}, "no-store"),
        ({"Cache_Control": "private, max-age=60"}, "private"),
        ({"Cache_Control": 'private="Set-Cookie", max-age=60'}, None),
        ({"Cache_Control": "max-age=60", "Vary": "Foo, *"}, "vary-star"),
        ({"status": 201, "Last_Modified": "x"}, "status"),
        ({"status": 599, "Cache_Control": "max-age=60"}, None),
        ({"status": 599, "Cache_Control": "max-age=60, no-store, must-understand"}, "status"),
        ({"status": 200, "Cache_Control": "max-age=60, no-store, must-understand"}, None),
        ({"status": 206, "Cache_Control": "max-age=60"}, "partial"),
        ({"status": 304, "Cache_Control": "max-age=60"}, "status"),
        ({"method": "POST", "Cache_Control": "max-age=60"}, "method"),
    ],
)
def test_storable_reasons_rfc9111_3(kwargs: dict[str, object], expected: str | None) -> None:
    assert reason(**kwargs) == expected  # type: ignore[arg-type]


def test_request_no_store_forbids_storing_rfc9111_5_2_1_5() -> None:
    assert reason(req=h(("Cache-Control", "no-store")), Cache_Control="max-age=60") == "no-store"


@pytest.mark.parametrize(
    ("cc", "expected"),
    [
        ("max-age=60", "authorization"),
        ("max-age=60, public", None),
        ("s-maxage=60", None),
        ("max-age=60, must-revalidate", None),
    ],
)
def test_authorization_needs_explicit_permission_rfc9111_3_5(cc: str, expected: str | None) -> None:
    assert reason(req=h(("Authorization", "FOO")), Cache_Control=cc) == expected


def test_stored_headers_drop_hop_by_hop_and_listed_fields_rfc9111_3_1() -> None:
    headers = h(
        ("Connection", "a, B"),
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authenticate", "Basic"),
        ("Cache-Control", 'no-cache="d", private="e"'),
        ("d", "4"),
        ("e", "5"),
        ("Surrogate-Key", "k"),
        ("Set-Cookie", "a=b"),
    )
    kept = stored_headers(headers, parse_cache_control(headers))
    assert set(kept) == {"c", "Cache-Control"}  # Set-Cookie is never stored


def test_strip_hop_by_hop_keeps_end_to_end_fields_rfc9110_7_6_1() -> None:
    headers = h(("Connection", "close, X-Foo"), ("X-Foo", "1"), ("TE", "trailers"), ("Y", "2"))
    assert list(strip_hop_by_hop(headers).items()) == [("Y", "2")]


def test_304_updates_fields_except_those_of_the_stored_bytes_rfc9111_3_2() -> None:
    stored = h(
        ("Content-Length", "5"),
        ("Content-Encoding", "gzip"),
        ("ETag", '"a"'),
        ("Cache-Control", "max-age=1"),
        ("Test-Header", "A"),
        ("Kept", "k"),
    )
    received = h(
        ("Content-Length", "10"),
        ("Content-Encoding", "br"),
        ("ETag", '"b"'),
        ("Cache-Control", "max-age=3600"),
        ("Test-Header", "B"),
        ("Connection", "close"),
        ("Set-Cookie", "x=1"),
        ("Set-Cookie", "y=2"),
    )
    merged = update_headers(stored, received)
    assert merged["Content-Length"] == "5"
    assert merged["Content-Encoding"] == "gzip"
    assert merged["ETag"] == '"a"'
    assert merged["Cache-Control"] == "max-age=3600"
    assert merged["Test-Header"] == "B"
    assert merged["Kept"] == "k"
    assert merged.getall("Set-Cookie") == ["x=1", "y=2"]
    assert "Connection" not in merged


# --- Vary (RFC 9111 §4.1) ----------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        (["Foo"], ("foo",)),
        (["Foo, Bar", "baz"], ("foo", "bar", "baz")),
        (["foo, FOO"], ("foo",)),
        (["*"], None),
        (["*, *"], None),
        ([", *"], None),
        (["", "*"], None),
        (["Foo, *"], None),
    ],
)
def test_vary_names_rfc9111_4_1(lines: list[str], names: tuple[str, ...] | None) -> None:
    assert vary_names(h(*(("Vary", line) for line in lines))) == names


@pytest.mark.parametrize(
    ("name", "a", "b"),
    [
        ("foo", [("Foo", "1, 2")], [("Foo", "1"), ("Foo", "2")]),
        ("foo", [("Foo", "1,2")], [("Foo", " 1, 2 ")]),
        ("accept-language", [("Accept-Language", "en, de")], [("Accept-Language", "de, en")]),
        ("accept-language", [("Accept-Language", "en, de")], [("Accept-Language", "eN, De")]),
        ("accept-encoding", [("Accept-Encoding", "gzip, br")], [("Accept-Encoding", "br,gzip")]),
    ],
)
def test_selecting_values_are_normalised_rfc9111_4_1(
    name: str, a: list[tuple[str, str]], b: list[tuple[str, str]]
) -> None:
    assert selecting_value(h(*a), name) == selecting_value(h(*b), name)


def test_selecting_values_differ_when_content_differs_rfc9111_4_1() -> None:
    assert selecting_value(h(("Foo", "1")), "foo") != selecting_value(h(("Foo", "2")), "foo")
    assert selecting_value(h(("Foo", "A")), "foo") != selecting_value(h(("Foo", "a")), "foo")
    assert selecting_value(h(), "foo") is None


# --- Conditional requests received (RFC 9111 §4.3.2) -------------------------


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ([("If-None-Match", '"abc"')], True),
        ([("If-None-Match", 'W/"abc"')], True),  # weak comparison
        ([("If-None-Match", '"x", "abc", "y"')], True),
        ([("If-None-Match", "*")], True),
        ([("If-None-Match", '"x"')], False),
        ([("If-Modified-Since", date(-3000))], True),  # equal to Last-Modified
        ([("If-Modified-Since", date(-2000))], True),
        ([("If-Modified-Since", date(-4000))], False),
        ([("If-Modified-Since", "garbage")], False),
        # If-None-Match takes precedence over If-Modified-Since.
        ([("If-None-Match", '"x"'), ("If-Modified-Since", date(0))], False),
        ([("If-None-Match", '"abc"'), ("If-Modified-Since", date(-9999))], True),
    ],
)
def test_not_modified_evaluation_rfc9111_4_3_2(
    request_fields: list[tuple[str, str]], expected: bool
) -> None:
    stored = h(("ETag", '"abc"'), ("Last-Modified", date(-3000)), ("Date", NOW_DATE))
    assert not_modified(h(*request_fields), stored, NOW) is expected


def test_if_modified_since_falls_back_to_date_rfc9111_4_3_2() -> None:
    stored = h(("Date", NOW_DATE))
    assert not_modified(h(("If-Modified-Since", date(-3000))), stored, NOW) is False
    assert not_modified(h(("If-Modified-Since", date(10))), stored, NOW) is True


# --- Invalidation (RFC 9111 §4.4) --------------------------------------------


def test_unsafe_success_invalidates_target_and_same_origin_locations_rfc9111_4_4() -> None:
    headers = h(
        ("Location", "/t/location_target"),
        ("Content-Location", "http://example.com/t/cl?x=1"),
    )
    targets = invalidation_targets("example.com", "/t/x", "POST", 201, headers)
    assert targets == ["/t/x", "/t/location_target", "/t/cl?x=1"]


def test_relative_location_resolves_against_target_rfc9111_4_4() -> None:
    headers = h(("Location", "sibling"))
    assert invalidation_targets("h", "/dir/x", "PUT", 200, headers) == ["/dir/x", "/dir/sibling"]


def test_other_origin_location_is_not_invalidated_rfc9111_4_4() -> None:
    headers = h(("Location", "http://other.example/x"))
    assert invalidation_targets("example.com", "/x", "DELETE", 200, headers) == ["/x"]


@pytest.mark.parametrize(("method", "status"), [("GET", 200), ("HEAD", 200), ("POST", 500)])
def test_safe_methods_and_errors_invalidate_nothing_rfc9111_4_4(method: str, status: int) -> None:
    assert invalidation_targets("h", "/x", method, status, h()) == []


# --- streams and the edge's own storing limits ---------------------------------------

STREAM_ROWS = [
    # (status, response fields, is_stream, relayed_at_once)
    (200, (("Content-Type", "text/event-stream"),), True, True),
    (200, (("Content-Type", "Text/Event-Stream; charset=utf-8"),), True, True),
    (200, (("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")), True, True),
    (200, (("Content-Type", "text/plain"), ("X-Accel-Buffering", "yes")), False, False),
    (200, (("Cache-Control", "no-store"),), False, True),
    (200, (("Cache-Control", "private"),), False, True),
    (200, (("Cache-Control", 'private="x"'),), False, False),
    (200, (("Cache-Control", "no-store, must-understand"),), False, False),  # §5.2.2.3
    (200, (("Cache-Control", "no-store"), ("Content-Length", "5")), False, False),
    (200, (("Cache-Control", "max-age=60"),), False, False),
    (304, (("Content-Type", "text/event-stream"),), False, False),  # no body
    (204, (("Cache-Control", "no-store"),), False, False),
]


@pytest.mark.parametrize(("status", "fields", "stream", "at_once"), STREAM_ROWS)
def test_streams_and_answers_relayed_at_once(
    status: int, fields: tuple[tuple[str, str], ...], stream: bool, at_once: bool
) -> None:
    headers = h(*fields)
    assert is_stream(status, headers) is stream
    assert relayed_at_once(status, headers, parse_cache_control(headers)) is at_once


POLICY_ROWS = [
    # (request fields, response fields, cookies_private, reason)
    ((), (("Content-Type", "text/event-stream"), ("Cache-Control", "max-age=60")), True, "stream"),
    ((), (("Set-Cookie", "a=b"), ("Cache-Control", "public, max-age=60")), True, "set-cookie"),
    ((), (("Set-Cookie", "a=b"), ("Cache-Control", 'no-cache="Set-Cookie"')), True, None),
    ((), (("Set-Cookie", "a=b"), ("Cache-Control", 'private="set-cookie"')), True, None),
    ((("Cookie", "s=1"),), (("Cache-Control", "max-age=60"),), True, "cookie"),
    ((("Cookie", "s=1"),), (("Cache-Control", "max-age=60, must-revalidate"),), True, "cookie"),
    ((("Cookie", "s=1"),), (("Cache-Control", "max-age=60"),), False, None),
    ((("Cookie", "s=1"),), (("Cache-Control", "public, max-age=60"),), True, None),
    ((("Cookie", "s=1"),), (("Cache-Control", "s-maxage=60"),), True, None),
    ((), (("Cache-Control", "max-age=60"),), True, None),
]


@pytest.mark.parametrize(("request_fields", "fields", "cookies_private", "reason"), POLICY_ROWS)
def test_edge_policy_beyond_rfc9111_3(
    request_fields: tuple[tuple[str, str], ...],
    fields: tuple[tuple[str, str], ...],
    cookies_private: bool,
    reason: str | None,
) -> None:
    headers = h(*fields)
    cc = parse_cache_control(headers)
    got = edge_policy_reason(200, h(*request_fields), headers, cc, cookies_private=cookies_private)
    assert got == reason


@given(st.dictionaries(st.sampled_from(["Content-Type", "Cache-Control", "X-Accel-Buffering",
                                        "Content-Length", "Set-Cookie"]), st.text(max_size=30)),
       st.integers(100, 599))  # fmt: skip
def test_a_stream_is_always_relayed_at_once_and_never_stored(
    fields: dict[str, str], status: int
) -> None:
    headers = h(*fields.items())
    cc = parse_cache_control(headers)
    if is_stream(status, headers):
        assert relayed_at_once(status, headers, cc)
        assert edge_policy_reason(status, h(), headers, cc, cookies_private=False) == "stream"
