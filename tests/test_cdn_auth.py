"""The shared bearer-token check (cdn.auth) that both control APIs use."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdn.auth import authorized, challenge, credentials

TOKENS = ("current", "previous")


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer current", True),
        ("Bearer previous", True),  # a rotation: the old token still works
        ("Bearer  current", True),  # RFC 9110 §5.6.3: the space before the token is 1*SP
        ("Bearer other", False),
        ("Bearer current2", False),
        ("Bearer curren", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("Basic current", False),
        ("current", False),
        ("Bearercurrent", False),
        ("Bearer current ", False),
        (None, False),
    ],
)
def test_authorized_rfc6750_2_1(header: str | None, ok: bool) -> None:
    assert authorized(header, TOKENS) is ok


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive_rfc9110_11_1(scheme: str) -> None:
    assert authorized(f"{scheme} current", TOKENS)


def test_the_token_itself_is_case_sensitive() -> None:
    assert not authorized("Bearer CURRENT", TOKENS)


def test_no_configured_token_refuses_everything() -> None:
    # An empty token (an edge without edge.token) must not match an empty credential.
    for header in ("Bearer ", "Bearer", "bearer  ", None):
        assert not authorized(header, ("",))
        assert not authorized(header, ())


def test_header_bytes_come_back_from_surrogateescape() -> None:
    # aiohttp hands undecodable header bytes over as surrogates; they never match or crash.
    header = b"Bearer \xff\xfe".decode("utf-8", "surrogateescape")
    assert credentials(header) == b"\xff\xfe"
    assert not authorized(header, TOKENS)


def test_challenge_rfc6750_3_1() -> None:
    assert challenge("edge", None) == 'Bearer realm="edge"'
    assert challenge("georouter", "Bearer x") == 'Bearer realm="georouter", error="invalid_token"'


@given(st.text(), st.lists(st.text(min_size=1), max_size=3))
def test_only_an_exact_configured_token_is_accepted(token: str, tokens: list[str]) -> None:
    header = f"Bearer {token}"
    expected = token.lstrip(" ") in tokens
    assert authorized(header, tokens) is expected
