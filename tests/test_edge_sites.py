"""Sites: the pure site table, the config that makes it, and the real `edge serve` process
routing by Host, keying its cache per site and purging per site."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from edge.certs import CertificateFormatError, handshake_failure, not_after
from edge.config import build_config, load_config
from edge.errors import ConfigError
from edge.server import EdgeServer
from edge.sites import SiteTable, cache_host, misdirected, request_host
from tests.origin_app import CACHEABLE, ScriptedOrigin, poll
from tests.test_edge_process import TOKEN, Process, spawn, stop

IMG = ["img.example.com", "cdn.example.com"]
API = ["api.example.com", "chat.example.com"]


def config(default: str | None = "http://127.0.0.1:1", **site_keys: str) -> dict[str, object]:
    edge: dict[str, object] = {"name": "e1"}
    if default is not None:
        edge["origin"] = default
    return {
        "edge": edge,
        "sites": [
            {"hosts": IMG, "origin": "http://127.0.0.1:2", **site_keys},
            {"hosts": API, "origin": "https://127.0.0.1:3", "name": "api", "websocket": False},
        ],
    }


def test_site_table_chooses_by_host_without_port_or_case() -> None:
    table = SiteTable.from_config(build_config("t.toml", config(), {}))
    img = table.choose("CDN.example.com:8080")
    assert img is not None and img.name == "img.example.com" and img.websocket
    api = table.choose("chat.example.com.")
    assert api is not None and api.name == "api" and not api.websocket
    other = table.choose("elsewhere.example")
    assert other is not None and other.name == "default" and other.origin == "http://127.0.0.1:1"


def test_without_a_default_an_unknown_host_has_no_site_rfc9110_15_5_20() -> None:
    table = SiteTable.from_config(build_config("t.toml", config(default=None), {}))
    assert table.choose("elsewhere.example") is None and table.default is None
    assert table.choose("img.example.com") is not None


def test_cache_keys_a_named_site_by_its_first_host_and_the_default_by_host() -> None:
    table = SiteTable.from_config(build_config("t.toml", config(), {}))
    img = table.choose("cdn.example.com")
    assert img is not None and cache_host(img, "cdn.example.com:8080") == "img.example.com"
    other = table.choose("Other.Example:80")
    assert other is not None and cache_host(other, "Other.Example:80") == "other.example"


@pytest.mark.parametrize(
    ("sni", "host", "expected"),
    [
        ("api.example.com", "api.example.com", False),
        ("api.example.com", "chat.example.com", False),  # one certificate covers both
        ("api.example.com", "img.example.com", True),  # img gets the default certificate
        ("img.example.com", "api.example.com", True),
        (None, "img.example.com", False),  # no SNI: the default certificate, right for img
        (None, "api.example.com", True),
        ("API.example.com", "api.example.com:443", False),
    ],
)
def test_misdirected_when_host_needs_another_certificate_rfc9110_7_4(
    sni: str | None, host: str, expected: bool
) -> None:
    certificate_of = {"api.example.com": "api.example.com", "chat.example.com": "api.example.com"}
    assert misdirected(sni, host, certificate_of) is expected


@given(st.text(max_size=40), st.one_of(st.none(), st.integers(0, 65535)))
def test_request_host_drops_port_and_case(name: str, port: int | None) -> None:
    host = request_host(name if port is None else f"{name}:{port}")
    assert host == host.lower() and (":" not in host or host.startswith("["))


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        ({"edge": {"name": "e"}}, "edge.origin", "required"),
        (config(**{"hosts": ["api.example.com"]}), "sites[1].hosts", "already a host of site"),
        (config(**{"hosts": ["img.example.com:80"]}), "sites[0].hosts[0]", "no port"),
        (config(**{"hosts": []}), "sites[0].hosts", "at least one"),
        (config(**{"name": "api"}), "sites[1].name", "taken"),
        (config(**{"name": "default"}), "sites[0].name", "taken"),
        (config(**{"origin": "ftp://x"}), "sites[0].origin", "http:// or https://"),
        (config(**{"websocket": "yes"}), "sites[0].websocket", "boolean"),
        (config(**{"orign": "http://x"}), "sites[0].orign", "did you mean 'origin'"),
    ],
)
def test_bad_sites_name_file_and_key(raw: dict[str, object], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config("t.toml", raw, {})
    assert caught.value.key == key and message in caught.value.message


def test_https_origin_ca_and_verify_are_read(tmp_path: Path) -> None:
    raw = config(origin_ca="ca.pem")
    raw["edge"] = {**raw["edge"], "origin_ca": "all.pem", "origin_verify": False}  # type: ignore[dict-item]
    cfg = build_config("t.toml", raw, {}, tmp_path)
    assert cfg.origin_ca == str(tmp_path / "all.pem") and cfg.origin_verify is False
    assert cfg.sites[0].origin_ca == str(tmp_path / "ca.pem") and cfg.sites[1].origin_ca is None


def test_not_after_reads_what_cryptography_reads() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("a.example", not_after=datetime.datetime(2031, 5, 4, 3, 2, 1))
    pem = leaf.cert_chain_pems[0].bytes()
    expected = x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()
    assert not_after(pem) == expected
    with pytest.raises(CertificateFormatError):
        not_after(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


@given(st.binary(max_size=300))
def test_not_after_never_fails_other_than_format_error(junk: bytes) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.b64encode(junk) + b"\n-----END CERTIFICATE-----"
    with contextlib.suppress(CertificateFormatError):
        not_after(pem)


def test_handshake_failure_reasons_are_bounded() -> None:
    unsupported = ssl.SSLError(1, "x")
    unsupported.reason = "UNSUPPORTED_PROTOCOL"
    assert handshake_failure(unsupported) == "protocol_version"
    assert handshake_failure(TimeoutError()) == "timeout"
    assert handshake_failure(ConnectionResetError()) == "closed"
    assert handshake_failure(ValueError()) == "other"


# The real process ---------------------------------------------------------------------


@pytest.fixture
async def origins() -> AsyncIterator[tuple[ScriptedOrigin, ScriptedOrigin]]:
    async with ScriptedOrigin() as img, ScriptedOrigin() as api:
        for origin, body in ((img, b"img"), (api, b"api")):
            origin.script("/same", headers=CACHEABLE, body=body)
        yield img, api


def write_sites(tmp_path: Path, img: str, api: str, default: str | None) -> Path:
    path = tmp_path / "edge.toml"
    origin = f'origin = "{default}"' if default else ""
    path.write_text(
        f"""
