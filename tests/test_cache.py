"""The sans-IO cache engine driven like the proxy drives it: plain calls with
an injected clock. Scenarios follow the cache-tests suite and cite RFC 9111,
RFC 5861 and RFC 9211 sections."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.cache import Cache, Lookup, RequestInfo, client_conditional, response_headers
from edge.directives import SURROGATE_CAPABILITY
from edge.entry import CacheEntry

T0 = 1_700_000_000.0


def http_date(offset: float = 0.0) -> str:
    return email.utils.formatdate(T0 + offset, usegmt=True)


def req(
    target: str = "/r", *fields: tuple[str, str], method: str = "GET", host: str = "example.com"
) -> RequestInfo:
    return RequestInfo(method, host, target, CIMultiDict(fields))


def put(
    cache: Cache,
    *fields: tuple[str, str],
    request: RequestInfo | None = None,
    status: int = 200,
    body: bytes = b"body",
    at: float = T0,
) -> CacheEntry | None:
    headers = CIMultiDict(fields)
    return cache.store(request or req(), status, headers, body, at, at)


def look(cache: Cache, after: float = 0.0, request: RequestInfo | None = None) -> Lookup:
    return cache.lookup(request or req(), T0 + after)


@pytest.fixture
def cache() -> Cache:
    return Cache(capacity_bytes=1 << 20, policy="sieve", max_object_bytes=1 << 16)


# --- freshness (RFC 9111 §4.2) ------------------------------------------------


def test_fresh_then_stale_by_max_age_rfc9111_4_2(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=10"), ("Date", http_date()))
    assert look(cache, 9.9).outcome == "fresh"
    assert look(cache, 10).outcome == "stale"


def test_miss_reports_uri_miss_rfc9211_2_2(cache: Cache) -> None:
    lookup = look(cache)
    assert (lookup.outcome, lookup.fwd, lookup.entry) == ("miss", "uri-miss", None)
    assert lookup.key == "example.com/r"


def test_age_header_counts_against_lifetime_rfc9111_4_2_3(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=3600"), ("Age", "7200"), ("Date", http_date()))
    assert look(cache).outcome == "stale"


def test_untrustworthy_age_makes_the_response_stale_rfc9111_5_1(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=3600"), ("Age", "0"), ("Age", "0"), ("ETag", '"a"'))
    assert look(cache).outcome == "stale"


def test_partial_responses_are_not_stored_rfc9111_3_3(cache: Cache) -> None:
    assert cache.storable(req(), 206, CIMultiDict({"Cache-Control": "max-age=60"})) == "partial"
    # Content-Range means nothing in a 200 (RFC 9110 §14.4): stored like any field.
    fields = [("Cache-Control", "max-age=60"), ("Content-Range", "bytes 0-1/10")]
    assert put(cache, *fields) is not None


def test_response_delay_counts_against_lifetime_rfc9111_4_2_3(cache: Cache) -> None:
    cache.store(req(), 200, CIMultiDict({"Cache-Control": "max-age=10"}), b"", T0 - 8, T0)
    assert look(cache, 1).outcome == "fresh"
    assert look(cache, 2).outcome == "stale"


def test_expires_in_the_past_is_stale_rfc9111_5_3(cache: Cache) -> None:
    put(cache, ("Expires", http_date(-10)), ("Date", http_date()), ("ETag", '"a"'))
    assert look(cache).outcome == "stale"


def test_query_is_part_of_the_key_rfc9111_2(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=60"), request=req("/r?v=1"))
    assert look(cache, request=req("/r?v=2")).outcome == "miss"
    assert look(cache, request=req("/r?v=1")).outcome == "fresh"


def test_head_shares_the_get_entry_rfc9111_4(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=60"))
    assert look(cache, request=req(method="HEAD")).outcome == "fresh"


def test_heuristic_freshness_from_last_modified_rfc9111_4_2_2(cache: Cache) -> None:
    put(cache, ("Last-Modified", http_date(-1000)), ("Date", http_date()))
    assert look(cache, 99).outcome == "fresh"
    assert look(cache, 101).outcome == "stale"


# --- storing (RFC 9111 §3) ------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([("Cache-Control", "no-store")], "no-store"),
        ([("Cache-Control", "private, max-age=60")], "private"),
        ([("Cache-Control", "max-age=60"), ("Vary", "*")], "vary-star"),
        ([("Cache-Control", "max-age=60"), ("Content-Length", "70000")], "too-large"),
        ([], "no-validator-or-freshness"),
    ],
)
def test_storable_reasons_rfc9111_3(
    cache: Cache, fields: list[tuple[str, str]], reason: str
) -> None:
    assert cache.storable(req(), 200, CIMultiDict(fields)) == reason
    assert put(cache, *fields) is None
    assert cache.objects == 0


def test_heuristically_cacheable_status_needs_no_explicit_freshness_rfc9111_3(
    cache: Cache,
) -> None:
    assert cache.storable(req(), 404, CIMultiDict({"ETag": '"a"'})) is None
    assert cache.storable(req(), 201, CIMultiDict({"ETag": '"a"'})) == "status"


def test_authorization_request_stores_only_with_permission_rfc9111_3_5(cache: Cache) -> None:
    auth = req("/r", ("Authorization", "FOO"))
    assert put(cache, ("Cache-Control", "max-age=60"), request=auth) is None
    assert put(cache, ("Cache-Control", "max-age=60, public"), request=auth) is not None
    assert look(cache).outcome == "fresh"


def test_incomplete_body_is_never_stored_rfc9111_3_3(cache: Cache) -> None:
    fields = [("Cache-Control", "max-age=60"), ("Content-Length", "10")]
    assert put(cache, *fields, body=b"short") is None
    assert put(cache, *fields, body=b"0123456789") is not None


def test_head_request_may_drive_a_fill_but_not_store_an_empty_body_rfc9111_3(
    cache: Cache,
) -> None:
    head = req(method="HEAD")
    fields = [("Cache-Control", "max-age=60"), ("Content-Length", "4")]
    assert cache.storable(head, 200, CIMultiDict(fields)) is None
    assert put(cache, *fields, request=head, body=b"") is None


def test_stored_headers_lose_hop_by_hop_and_surrogate_key_rfc9111_3_1(cache: Cache) -> None:
    entry = put(
        cache,
        ("Cache-Control", "max-age=60"),
        ("Connection", "X-A"),
        ("X-A", "1"),
        ("Keep-Alive", "5"),
        ("Surrogate-Key", "k1 k2"),
    )
    assert entry is not None
    assert set(entry.headers) == {"Cache-Control"}
    assert entry.surrogate_keys == ("k1", "k2")


def test_qualified_no_cache_strips_field_but_allows_reuse_rfc9111_5_2_2_4(cache: Cache) -> None:
    put(cache, ("Cache-Control", 'no-cache="a"'), ("Cache-Control", "max-age=3600"), ("a", "1"))
    lookup = look(cache, 1)
    assert lookup.outcome == "fresh" and lookup.entry is not None
    assert "a" not in lookup.entry.headers


def test_must_understand_overrides_no_store_for_known_status_rfc9111_5_2_2_3(
    cache: Cache,
) -> None:
    cc = ("Cache-Control", "max-age=3600, no-store, must-understand")
    assert put(cache, cc, status=200) is not None
    assert put(cache, cc, status=599, request=req("/other")) is None


def test_newer_response_replaces_its_variant(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=60"), body=b"one")
    put(cache, ("Cache-Control", "max-age=60"), body=b"two")
    lookup = look(cache)
    assert lookup.entry is not None and lookup.entry.body == b"two"
    assert cache.objects == 1


def test_capacity_is_enforced_and_evictions_reported() -> None:
    evicted: list[int] = []
    cache = Cache(capacity_bytes=4500, policy="lru", max_object_bytes=4500, on_evict=evicted.append)
    for i in range(5):
        put(cache, ("Cache-Control", "max-age=60"), request=req(f"/{i}"), body=bytes(1000))
    assert cache.bytes <= 4500
    assert cache.objects == 3
    assert sum(evicted) == 2
    assert look(cache, request=req("/0")).outcome == "miss"


def test_surrogate_control_overrides_cache_control_for_this_cache(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=3600"), ("Surrogate-Control", "max-age=1"))
    assert look(cache, 2).outcome == "stale"
    assert put(cache, ("Cache-Control", "max-age=60"), ("Surrogate-Control", "no-store")) is None
    fields = [("Cache-Control", "no-store"), ("Surrogate-Control", "max-age=60;georouter-edge")]
    assert put(cache, *fields, request=req("/t")) is not None
    assert SURROGATE_CAPABILITY == 'georouter-edge="Surrogate/1.0"'


# --- revalidation and no-cache (RFC 9111 §4.3, §5.2.2.4) -------------------------


def test_no_cache_stores_but_revalidates_rfc9111_5_2_2_4(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=10000, no-cache"), ("ETag", '"abcd"'))
    lookup = look(cache, 1)
    assert (lookup.outcome, lookup.detail) == ("stale", "no-cache")
    assert lookup.revalidate_headers == {"If-None-Match": '"abcd"'}
    assert not lookup.serve_stale_while_revalidate and not lookup.stale_if_error


def test_revalidation_sends_stored_validators_rfc9111_4_3_1(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=1"), ("ETag", "abcdef"), ("Last-Modified", http_date(-9)))
    lookup = look(cache, 5)
    assert lookup.outcome == "stale" and lookup.fwd == "stale"
    # An unquoted stored ETag is sent as a valid (quoted) entity-tag.
    assert lookup.revalidate_headers == {
        "If-None-Match": '"abcdef"',
        "If-Modified-Since": http_date(-9),
    }


def test_304_freshens_and_updates_fields_rfc9111_4_3_4(cache: Cache) -> None:
    put(
        cache,
        ("Cache-Control", "max-age=2"),
        ("ETag", '"e1"'),
        ("Test-Header", "A"),
        ("Content-Length", "4"),
        ("Date", http_date()),
    )
    stale = look(cache, 5)
    assert stale.outcome == "stale" and stale.entry is not None
    not_modified = CIMultiDict(
        [("Cache-Control", "max-age=3600"), ("Test-Header", "B"), ("Content-Length", "99")]
    )
    not_modified["Date"] = http_date(5)
    fresh = cache.freshen(req(), stale.entry, not_modified, T0 + 5, T0 + 5)
    assert fresh.headers["Test-Header"] == "B"
    assert fresh.headers["Content-Length"] == "4"
    assert fresh.body == b"body"
    after = look(cache, 6)
    assert after.outcome == "fresh" and after.entry is fresh
    assert response_headers(fresh, T0 + 6)["Age"] == "1"


def test_304_fields_pass_the_stored_field_filter_rfc9111_3_1_and_5_2_2_4(cache: Cache) -> None:
    no_cookie = 'max-age=1, no-cache="Set-Cookie"'
    put(cache, ("Cache-Control", no_cookie), ("ETag", '"e1"'), ("Surrogate-Key", "k1"))
    stale = look(cache, 5)
    assert stale.entry is not None
    not_modified = CIMultiDict(
        [("Cache-Control", no_cookie), ("Set-Cookie", "b=2"), ("Surrogate-Key", "k2")]
    )
    fresh = cache.freshen(req(), stale.entry, not_modified, T0 + 5, T0 + 5)
    assert "Set-Cookie" not in fresh.headers and "Surrogate-Key" not in fresh.headers
    assert fresh.surrogate_keys == ("k2",)
    assert cache.purge_key("k2") == 1


def test_304_that_forbids_storing_removes_the_entry_rfc9111_4_3_4(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=1"), ("ETag", '"e1"'))
    stale = look(cache, 5)
    assert stale.entry is not None
    served = cache.freshen(req(), stale.entry, CIMultiDict({"Cache-Control": "no-store"}), T0, T0)
    assert served.body == b"body"
    assert cache.objects == 0


def test_client_if_none_match_answered_304_rfc9111_4_3_2(cache: Cache) -> None:
    entry = put(cache, ("Cache-Control", "max-age=60"), ("ETag", '"abcdef"'))
    assert entry is not None
    assert client_conditional(req("/r", ("If-None-Match", '"abcdef"')), entry) == 304
    assert client_conditional(req("/r", ("If-None-Match", '"zzz"')), entry) is None
    assert client_conditional(req("/r"), entry) is None


def test_client_if_modified_since_without_last_modified_uses_date_rfc9111_4_3_2(
    cache: Cache,
) -> None:
    entry = put(cache, ("Cache-Control", "max-age=60"), ("Date", http_date()))
    assert entry is not None
    assert client_conditional(req("/r", ("If-Modified-Since", http_date(-3000))), entry) is None
    assert client_conditional(req("/r", ("If-Modified-Since", http_date(1))), entry) == 304


def test_preconditions_for_the_origin_are_passed_rfc9111_4_3_2(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=60"), ("ETag", '"a"'))
    for field in ("If-Match", "If-Unmodified-Since"):
        lookup = look(cache, request=req("/r", (field, '"a"')))
        assert (lookup.outcome, lookup.detail) == ("pass", "precondition")


# --- request directives (RFC 9111 §5.2.1) -------------------------------------------


def fresh_for_an_hour(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=3600"), ("ETag", '"a"'), ("Date", http_date()))


@pytest.mark.parametrize(
    ("directive", "after", "outcome", "detail"),
    [
        ("no-cache", 1, "stale", "request-no-cache"),  # §5.2.1.4
        ("max-age=0", 1, "stale", "request-max-age"),  # §5.2.1.1
        ("max-age=600", 500, "fresh", None),
        ("min-fresh=2000", 1700, "stale", "request-min-fresh"),  # §5.2.1.3
        ("min-fresh=2000", 1000, "fresh", None),
        ("max-stale=1000", 4000, "fresh", "max-stale"),  # §5.2.1.2
        ("max-stale=1000", 5000, "stale", None),
        ("max-stale", 99999, "fresh", "max-stale"),
        ("only-if-cached", 1, "fresh", None),
    ],
)
def test_request_directives_rfc9111_5_2_1(
    cache: Cache, directive: str, after: float, outcome: str, detail: str | None
) -> None:
    fresh_for_an_hour(cache)
    lookup = look(cache, after, req("/r", ("Cache-Control", directive)))
    assert (lookup.outcome, lookup.detail) == (outcome, detail)


def test_revalidation_forced_by_request_is_fwd_request_rfc9211_2_2(cache: Cache) -> None:
    fresh_for_an_hour(cache)
    lookup = look(cache, 1, req("/r", ("Cache-Control", "no-cache")))
    assert lookup.fwd == "request" and not lookup.serve_stale_while_revalidate


def test_only_if_cached_is_flagged_on_a_miss_rfc9111_5_2_1_7(cache: Cache) -> None:
    lookup = look(cache, request=req("/r", ("Cache-Control", "only-if-cached")))
    assert lookup.outcome == "miss" and lookup.only_if_cached


def test_request_no_store_passes_unless_fresh_rfc9111_5_2_1_5(cache: Cache) -> None:
    no_store = req("/r", ("Cache-Control", "no-store"))
    assert look(cache, request=no_store).outcome == "pass"
    fresh_for_an_hour(cache)
    assert look(cache, 1, no_store).outcome == "fresh"
    assert look(cache, 4000, no_store).outcome == "pass"


def test_max_stale_cannot_override_must_revalidate_rfc9111_5_2_2_2(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=1, must-revalidate"), ("ETag", '"a"'))
    lookup = look(cache, 10, req("/r", ("Cache-Control", "max-stale")))
    assert lookup.outcome == "stale"


def test_pragma_is_ignored_rfc9111_5_4(cache: Cache) -> None:
    fresh_for_an_hour(cache)
    assert look(cache, 1, req("/r", ("Pragma", "no-cache"))).outcome == "fresh"


# --- serving stale (RFC 9111 §4.2.4, RFC 5861) -------------------------------------


def test_stale_while_revalidate_window_rfc5861_3(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=1, stale-while-revalidate=4"), ("ETag", '"a"'))
    assert look(cache, 4).serve_stale_while_revalidate
    assert not look(cache, 6).serve_stale_while_revalidate


def test_stale_if_error_window_from_response_rfc5861_4(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=0, stale-if-error=60"))
    assert look(cache, 59).stale_if_error
    assert not look(cache, 61).stale_if_error


def test_stale_if_error_from_request_rfc5861_4(cache: Cache) -> None:
    put(cache, ("Cache-Control", "max-age=0"), ("ETag", '"a"'))
    assert not look(cache, 5).stale_if_error
    assert look(cache, 5, req("/r", ("Cache-Control", "stale-if-error=10"))).stale_if_error
    assert not look(cache, 15, req("/r", ("Cache-Control", "stale-if-error=10"))).stale_if_error


@pytest.mark.parametrize(
    "directive", ["must-revalidate", "proxy-revalidate", "no-cache", "s-maxage=2"]
)
def test_no_stale_when_prohibited_rfc9111_4_2_4(cache: Cache, directive: str) -> None:
    policy = f"max-age=2, {directive}, stale-if-error=600, stale-while-revalidate=600"
    put(cache, ("Cache-Control", policy), ("ETag", '"a"'))
    lookup = look(cache, 10)
    assert lookup.outcome == "stale"
    assert not lookup.stale_if_error and not lookup.serve_stale_while_revalidate


# --- Vary (RFC 9111 §4.1) -------------------------------------------------------------


def vary_put(
    cache: Cache, body: bytes, *request_fields: tuple[str, str], vary: str = "Foo"
) -> None:
    put(
        cache,
        ("Cache-Control", "max-age=5000"),
        ("Vary", vary),
        request=req("/r", *request_fields),
        body=body,
    )


def test_vary_match_and_mismatch_rfc9111_4_1(cache: Cache) -> None:
    vary_put(cache, b"1", ("Foo", "1"))
    assert look(cache, request=req("/r", ("Foo", "1"), ("Other", "x"))).outcome == "fresh"
    mismatch = look(cache, request=req("/r", ("Foo", "2")))
    assert (mismatch.outcome, mismatch.fwd) == ("miss", "vary-miss")
    assert look(cache, request=req("/r")).outcome == "miss"


def test_vary_absent_on_both_sides_matches_rfc9111_4_1(cache: Cache) -> None:
    vary_put(cache, b"1", ("Foo", "1"), ("Baz", "789"), vary="Foo, Bar, Baz")
    assert look(cache, request=req("/r", ("Foo", "1"), ("Baz", "789"))).outcome == "fresh"
    assert (
        look(cache, request=req("/r", ("Foo", "1"), ("Bar", "x"), ("Baz", "789"))).outcome == "miss"
    )


def test_stored_request_without_selecting_field_does_not_match_rfc9111_4_1(cache: Cache) -> None:
    vary_put(cache, b"1")
    assert look(cache, request=req("/r", ("Foo", "1"))).outcome == "miss"


def test_two_variants_coexist_rfc9111_4_1(cache: Cache) -> None:
    vary_put(cache, b"one", ("Foo", "1"))
    vary_put(cache, b"two", ("Foo", "2"))
    for value, body in (("1", b"one"), ("2", b"two")):
        lookup = look(cache, request=req("/r", ("Foo", value)))
        assert lookup.entry is not None and lookup.entry.body == body
    assert cache.objects == 2


def test_vary_normalisation_rfc9111_4_1(cache: Cache) -> None:
    vary_put(cache, b"1", ("Accept-Language", "en, de"), vary="Accept-Language")
    assert look(cache, request=req("/r", ("Accept-Language", " De ,EN"))).outcome == "fresh"


# --- invalidation and purges (RFC 9111 §4.4) ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "left"),
    [("POST", 200, 0), ("M-SEARCH", 204, 0), ("POST", 500, 1), ("GET", 200, 1)],
)
def test_unsafe_method_invalidates_on_success_rfc9111_4_4(
    cache: Cache, method: str, status: int, left: int
) -> None:
    fresh_for_an_hour(cache)
    cache.invalidate(req(method=method), status, CIMultiDict())
    assert cache.objects == left


def test_invalidation_follows_location_and_content_location_rfc9111_4_4(cache: Cache) -> None:
    for target in ("/t/loc", "/t/cl", "/t/other"):
        put(cache, ("Cache-Control", "max-age=60"), request=req(target))
    response = CIMultiDict({"Location": "/t/loc", "Content-Location": "cl"})
    assert cache.invalidate(req("/t/post", method="POST"), 201, response) == 2
    assert look(cache, request=req("/t/other")).outcome == "fresh"


def test_purges_by_url_prefix_and_surrogate_key(cache: Cache) -> None:
    put(
        cache,
        ("Cache-Control", "max-age=60"),
        ("Surrogate-Key", "user-1 users"),
        request=req("/api/users/1"),
    )
    put(
        cache,
        ("Cache-Control", "max-age=60"),
        ("Surrogate-Key", "user-2 users"),
        request=req("/api/users/2"),
    )
    put(cache, ("Cache-Control", "max-age=60"), request=req("/img/a.png"))
    put(cache, ("Cache-Control", "max-age=60"), request=req("/img/b.png"))
    put(cache, ("Cache-Control", "max-age=60"), request=req("/img/a.png", host="other.example"))
    assert cache.purge_key("user-1") == 1
    assert cache.purge_key("users") == 1
    assert cache.purge_url("EXAMPLE.com", "/img/a.png") == 1
    assert cache.purge_prefix("example.com", "/img/") == 1
    assert cache.objects == 1
    assert cache.purge_prefix("other.example", "/") == 1
    assert (cache.objects, cache.bytes) == (0, 0)


# --- constructing responses (RFC 9111 §4, §5.1) --------------------------------------------


def test_age_is_generated_and_date_kept_rfc9111_5_1(cache: Cache) -> None:
    entry = put(cache, ("Cache-Control", "max-age=3600"), ("Date", http_date()), ("Age", "30"))
    assert entry is not None
    headers = response_headers(entry, T0 + 5)
    assert headers["Age"] == "35"
    assert headers.getall("Age") == ["35"]
    assert headers["Date"] == http_date()
    assert "Age" not in entry.headers


# --- robustness ---------------------------------------------------------------------------------

field_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    request_cc=field_values,
    response_cc=field_values,
    vary=field_values,
    inm=field_values,
    after=st.floats(-10, 1e6, allow_nan=False),
)
def test_arbitrary_fields_never_crash_the_engine(
    request_cc: str, response_cc: str, vary: str, inm: str, after: float
) -> None:
    cache = Cache(capacity_bytes=1 << 16, max_object_bytes=1 << 12)
    fields = [("Cache-Control", response_cc), ("Vary", vary), ("ETag", inm), ("Age", vary)]
    request = req("/r", ("Cache-Control", request_cc), ("If-None-Match", inm), ("Foo", vary))
    entry = cache.store(request, 200, CIMultiDict(fields), b"x", T0, T0)
    lookup = cache.lookup(request, T0 + after)
    assert lookup.outcome in ("fresh", "stale", "miss", "pass")
    if entry is not None:
        client_conditional(request, entry)
        response_headers(entry, T0 + after)
        cache.freshen(request, entry, CIMultiDict(fields), T0, T0 + 1)
    assert cache.bytes <= 1 << 16
