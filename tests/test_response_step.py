"""The edge cache's response step (Cache.respond), one table row per case: what the
origin's answer to a fill or a revalidation means. Entries and lookups are built
directly, so each row says exactly what the request step had decided."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

import edge.cache
from edge.cache import Cache, Lookup, Outcome, RequestInfo
from edge.directives import response_cache_control
from edge.entry import CacheEntry, make_entry
from edge.response_step import Freshen, OriginAnswer, Pass, ServeStale, Store

T0 = 1_700_000_000.0
STORED_AT = T0 - 100  # the stale entry was stored 100 s before the answer arrives
ANSWERED_AT = T0
SENT_AT = T0 - 0.5  # when the fill or revalidation went out


def http_date(offset: float = 0.0) -> str:
    return email.utils.formatdate(T0 + offset, usegmt=True)


def stored_entry(fields: Mapping[str, str]) -> CacheEntry:
    headers = CIMultiDict(fields)
    return make_entry(
        status=200,
        headers=headers.copy(),
        body=b"old",
        vary=(),
        keys=tuple(headers.get("Surrogate-Key", "").split()),
        cc=response_cache_control(headers),
        received=headers,
        request_time=STORED_AT,
        response_time=STORED_AT,
    )


@dataclass(frozen=True, slots=True)
class Row:
    """One case: what the request step decided, and what the origin answered."""

    id: str
    status: int
    answer: Mapping[str, str] = field(default_factory=dict)
    stored: Mapping[str, str] | None = None  # None: a miss (nothing stored)
    stale_if_error: bool = False  # as lookup() decided it
    fwd: str = "uri-miss"  # the lookup's RFC 9211 forward reason on a miss
    method: str = "GET"
    request: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Want:
    """The decision expected; fields left None are not checked."""

    step: type[Freshen | ServeStale | Store | Pass]
    fwd: str | None = None
    reason: str | None = None
    detail: str | None = None
    keep: bool | None = None


STALE = {"Cache-Control": "max-age=10", "ETag": '"v1"', "Date": http_date(-100)}
STALE_SIE = {"Cache-Control": "max-age=10, stale-if-error=600", "Date": http_date(-100)}
CACHEABLE = {"Cache-Control": "max-age=60", "Date": http_date()}

TABLE: list[tuple[Row, Want]] = [
    # RFC 9111 §4.3.3 / §4.3.4: the answer to a revalidation.
    (
        Row("rfc9111_4_3_4_304_freshens_the_stale_entry", 304, {"Date": http_date()}, STALE),
        Want(Freshen, keep=True),
    ),
    (
        Row("rfc9111_4_3_4_304_with_new_no_store_serves_but_drops_the_entry", 304,
            {"Cache-Control": "no-store"}, STALE),
        Want(Freshen, keep=False),
    ),
    (
        Row("rfc9111_4_3_4_304_with_new_private_serves_but_drops_the_entry", 304,
            {"Cache-Control": "private"}, STALE),
        Want(Freshen, keep=False),
    ),
    (
        Row("rfc9111_4_3_4_304_freshens_even_within_stale_if_error", 304, {}, STALE_SIE,
            stale_if_error=True),
        Want(Freshen, keep=True),
    ),
    (
        Row("rfc9111_4_3_3_304_to_a_miss_is_not_stored", 304, {"ETag": '"v1"'}),
        Want(Pass, fwd="uri-miss", reason="status"),
    ),
    (
        Row("rfc9111_4_3_3_full_response_replaces_the_stale_entry", 200, CACHEABLE, STALE),
        Want(Store, fwd="stale"),
    ),
    (
        Row("rfc9111_4_3_3_full_no_store_response_passes", 200, {"Cache-Control": "no-store"},
            STALE),
        Want(Pass, fwd="stale", reason="no-store"),
    ),
    # RFC 9111 §4.2.4, §4.3.3 and RFC 5861 §4: server errors.
    (
        Row("rfc5861_4_500_within_stale_if_error_serves_stale", 500, {}, STALE_SIE,
            stale_if_error=True),
        Want(ServeStale, detail="origin-500"),
    ),
    (
        Row("rfc5861_4_503_within_stale_if_error_serves_stale_even_if_storable", 503,
            CACHEABLE, STALE_SIE, stale_if_error=True),
        Want(ServeStale, detail="origin-503"),
    ),
    (
        Row("rfc9111_4_2_4_500_without_stale_if_error_passes", 500, {}, STALE),
        Want(Pass, fwd="stale", reason="status"),
    ),
    (
        Row("rfc9111_4_2_4_503_without_stale_if_error_is_stored_if_storable", 503, CACHEABLE,
            STALE),
        Want(Store, fwd="stale"),
    ),
    (
        Row("rfc5861_4_404_is_no_error_for_stale_if_error", 404, CACHEABLE, STALE_SIE,
            stale_if_error=True),
        Want(Store, fwd="stale"),
    ),
    (
        Row("rfc9111_3_502_to_a_miss_without_freshness_passes", 502),
        Want(Pass, fwd="uri-miss", reason="status"),
    ),
    (
        Row("rfc9111_3_503_to_a_miss_with_max_age_is_stored", 503, CACHEABLE),
        Want(Store, fwd="uri-miss"),
    ),
    # RFC 9111 §3: storing the answer to a miss.
    (
        Row("rfc9111_3_storable_answer_is_stored", 200, CACHEABLE),
        Want(Store, fwd="uri-miss"),
    ),
    (
        Row("rfc9211_2_2_fwd_vary_miss_is_kept", 200, CACHEABLE, fwd="vary-miss"),
        Want(Store, fwd="vary-miss"),
    ),
    (
        Row("rfc9111_3_head_miss_fills_with_a_get_and_is_stored", 200, CACHEABLE,
            method="HEAD"),
        Want(Store, fwd="uri-miss"),
    ),
    (
        Row("rfc9111_3_post_is_never_stored", 200, CACHEABLE, method="POST", fwd="method"),
        Want(Pass, fwd="method", reason="method"),
    ),
    (
        Row("rfc9111_4_2_2_heuristic_with_validator_is_stored", 200,
            {"Last-Modified": http_date(-3600)}),
        Want(Store),
    ),
    (
        Row("rfc9111_3_no_freshness_no_validator_passes", 200, {"Content-Type": "text/plain"}),
        Want(Pass, reason="no-validator-or-freshness"),
    ),
    (
        Row("rfc9111_3_3_partial_content_passes", 206, CACHEABLE),
        Want(Pass, reason="partial"),
    ),
    (
        Row("rfc9111_3_201_without_freshness_passes", 201, {"ETag": '"a"'}),
        Want(Pass, reason="status"),
    ),
    (
        Row("rfc9111_3_too_large_by_content_length_passes", 200,
            {**CACHEABLE, "Content-Length": str(1 << 20)}),
        Want(Pass, reason="too-large"),
    ),
    (
        Row("rfc9111_4_1_vary_star_passes", 200, {**CACHEABLE, "Vary": "*"}),
        Want(Pass, reason="vary-star"),
    ),
    (
        Row("rfc9111_5_2_2_3_must_understand_unknown_status_passes", 299,
            {"Cache-Control": "max-age=60, must-understand, no-store"}),
        Want(Pass, reason="status"),
    ),
    (
        Row("rfc9111_5_2_2_3_must_understand_known_status_overrides_no_store", 200,
            {"Cache-Control": "max-age=60, must-understand, no-store"}),
        Want(Store),
    ),
    (
        Row("rfc9111_5_2_2_5_no_store_passes", 200, {"Cache-Control": "max-age=60, no-store"}),
        Want(Pass, reason="no-store"),
    ),
    (
        Row("rfc9111_5_2_2_7_private_passes", 200, {"Cache-Control": "max-age=60, private"}),
        Want(Pass, reason="private"),
    ),
    (
        Row("rfc9111_5_2_2_7_private_with_fields_is_stored", 200,
            {"Cache-Control": 'max-age=60, private="Set-Cookie"', "Set-Cookie": "a=1"}),
        Want(Store),
    ),
    (
        Row("rfc9111_3_5_authorization_passes", 200, CACHEABLE,
            request={"Authorization": "Bearer x"}),
        Want(Pass, reason="authorization"),
    ),
    (
        Row("rfc9111_3_5_authorization_with_s_maxage_is_stored", 200,
            {"Cache-Control": "s-maxage=60"}, request={"Authorization": "Bearer x"}),
        Want(Store),
    ),
    (
        Row("rfc9111_5_2_1_5_request_no_store_passes", 200, CACHEABLE,
            request={"Cache-Control": "no-store"}),
        Want(Pass, reason="no-store"),
    ),
]  # fmt: skip


def lookup_for(row: Row) -> Lookup:
    entry = None if row.stored is None else stored_entry(row.stored)
    outcome: Outcome = "miss" if entry is None else "stale"
    if row.method not in ("GET", "HEAD"):
        outcome = "pass"
    request = RequestInfo(
        method=row.method, host="example.com", target="/r", headers=CIMultiDict(row.request)
    )
    return Lookup(
        outcome=outcome,
        request=request,
        key="example.com/r",
        entry=entry,
        revalidate_headers={} if entry is None else {"If-None-Match": '"v1"'},
        serve_stale_while_revalidate=False,
        stale_if_error=row.stale_if_error,
        detail=None,
        fwd=row.fwd if entry is None else "stale",
    )


def respond(cache: Cache, lookup: Lookup, status: int, fields: Mapping[str, str]) -> object:
    answer = OriginAnswer(status=status, headers=CIMultiDict(fields), request_time=SENT_AT)
    return cache.respond(lookup, answer, ANSWERED_AT)


@pytest.fixture
def cache() -> Cache:
    return Cache(capacity_bytes=1 << 20, policy="sieve", max_object_bytes=1 << 16)


@pytest.mark.parametrize(("row", "want"), TABLE, ids=[row.id for row, _ in TABLE])
def test_response_step(cache: Cache, row: Row, want: Want) -> None:
    step = respond(cache, lookup_for(row), row.status, row.answer)
    assert type(step) is want.step
    for name in ("fwd", "reason", "detail", "keep"):
        expected = getattr(want, name)
        if expected is not None:
            assert getattr(step, name) == expected, name


def test_freshen_updates_fields_age_and_tags_rfc9111_4_3_4(cache: Cache) -> None:
    lookup = lookup_for(Row("stale", 304, stored={**STALE, "Surrogate-Key": "old"}))
    fields = {
        "Cache-Control": 'max-age=300, no-cache="X-Secret"',
        "X-Secret": "s",
        "Date": http_date(-2),
        "Surrogate-Key": "new",
    }
    step = respond(cache, lookup, 304, fields)
    assert isinstance(step, Freshen) and step.keep
    fresh = step.entry
    assert fresh.body == b"old" and fresh.status == 200  # §4.3.4: the stored response
    assert fresh.freshness_lifetime == 300 and fresh.headers["ETag"] == '"v1"'
    assert "X-Secret" not in fresh.headers  # §5.2.2.4: no-cache="field" is not kept
    assert fresh.surrogate_keys == ("new",) and "Surrogate-Key" not in fresh.headers
    assert fresh.age(ANSWERED_AT) == 2  # the 304's own Date gives the age (§4.2.3)


def test_store_decides_everything_but_the_body_rfc9111_3_1(cache: Cache) -> None:
    request = {"Accept-Encoding": "gzip"}
    lookup = lookup_for(Row("miss", 200, request=request))
    fields = {
        **CACHEABLE,
        "Vary": "Accept-Encoding",
        "Age": "5",
        "Connection": "X-Hop",
        "X-Hop": "1",
        "Content-Length": " 4 ",
        "Surrogate-Key": "a b",
    }
    step = respond(cache, lookup, 200, fields)
    assert isinstance(step, Store)
    assert step.vary == (("accept-encoding", "gzip"),)
    assert "Age" not in step.headers and "X-Hop" not in step.headers  # §3.1, §5.1
    assert step.surrogate_keys == ("a", "b") and step.length == "4"
    assert (step.request_time, step.response_time) == (SENT_AT, ANSWERED_AT)
    assert cache.fill(step, b"abc") is None  # §3.3: shorter than its Content-Length
    entry = cache.fill(step, b"body")
    assert entry is not None and entry.age(ANSWERED_AT) == 5
    assert cache.lookup(lookup.request, ANSWERED_AT + 1).entry is entry


def test_update_carries_a_freshen_out_rfc9111_4_3_4(cache: Cache) -> None:
    request = RequestInfo(method="GET", host="example.com", target="/r", headers=CIMultiDict())
    old = cache.store(request, 200, CIMultiDict(STALE), b"old", STORED_AT, STORED_AT)
    assert old is not None
    stale = cache.lookup(request, ANSWERED_AT)
    assert stale.outcome == "stale"
    step = respond(cache, stale, 304, {"Cache-Control": "max-age=600"})
    assert isinstance(step, Freshen)
    assert cache.lookup(request, ANSWERED_AT).entry is old  # deciding stored nothing
    cache.update(request, step)
    assert cache.lookup(request, ANSWERED_AT).outcome == "fresh"
    gone = respond(cache, stale, 304, {"Cache-Control": "no-store"})
    assert isinstance(gone, Freshen) and not gone.keep
    cache.update(request, gone)
    assert cache.lookup(request, ANSWERED_AT).outcome == "miss"


def test_storability_is_decided_once_per_miss_rfc9111_3(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    decide = edge.cache.storable_reason

    def counted(*args: object, **kwargs: object) -> str | None:
        calls.append(1)
        return decide(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(edge.cache, "storable_reason", counted)
    lookup = lookup_for(Row("miss", 200))
    step = respond(cache, lookup, 200, CACHEABLE)
    assert isinstance(step, Store)
    assert cache.fill(step, b"body") is not None
    assert len(calls) == 1


STATUSES = st.sampled_from([200, 203, 204, 206, 301, 304, 404, 410, 500, 502, 503, 504])
DIRECTIVES = st.lists(
    st.sampled_from(
        ["max-age=60", "no-store", "private", "no-cache", "s-maxage=5", "public",
         "stale-if-error=60", "must-revalidate", "must-understand"]
    ),
    max_size=3,
)  # fmt: skip


@given(
    status=STATUSES,
    directives=DIRECTIVES,
    stale=st.booleans(),
    stale_if_error=st.booleans(),
    etag=st.booleans(),
)
def test_one_decision_that_agrees_with_storable_rfc9111_3(
    status: int, directives: list[str], stale: bool, stale_if_error: bool, etag: bool
) -> None:
    cache = Cache(capacity_bytes=1 << 20, policy="sieve", max_object_bytes=1 << 16)
    fields = {"Date": http_date()}
    if directives:
        fields["Cache-Control"] = ", ".join(directives)
    if etag:
        fields["ETag"] = '"e"'
    row = Row("any", status, fields, STALE_SIE if stale else None, stale and stale_if_error)
    lookup = lookup_for(row)
    step = respond(cache, lookup, status, fields)
    if stale and status == 304:
        assert isinstance(step, Freshen)
    elif stale and stale_if_error and status >= 500:
        assert isinstance(step, ServeStale) and step.detail == f"origin-{status}"
    else:
        reason = cache.storable(lookup.request, status, CIMultiDict(fields))
        assert isinstance(step, Store if reason is None else Pass)
        assert isinstance(step, Store) or step.reason == reason
        assert step.fwd == ("stale" if stale else "uri-miss")
