"""The social demo: its origin's live parts, wss through real edges, and a real browser.

The browser test runs the Debian `chromium` headless under Selenium (`/usr/bin/chromedriver`,
nothing downloaded) against a whole demo CDN with HTTPS (cdnlab/loopback.py, tls=True): two
pages on two edges, images, a comment and a chat message checked from the pages themselves.
Chromium's background networking is switched off and its NetLog is read afterwards: every
connection it made must have gone to loopback (the network rule).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from cdnlab import origin
from cdnlab.certs import spki_hash
from cdnlab.loopback import Cdn, poll, start_cdn
from cdnlab.plan import FEED_PAGE, browser_command
from cdnlab.social import MAX_CHAT_TEXT, chat_message

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_DEADLINE_S = 30.0
# Everything Chromium does on its own (updates, sync, safe browsing, ...) is switched off.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage",
    "--no-proxy-server", "--window-size=1100,1300",
    "--disable-client-side-phishing-detection", "--disable-domain-reliability", "--no-pings",
    "--disable-breakpad", "--metrics-recording-only", "--safebrowsing-disable-auto-update",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,"
    "AutofillServerCommunication,CertificateTransparencyComponentUpdater",
)  # fmt: skip


# ---- the origin's live parts ---------------------------------------------------------------


@pytest.fixture
async def origin_url() -> AsyncIterator[str]:
    runner = web.AppRunner(origin.create_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


def test_chat_message_is_validated() -> None:
    assert json.loads(chat_message('{"author": "a", "text": "hi"}') or "") == {
        "author": "a",
        "text": "hi",
    }
    for bad in ("nope", "[1]", '{"text": ""}', '{"text": 5}', '{"text": "x", "author": ""}'):
        assert chat_message(bad) is None
    assert chat_message(json.dumps({"text": "x" * (MAX_CHAT_TEXT + 1)})) is None


async def test_chat_broadcasts_to_every_member(origin_url: str) -> None:
    ws_url = origin_url.replace("http", "ws") + "/chat"
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url) as a, s.ws_connect(ws_url) as b:
        await a.send_str("not json")  # ignored, the room goes on
        await a.send_str(json.dumps({"author": "ann", "text": "hello room"}))
        for member in (a, b):
            assert await member.receive_json(timeout=5) == {"author": "ann", "text": "hello room"}


async def test_comment_is_announced_on_the_notifications_stream(origin_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{origin_url}/api/notifications") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            assert stream.headers["Access-Control-Allow-Origin"] == "*"
            assert await stream.content.readuntil(b"\n\n") == b"retry: 2000\n: connected\n\n"
            comment = {"post": 3, "author": "bo", "text": "nice"}
            async with s.post(f"{origin_url}/api/comments", json=comment) as r:
                assert r.status == 201
            event = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)
        assert event.startswith(b"event: comment\ndata: ")
        assert json.loads(event.split(b"data: ", 1)[1]) == comment
        async with s.get(f"{origin_url}/api/posts") as r:
            post = (await r.json())["posts"][2]
        assert post["recent"] == [comment] and post["image"].startswith("/img/")


async def test_cors_preflight_lets_the_feed_post_comments(origin_url: str) -> None:
    headers = {"Origin": "https://cdn.example.com", "Access-Control-Request-Method": "POST"}
    async with aiohttp.ClientSession() as s:
        async with s.options(f"{origin_url}/api/comments", headers=headers) as r:
            assert r.status == 204
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert r.headers["Access-Control-Allow-Headers"] == "Content-Type"
        async with s.get(f"{origin_url}/api/posts") as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"
        async with s.get(f"{origin_url}/feed.html") as r:
            assert r.status == 200 and "social.v1.js" in await r.text()


# ---- wss through a real edge ---------------------------------------------------------------


class StaticResolver(AbstractResolver):
    """Every name resolves to one loopback address (the edge), as a browser's host rules do."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host=self.address, port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


def _session(cdn: Cdn, node: str) -> aiohttp.ClientSession:
    assert cdn.plan.tls is not None
    context = ssl.create_default_context(cafile=str(cdn.plan.tls.ca))
    connector = aiohttp.TCPConnector(resolver=StaticResolver(cdn.ip(node)), ssl=context)
    return aiohttp.ClientSession(connector=connector)


