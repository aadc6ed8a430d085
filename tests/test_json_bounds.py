"""Bounded JSON bodies: the shared decoder, and the real router's /api/v1/report and the real
edge's /purge answering 400 (not a RecursionError 500 with a traceback) to deep nesting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdn.jsonbody import JsonBodyError, decode_json_object, nesting_depth
from cdn.report import LoadReport
from tests.test_edge_process import edge_argv, spawn, stop
from tests.test_router_e2e import node_auth, running_router

LIMITS = {"max_bytes": 4096, "max_depth": 4}
REPORT = LoadReport("edge-eu-1", 1, "up", 1, 100.0, 2000.0, 0.05, 0.9).to_json()


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b" " * 4097, "body larger than 4096 bytes"),
        (b'{"a": [[[[1]]]]}', "JSON nested deeper than 4 levels"),
        (nested(2000), "JSON nested deeper than 4 levels"),
        (b'{"a": {"b": {"c": {"d": {}}}}}', "JSON nested deeper than 4 levels"),
        (b'{"a": "\xff"}', "not UTF-8 (byte 7)"),
        (b"{not json", "not JSON: Expecting property name"),
        (b"[[[1]]]", "expected a JSON object"),
        (b"", "not JSON: Expecting value"),
    ],
)
def test_defects_are_one_line_reasons(body: bytes, reason: str) -> None:
    with pytest.raises(JsonBodyError) as err:
        decode_json_object(body, **LIMITS)
    assert str(err.value).startswith(reason)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": [[[1]]]}',  # exactly max_depth
        b'{"s": "[[[[[[{{{{ \\" [[[[[", "t": [[1], [2], [3], [4], [5]]}',  # strings do not nest
        b'{"a": [], "b": [], "c": [], "d": [], "e": {}}',  # many openers, depth 2
    ],
)
def test_bodies_within_the_limits_decode(body: bytes) -> None:
    assert decode_json_object(body, **LIMITS) == json.loads(body)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab'),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@given(JSON)
def test_nesting_depth_is_the_values_depth(value: Any) -> None:
    assert nesting_depth(json.dumps(value).encode()) == depth(value)


@given(st.binary(max_size=200) | st.text(alphabet='[]{}",:1a\\ ').map(str.encode))
def test_any_body_decodes_or_is_a_json_body_error(body: bytes) -> None:
    try:
        assert isinstance(decode_json_object(body, **LIMITS), dict)
    except JsonBodyError as exc:
        assert "\n" not in str(exc)


def no_traceback(log: list[str]) -> bool:
    return not any("Traceback" in line or "Error handling request" in line for line in log)


async def test_router_answers_a_2000_level_report_400_and_keeps_working(tmp_path: Path) -> None:
    url_headers = node_auth(json.loads(REPORT)["node"])
    async with running_router(tmp_path, wait_up=False) as router:
        async with aiohttp.ClientSession(headers=url_headers) as client:
            url = router.api("/api/v1/report")
            async with client.post(url, data=nested(2000)) as resp:
                assert resp.status == 400
                assert "nested deeper than" in (await resp.json())["error"]
            async with client.post(url, data=REPORT.replace(b'"seq":1', b'"seq":99999')) as resp:
                assert resp.status == 200  # still serving
        assert no_traceback(router.log), "".join(router.log)


async def test_edge_answers_a_3000_level_purge_400_and_keeps_working() -> None:
    edge = await spawn(edge_argv("edge-eu-1", "http://127.0.0.1:1", []))
    try:
        auth = {"Authorization": "Bearer t0ken"}
        async with aiohttp.ClientSession(headers=auth) as client:
            url = f"http://{edge.fields['control']}/purge"
            async with client.post(url, data=nested(3000)) as resp:
                assert resp.status == 400
                assert "nested deeper than" in (await resp.json())["error"]
            async with client.post(url, json={"key": "product-42"}) as resp:
                assert (resp.status, await resp.json()) == (200, {"purged": 0})
    finally:
        await stop(edge)
    assert no_traceback(edge.log), "".join(edge.log)
