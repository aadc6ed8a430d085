"""This cache's Cache-Status member (RFC 9211 §2): parameters, tokens and strings."""

from __future__ import annotations

import pytest

from edge.cache_status import cache_status

CACHE_NAME = "edge-eu-1"  # a node name


@pytest.mark.parametrize(
    ("args", "kwargs", "member"),
    [
        (("hit",), {"ttl": 372.9}, f"{CACHE_NAME}; hit; ttl=372"),
        (
            ("hit",),
            {"ttl": -4.2, "detail": "stale-while-revalidate"},
            f"{CACHE_NAME}; hit; ttl=-5; detail=stale-while-revalidate",
        ),
        (("fwd",), {"fwd": "miss", "stored": True}, f"{CACHE_NAME}; fwd=miss; stored"),
        (("fwd",), {"fwd": "stale", "fwd_status": 304}, f"{CACHE_NAME}; fwd=stale; fwd-status=304"),
        (
            ("fwd",),
            {"fwd": "miss", "detail": 'origin "down"'},
            f'{CACHE_NAME}; fwd=miss; detail="origin \\"down\\""',
        ),
    ],
)
def test_cache_status_members_rfc9211_2(
    args: tuple[str], kwargs: dict[str, object], member: str
) -> None:
    assert cache_status(CACHE_NAME, *args, **kwargs) == member  # type: ignore[arg-type]


@pytest.mark.parametrize(("token", "fwd"), [("fwd", None), ("fwd", "not a token"), ("miss", "x")])
def test_cache_status_rejects_invalid_members_rfc9211_2(token: str, fwd: str | None) -> None:
    with pytest.raises(ValueError):
        cache_status(CACHE_NAME, token, fwd=fwd)


def test_a_node_name_that_is_no_token_is_a_string_rfc9211_2() -> None:
    # RFC 9211 §2: the cache identifier is an sf-token or an sf-string.
    assert cache_status("edge 1", "hit") == '"edge 1"; hit'
    assert cache_status("shield-1", "hit") == "shield-1; hit"