@pytest.mark.timeout(90)
async def test_wss_echo_and_chat_through_edges_with_the_demo_ca(tmp_path: Path) -> None:
    async with start_cdn(tmp_path, tls=True) as cdn:
        echo_url = cdn.tls_url("edge-eu-1", "/echo", "chat.example.com").replace("https", "wss")
        chat_url = echo_url.replace("/echo", "/chat")
        async with _session(cdn, "edge-eu-1") as eu, _session(cdn, "edge-na-1") as na:
            async with eu.ws_connect(echo_url) as ws:
                await ws.send_str("ping through TLS")
                assert await ws.receive_str(timeout=5) == "ping through TLS"
                await ws.send_bytes(b"\x00\x01" * 1000)
                assert await ws.receive_bytes(timeout=5) == b"\x00\x01" * 1000
            # Two members on two edges: the message crosses the CDN through the origin's room.
            async with eu.ws_connect(chat_url) as a, na.ws_connect(chat_url) as b:
                await _wait_tunnels(cdn, {"edge-eu-1": 1, "edge-na-1": 1})
                await a.send_str(json.dumps({"author": "eu", "text": "hello from eu"}))
                assert await b.receive_json(timeout=5) == {"author": "eu", "text": "hello from eu"}
            # The same edge without the CA: the certificate is refused.
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=StaticResolver(cdn.ip("edge-eu-1")))
            ) as untrusting:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await untrusting.ws_connect(echo_url)


async def _wait_tunnels(cdn: Cdn, expected: dict[str, int]) -> None:
    """The router's node list shows the open WebSockets (what the demo's `ws` column reads)."""
    async with aiohttp.ClientSession() as session:
        await poll(
            lambda: cdn.nodes(session),
            lambda nodes: all(nodes[n]["tunnels"] == count for n, count in expected.items()),
            10.0,
            f"tunnels {expected} in the router's node list",
        )


# ---- a real browser ------------------------------------------------------------------------


def _chromium_missing() -> str | None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return f"{CHROMIUM} or {CHROMEDRIVER} missing: `make test-packages` installs them"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing: it is in the dev extra (`make test` installs it)"
    return None


@pytest.mark.timeout(180)
@pytest.mark.skipif(_chromium_missing() is not None, reason=str(_chromium_missing()))
async def test_browser_uses_the_social_app_over_https_through_edges(tmp_path: Path) -> None:
    async with start_cdn(tmp_path, tls=True) as cdn:
        assert cdn.plan.tls is not None
        assert "--host-resolver-rules" in browser_command(cdn.plan, cdn.plan.edges[0])
        url = cdn.tls_url("edge-eu-1", FEED_PAGE, "cdn.example.com")
        spki = spki_hash(cdn.plan.tls.cert.read_bytes())
        report = await asyncio.to_thread(
            _drive_browsers,
            url,
            spki,
            {"a": cdn.ip("edge-eu-1"), "b": cdn.ip("edge-na-1")},
            tmp_path,
        )
    assert report["images"] and all(width > 0 for width in report["images"]), report
    foreign = set().union(*(_assert_only_loopback(netlog) for netlog in report["netlogs"]))
    (tmp_path / "foreign-hosts-refused.txt").write_text("\n".join(sorted(foreign)) + "\n")


def _drive_browsers(url: str, spki: str, edge_ips: dict[str, str], out: Path) -> dict[str, Any]:
    """Page a on one edge, page b on another: images, a comment, a chat message from a to b."""
    from selenium.webdriver.support.ui import WebDriverWait

    drivers = {name: _chromium(name, ip, spki, out) for name, ip in edge_ips.items()}
    try:
        a, b = drivers["a"], drivers["b"]
        for driver in (a, b):
            driver.get(url)
        wait_a, wait_b = (WebDriverWait(d, BROWSER_DEADLINE_S, 0.1) for d in (a, b))
        for wait in (wait_a, wait_b):
            wait.until(_js("return socialDemo.feedLoaded && socialDemo.chatOpen"))
        images = wait_a.until(
            _js(
                "const i = [...document.images];"
                "return i.every(x => x.complete) && i.map(x => x.naturalWidth)"
            )
        )
        _type(a, "comment-text", "What a lovely cat", "#comment-form button")
        wait_a.until(_js("return document.querySelector('#post-1 ul').textContent"
                         ".includes('you: What a lovely cat')"))  # fmt: skip
        # Page b hears of the comment on its notifications stream (SSE through its edge).
        wait_b.until(_js("return document.getElementById('notifications').textContent"
                         ".includes('What a lovely cat')"))  # fmt: skip
        _type(a, "chat-text", "hello from page a", "#chat-form button")
        wait_b.until(_js("return document.getElementById('chat-log').textContent"
                         ".includes('you: hello from page a')"))  # fmt: skip
        a.save_screenshot(str(out / "social-demo.png"))
    finally:
        for driver in drivers.values():
            driver.quit()
    netlogs = [(out / f"netlog-{name}.json").read_text() for name in drivers]
    return {"images": images, "netlogs": netlogs}


