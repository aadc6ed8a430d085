"""Digest fields (RFC 9530) and their Structured Field parser (RFC 8941): tables and properties."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.digests import (
    DigestAnswer,
    DigestCheck,
    Expected,
    SFError,
    content_digest_of,
    expected_digests,
    parse_dictionary,
    plan_answer,
    serialize_digests,
    wanted_algorithm,
)

BODY = b'{"hello": "world"}'
# RFC 9530 Appendix B.1: sha-256 of {"hello": "world"}.
HELLO_SHA256 = "X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="


def test_rfc9530_example_value_is_sha256_of_the_body() -> None:
    assert base64.b64encode(hashlib.sha256(BODY).digest()).decode() == HELLO_SHA256


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a=1, b=2", {"a": (1, {}), "b": (2, {})}),
        ("a=?0, b, c;foo=bar", {"a": (False, {}), "b": (True, {}), "c": (True, {"foo": "bar"})}),
        ('a="x\\"y"', {"a": ('x"y', {})}),
        ("a=:AQI=:", {"a": (b"\x01\x02", {})}),
        ("a=:AQI:", {"a": (b"\x01\x02", {})}),  # §4.2.7: missing padding accepted
        ("a=1.5, b=-3", {"a": (1.5, {}), "b": (-3, {})}),
        ("a=(1 2);p, b=tok/en", {"a": ([(1, {}), (2, {})], {"p": True}), "b": ("tok/en", {})}),
        ("a=1, a=2", {"a": (2, {})}),  # a later duplicate wins
        ("", {}),
    ],
)
def test_parse_dictionary_rfc8941_4_2_2(value: str, expected: dict[str, object]) -> None:
    assert parse_dictionary(value) == expected


@pytest.mark.parametrize(
    "value",
    ["A=1", "a=1,", "a=1,,b=2", "a=:!!:", "a=:AQI=", 'a="x', "a=?2", "a=1.2345",
     "a=1234567890123456", "a=(1,2)", "a=1 b=2", "1a=1", "a=é", 'a="\\x"', "a=@1"],
)  # fmt: skip
def test_parse_dictionary_refuses_invalid_rfc8941(value: str) -> None:
    with pytest.raises(SFError):
        parse_dictionary(value)


def _headers(**fields: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in fields.items()})


def test_repr_and_content_digest_both_checked_on_a_full_response_rfc9530_b1() -> None:
    headers = _headers(
        Repr_Digest=f"sha-256=:{HELLO_SHA256}:", Content_Digest=f"sha-256=:{HELLO_SHA256}:"
    )
    expected = expected_digests("GET", 200, headers)
    assert {e.field for e in expected} == {"content", "repr"}
    check = DigestCheck(expected)
    check.update(BODY[:5])
    check.update(BODY[5:])
    assert check.mismatches() == ()


def test_unknown_and_insecure_algorithms_are_ignored_rfc9530_5() -> None:
    headers = _headers(Repr_Digest="md5=:AAAA:, unixsum=30637, sha-999=:AAAA:")
    assert expected_digests("GET", 200, headers) == ()


def test_repr_digest_is_not_checked_on_a_206_rfc9530_b3() -> None:
    headers = _headers(Repr_Digest=f"sha-256=:{HELLO_SHA256}:", Content_Digest="sha-256=:AAAA:")
    assert [e.field for e in expected_digests("GET", 206, headers)] == ["content"]


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 304), ("GET", 204)])
def test_no_content_no_check_rfc9530_b2(method: str, status: int) -> None:
    headers = _headers(Repr_Digest="sha-256=:AAAA:", Content_Digest="sha-256=:AAAA:")
    assert expected_digests(method, status, headers) == ()


def test_unsafe_method_checks_content_digest_only_rfc9530_6() -> None:
    # A POST's Repr-Digest may describe the resource named by Content-Location.
    headers = _headers(Repr_Digest="sha-256=:AAAA:", Content_Digest="sha-256=:AAAA:")
    assert [e.field for e in expected_digests("POST", 200, headers)] == ["content"]


def test_a_malformed_field_is_ignored_whole_rfc8941_4_2() -> None:
    headers = _headers(Repr_Digest=f"sha-256=:{HELLO_SHA256}:, bad key")
    assert expected_digests("GET", 200, headers) == ()


def test_non_byte_sequence_member_is_ignored_and_short_one_mismatches() -> None:
    headers = _headers(Repr_Digest="sha-256=12, sha-512=:AAAA:")
    expected = expected_digests("GET", 200, headers)
    assert [e.algorithm for e in expected] == ["sha-512"]
    check = DigestCheck(expected)
    check.update(BODY)
    assert [e.algorithm for e in check.mismatches()] == ["sha-512"]


def test_mismatch_is_reported_per_field() -> None:
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    headers = _headers(Repr_Digest=f"sha-256=:{wrong}:", Content_Digest=f"sha-256=:{HELLO_SHA256}:")
    check = DigestCheck(expected_digests("GET", 200, headers))
    check.update(BODY)
    assert check.mismatches() == (Expected("repr", "sha-256", base64.b64decode(wrong)),)


@pytest.mark.parametrize(
    ("value", "chosen"),
    [
        ("sha-256=1", "sha-256"),
        ("sha-512=3, sha-256=10, unixsum=0", "sha-256"),
        ("sha-512=3, sha-256=3", "sha-512"),
        ("sha-256=0", None),  # §4: 0 is "not acceptable"
        ("md5=10", None),
        ("sha-256=11", None),
        ("sha-256=?1", None),
        ("sha-256=1,", None),  # invalid: ignored
    ],
)
def test_wanted_algorithm_rfc9530_4(value: str, chosen: str | None) -> None:
    assert wanted_algorithm(_headers(Want_Repr_Digest=value), "Want-Repr-Digest") == chosen


def test_wanted_algorithm_absent() -> None:
    assert wanted_algorithm(_headers(), "Want-Content-Digest") is None


_keys = st.from_regex(r"[a-z*][a-z0-9_\-.*]{0,8}", fullmatch=True)


@given(st.dictionaries(_keys, st.binary(max_size=80), max_size=6))
def test_serialized_digests_parse_back(members: dict[str, bytes]) -> None:
    parsed = parse_dictionary(serialize_digests(members.items()))
    assert parsed == {k: (v, {}) for k, v in members.items()}


@given(st.text(max_size=60))
def test_parser_raises_only_sferror(value: str) -> None:
    with contextlib.suppress(SFError):
        parse_dictionary(value)


@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=6))
def test_incremental_check_matches_whole_body(body: bytes, cuts: list[int]) -> None:
    value = base64.b64encode(content_digest_of("sha-512", body)).decode()
    check = DigestCheck(expected_digests("GET", 200, _headers(Content_Digest=f"sha-512=:{value}:")))
    edges = sorted({0, len(body), *(min(c, len(body)) for c in cuts)})
    for start, end in itertools.pairwise(edges):
        check.update(body[start:end])
    assert check.mismatches() == ()


@pytest.mark.parametrize(
    ("method", "request_fields", "partial", "expected"),
    [
        ("GET", {}, False, DigestAnswer()),
        ("GET", {}, True, DigestAnswer(drop_content=True)),
        ("HEAD", {}, False, DigestAnswer(drop_content=True)),
        ("GET", {"Want-Repr-Digest": "sha-256=1"}, False, DigestAnswer()),  # stored already
        ("GET", {"Want-Repr-Digest": "sha-512=1"}, False, DigestAnswer(repr="sha-512")),
        ("GET", {"Want-Content-Digest": "sha-256=1"}, False, DigestAnswer()),
        ("GET", {"Want-Content-Digest": "sha-256=1"}, True,
         DigestAnswer(drop_content=True, content="sha-256")),
    ],
)  # fmt: skip
def test_plan_answer_from_stored_rfc9530_4(
    method: str, request_fields: dict[str, str], partial: bool, expected: DigestAnswer
) -> None:
    stored = _headers(
        Repr_Digest=f"sha-256=:{HELLO_SHA256}:", Content_Digest=f"sha-256=:{HELLO_SHA256}:"
    )
    assert plan_answer(method, CIMultiDict(request_fields), stored, partial=partial) == expected