[edge]
name = "edge-sites-1"
listen = "127.0.0.1:0"
control = "127.0.0.1:0"
token = "{TOKEN}"
{origin}

[[sites]]
hosts = {IMG!r}
origin = "{img}"

[[sites]]
name = "api"
hosts = {API!r}
origin = "{api}"
""".replace("'", '"')
    )
    return path


async def start(path: Path) -> Process:
    return await spawn([sys.executable, "-m", "edge", "serve", "--config", str(path)])


async def get(edge: Process, host: str, path: str = "/same") -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as client:
        url = f"http://{edge.fields['content']}{path}"
        async with client.get(url, headers={"Host": host}) as resp:
            return resp.status, await resp.read(), resp.headers.get("Cache-Status", "")


async def purge(edge: Process, selector: dict[str, str]) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as client:
        url = f"http://{edge.fields['control']}/purge"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with client.post(url, json=selector, headers=headers) as resp:
            return resp.status, await resp.json()


async def test_host_routes_to_its_sites_origin_and_unknown_host_is_421(
    tmp_path: Path, origins: tuple[ScriptedOrigin, ScriptedOrigin]
) -> None:
    img, api = origins
    edge = await start(write_sites(tmp_path, img.url, api.url, default=None))
    try:
        assert (await get(edge, "img.example.com"))[:2] == (200, b"img")
        assert (await get(edge, "chat.example.com:8080"))[:2] == (200, b"api")
        status, _, _ = await get(edge, "elsewhere.example")
        assert status == 421 and img.fetches["/same"] == api.fetches["/same"] == 1
    finally:
        await stop(edge)


async def test_default_origin_serves_every_other_host(
    tmp_path: Path, origins: tuple[ScriptedOrigin, ScriptedOrigin]
) -> None:
    img, api = origins
    async with ScriptedOrigin() as default:
        default.script("/same", headers=CACHEABLE, body=b"default")
        edge = await start(write_sites(tmp_path, img.url, api.url, default=default.url))
        try:
            assert (await get(edge, "elsewhere.example"))[:2] == (200, b"default")
            assert (await get(edge, "img.example.com"))[:2] == (200, b"img")
        finally:
            await stop(edge)


async def test_cache_is_per_site_and_purge_is_per_site(
    tmp_path: Path, origins: tuple[ScriptedOrigin, ScriptedOrigin]
) -> None:
    img, api = origins
    edge = await start(write_sites(tmp_path, img.url, api.url, default=None))
    try:
        # Same path on two sites: two objects, each from its own origin.
        assert (await get(edge, "img.example.com"))[1] == b"img"
        assert (await get(edge, "api.example.com"))[1] == b"api"
        # An alias of a site shares the site's object.
        status, body, cache_status = await get(edge, "cdn.example.com")
        assert (status, body) == (200, b"img") and "hit" in cache_status
        assert img.fetches["/same"] == 1 and api.fetches["/same"] == 1
        # Purging one site's URL (through any of its hosts) leaves the other site's.
        assert await purge(edge, {"url": "http://cdn.example.com/same"}) == (200, {"purged": 1})
        assert "hit" in (await get(edge, "api.example.com"))[2]
        assert "hit" not in (await get(edge, "img.example.com"))[2]
        assert await purge(edge, {"site": "api"}) == (200, {"purged": 1})
        assert "hit" not in (await get(edge, "chat.example.com"))[2]
        assert await purge(edge, {"url": "http://elsewhere.example/same"}) == (200, {"purged": 0})
        status, answer = await purge(edge, {"site": "nope"})
        assert status == 400 and "img.example.com, api" in str(answer["error"])
        assert img.fetches["/same"] == 2 and api.fetches["/same"] == 2
    finally:
        await stop(edge)


async def test_reload_moves_a_site_without_cutting_a_request_in_flight(tmp_path: Path) -> None:
    async with ScriptedOrigin() as old, ScriptedOrigin() as new:
        gate = asyncio.Event()
        old.script("/slow", body=b"old", gate=gate)
        new.script("/fresh", body=b"new")
        server = EdgeServer(load_config(write_sites(tmp_path, old.url, new.url, default=None)))
        await server.start()
        try:
            base = f"http://{server.content}"
            headers = {"Host": "img.example.com"}
            async with aiohttp.ClientSession() as client:

                async def fetch(path: str) -> tuple[int, bytes]:
                    async with client.get(base + path, headers=headers) as resp:
                        return resp.status, await resp.read()

                in_flight = asyncio.create_task(fetch("/slow"))
                await poll(lambda: old.fetches["/slow"] == 1)
                replaced = server.proxy.routing.origins["img.example.com"]
                write_sites(tmp_path, new.url, new.url, default=None)
                assert await server.reload()
                assert await fetch("/fresh") == (200, b"new")  # the site's new origin
                assert not replaced.closed  # still fetching for the request before the reload
                gate.set()
                assert await in_flight == (200, b"old")
                await poll(lambda: replaced.closed)
        finally:
            await server.stop()


async def test_a_reload_that_drops_a_site_misdirects_what_it_had_cached_rfc9110_15_5_20(
    tmp_path: Path, origins: tuple[ScriptedOrigin, ScriptedOrigin]
) -> None:
    img, api = origins
    path = write_sites(tmp_path, img.url, api.url, default=None)
    server = EdgeServer(load_config(path))
    await server.start()
    registry = server.metrics.registry
    try:
        async with aiohttp.ClientSession() as client:

            async def fetch(host: str) -> tuple[int, str]:
                url = f"http://{server.content}/same"
                async with client.get(url, headers={"Host": host}) as resp:
                    return resp.status, resp.headers.get("Cache-Status", "")

            for host in ("api.example.com", "img.example.com"):
                await fetch(host)
                status, cache_status = await fetch(host)  # a hit: the fast path's
                assert status == 200 and "hit" in cache_status
            assert registry.get_sample_value("edge_fast_path_hits_total") == 2
            path.write_text(path.read_text().partition('[[sites]]\nname = "api"')[0])
            assert await server.reload()
            # The api site is gone: its cached object is not served under any Host.
            assert (await fetch("api.example.com"))[0] == 421
            misdirected = registry.get_sample_value(
                "edge_misdirected_requests_total", {"reason": "no_site"}
            )
            assert misdirected == 1
            status, cache_status = await fetch("img.example.com")
            assert status == 200 and "hit" in cache_status
            assert registry.get_sample_value("edge_fast_path_hits_total") == 3
    finally:
        await server.stop()
