"""Malformed client requests on the real edge: 400, one count by reason, one DEBUG line, and
no ERROR traceback in its log (any client could otherwise flood it)."""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import pytest

from edge.server import EdgeServer
from tests.origin_app import metric
from tests.test_edge_process import edge_argv, spawn, stop

pytest_plugins = ("tests.edge_fixtures",)

GARBAGE = {
    b"GARBAGE\r\n\r\n": "method",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40: "method",  # a TLS hello
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n": "header",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n": "too_large",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n": "too_large",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n": "framing",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n": "framing",
}


async def exchange(where: str, request: bytes) -> bytes:
    """Send raw bytes, read the answer until the edge closes the connection."""
    host, port = where.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def counts(text: str) -> dict[str, float]:
    found = re.findall(r'^edge_bad_requests_total\{reason="(\w+)"\} (\S+)$', text, re.M)
    return {reason: float(value) for reason, value in found}


async def test_garbage_is_400_counted_by_reason_without_a_traceback() -> None:
    edge = await spawn(edge_argv("edge-eu-1", "http://127.0.0.1:1", []))
    try:
        for request in GARBAGE:
            answer = await exchange(edge.fields["content"], request)
            assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 ")
        url = f"http://{edge.fields['control']}/metrics"
        async with aiohttp.ClientSession() as client, client.get(url) as resp:
            found = counts(await resp.text())
    finally:
        await stop(edge)
    expected = {r: 0.0 for r in ("method", "request_line", "header", "framing", "too_large")}
    for reason in GARBAGE.values():
        expected[reason] += 1
    assert found == {**expected, "other": 0.0}
    log = "".join(edge.log)
    assert "Traceback" not in log and "level=ERROR" not in log, log


async def test_one_debug_line_with_the_reason(
    edge: EdgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge")
    request = b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"
    assert (await exchange(str(edge.content), request)).startswith(b"HTTP/1.0 400 ")
    lines = [r for r in caplog.records if "event=bad_request" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.DEBUG, None)]
    assert re.fullmatch(
        r"event=bad_request reason=header peer=127\.0\.0\.1 detail=.Invalid header token.*",
        lines[0].getMessage(),
    )
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    assert metric(edge.metrics, "edge_bad_requests_total", {"reason": "header"}) == 1