def _chromium(name: str, edge_ip: str, spki: str, out: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # Only the demo's names resolve (to the edge); every other name fails without a lookup.
    options.add_argument(f"--host-resolver-rules=MAP *.example.com {edge_ip}, MAP * ~NOTFOUND")
    options.add_argument(f"--ignore-certificate-errors-spki-list={spki}")
    options.add_argument(f"--user-data-dir={out / f'chromium-{name}'}")
    options.add_argument(f"--log-net-log={out / f'netlog-{name}.json'}")
    service = Service(CHROMEDRIVER, log_output=str(out / f"chromedriver-{name}.log"))
    return webdriver.Chrome(options=options, service=service)


def _js(script: str) -> Callable[[Any], Any]:
    return lambda driver: driver.execute_script(script)


def _type(driver: Any, field: str, text: str, button: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, field).send_keys(text)
    driver.find_element(By.CSS_SELECTOR, button).click()


ADDRESS_KEYS = ("address", "remote_address", "address_list")


def _addresses(params: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key in ADDRESS_KEYS:
        value = params.get(key)
        found += value if isinstance(value, list) else [value] if isinstance(value, str) else []
    return found


def _loopback(address: str) -> bool:
    return address.startswith(("127.", "[::1]"))


def _assert_only_loopback(netlog: str) -> set[str]:
    """Chromium's NetLog: every TCP connection went to loopback and no UDP datagram left it.
    Returns the other hosts Chromium tried to reach (each failed at its resolver).

    Chromium 156 still tries a few Google hosts (component updates, network time, accounts)
    and the default search engine despite the flags; `MAP * ~NOTFOUND` fails each of them
    before a socket exists, which is what this check proves. A UDP socket may be connect()ed
    to a public address without sending (Chromium's IPv6 reachability probe: a route lookup,
    no packet); a datagram sent on it fails the check."""
    log = json.loads(netlog)
    kinds = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    tcp_loopback, udp_outside, foreign = 0, set(), set()
    for event in log["events"]:
        kind, source = kinds.get(event["type"], "?"), event["source"]["id"]
        params = event.get("params") or {}
        addresses = _addresses(params)
        host = urlsplit(str(params.get("url", ""))).hostname or ""
        if host and not (host.endswith(".example.com") or _loopback(host)):
            foreign.add(host)
        if kind.startswith("TCP_CONNECT"):
            outside = [a for a in addresses if not _loopback(a)]
            assert not outside, f"chromium connected over TCP to {outside}"
            tcp_loopback += len(addresses)
        elif kind == "UDP_CONNECT" and not all(map(_loopback, addresses)):
            udp_outside.add(source)
        elif kind.endswith("BYTES_SENT"):
            assert source not in udp_outside, f"chromium sent UDP to a public address: {event}"
            assert all(map(_loopback, addresses)), f"chromium sent to {addresses}"
    assert tcp_loopback, "the NetLog recorded no connection at all"
    return foreign


def _netlog(*events: tuple[str, int, dict[str, Any]]) -> str:
    kinds = {"TCP_CONNECT": 1, "UDP_CONNECT": 2, "UDP_BYTES_SENT": 3, "URL_REQUEST_START_JOB": 4}
    rows = [{"type": kinds[k], "source": {"id": i}, "params": p} for k, i, p in events]
    return json.dumps({"constants": {"logEventTypes": kinds}, "events": rows})


def test_loopback_check_can_fail() -> None:
    local = ("TCP_CONNECT", 1, {"address_list": ["127.1.2.3:8443"]})
    probe = ("UDP_CONNECT", 2, {"address": "[2001:4860:4860::8888]:443"})
    page = ("URL_REQUEST_START_JOB", 4, {"url": "https://cdn.example.com:1/feed.html"})
    tried = ("URL_REQUEST_START_JOB", 5, {"url": "https://update.googleapis.com/x"})
    # A route probe sending nothing and a request failed at the resolver leave nothing.
    assert _assert_only_loopback(_netlog(local, probe, page, tried)) == {"update.googleapis.com"}
    bad = [
        _netlog(local, ("TCP_CONNECT", 3, {"address_list": ["142.250.1.1:443"]})),
        _netlog(local, probe, ("UDP_BYTES_SENT", 2, {"byte_count": 40})),
        _netlog(local, ("UDP_BYTES_SENT", 6, {"address": "8.8.8.8:53"})),
        _netlog(probe),
    ]
    for netlog in bad:
        with pytest.raises(AssertionError):
            _assert_only_loopback(netlog)


def test_screenshot_in_docs_is_a_png() -> None:
    shot = Path(__file__).parent.parent / "docs" / "img" / "social-demo.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
