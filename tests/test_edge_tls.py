"""HTTPS at the real `edge serve` process: certificates by SNI, TLS versions, SIGHUP reload,
TLS to https:// origins, and bad files at start and at reload.

A private CA (trustme) issues every certificate into tmp_path; clients are Python's ssl and
curl. Every process listens on 127.0.0.1 with kernel-chosen ports and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from cdn.config import HostPort
from edge.config import CertificateConfig, TlsSettings
from tests.origin_app import CACHEABLE, LOOPBACK, ScriptedOrigin, metric, poll, running_edge
from tests.test_edge_process import ROOT, TOKEN, Process, spawn, stop
from tests.tls_fixtures import Issued, TlsClient, TlsOrigin, curl, issue, scrape, tls_get

pytest_plugins = ("tests.edge_fixtures",)

SITE_HOST = "www.edge.test"  # the [tls] default certificate's name
API_HOST = "api.edge.test"  # a [[tls.certificates]] entry, chosen by SNI


@dataclass
class Setup:
    directory: Path
    ca: trustme.CA
    ca_file: Path
    default: Issued
    api: Issued
    config: Path


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    default = issue(ca, tmp_path, "edge", SITE_HOST)
    api = issue(ca, tmp_path, "api", API_HOST)
    return Setup(tmp_path, ca, ca_file, default, api, tmp_path / "edge.toml")


def write_config(s: Setup, origin: str, *, api_origin: str = "", extra: str = "") -> Path:
    site = (
        f'[[sites]]\nhosts = ["{API_HOST}"]\norigin = "{api_origin}"\n{extra}\n'
        if api_origin
        else ""
    )
    s.config.write_text(
        f"""
[edge]
name = "edge-tls-1"
listen = "127.0.0.1:0"
control = "127.0.0.1:0"
origin = "{origin}"
token = "{TOKEN}"
drain_s = 0.5

{site}
[tls]
listen = "127.0.0.1:0"
cert = "edge.pem"
key = "edge.key"

[[tls.certificates]]
hosts = ["{API_HOST}"]
cert = "api.pem"
key = "api.key"
"""
    )
    return s.config


def edge_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "edge", "serve", "--config", str(config)]


@pytest.fixture
async def edge(setup: Setup, origin: ScriptedOrigin) -> AsyncIterator[Process]:
    origin.script("/a", headers=CACHEABLE, body=b"from the origin")
    child = await spawn(edge_argv(write_config(setup, origin.url)))
    yield child
    await stop(child)


async def reload(child: Process, event: str) -> str:
    """SIGHUP, then the log line it led to (``event=reloaded`` or ``event=reload_failed``)."""
    seen = len(child.log)
    child.proc.send_signal(signal.SIGHUP)
    await poll(lambda: any("event=reload" in line for line in child.log[seen:]), 10)
    line = next(line for line in child.log[seen:] if "event=reload" in line)
    assert f"event={event}" in line, line
    return line


async def test_listening_line_names_the_tls_address(edge: Process) -> None:
    assert edge.fields["tls"].startswith("127.0.0.1:")
    assert edge.fields["content"] != edge.fields["tls"]


async def test_sni_chooses_the_certificate_python_ssl(setup: Setup, edge: Process) -> None:
    def peers() -> tuple[bytes, bytes, bytes, str | None, str | None]:
        www = TlsClient(edge.fields["tls"], setup.ca_file, SITE_HOST)
        api = TlsClient(edge.fields["tls"], setup.ca_file, API_HOST)
        bare = TlsClient(edge.fields["tls"], setup.ca_file, None)  # no SNI: the default
        try:
            alpn, version = api.sock.selected_alpn_protocol(), api.sock.version()
            return www.peer_der(), api.peer_der(), bare.peer_der(), alpn, version
        finally:
            for client in (www, api, bare):
                client.close()

    www, api, bare, alpn, version = await asyncio.to_thread(peers)
    assert www == setup.default.der and bare == setup.default.der
    assert api == setup.api.der
    assert alpn == "http/1.1" and version == "TLSv1.3"
    assert await scrape(edge.fields["control"], "edge_tls_handshakes_total") >= 3


async def test_sni_chooses_the_certificate_curl(setup: Setup, edge: Process) -> None:
    port = edge.fields["tls"].rpartition(":")[2]
    for host in (SITE_HOST, API_HOST):
        code, out, err = await curl(
            "--cacert", str(setup.ca_file), "--resolve", f"{host}:{port}:127.0.0.1",
            "--write-out", "%{http_code}", "--output", "/dev/null", f"https://{host}:{port}/a",
        )  # fmt: skip
        # curl checks the certificate against the name: it only succeeds with the right one.
        assert (code, out) == (0, "200"), err


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_1_1_and_plain_http_are_refused_and_counted(setup: Setup, edge: Process) -> None:
    def tls11() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(setup.ca_file))
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        host, _, port = edge.fields["tls"].rpartition(":")
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            pytest.raises(ssl.SSLError),
        ):
            ctx.wrap_socket(raw, server_hostname=SITE_HOST)

    await asyncio.to_thread(tls11)
    port = edge.fields["tls"].rpartition(":")[2]
    code, _, _ = await curl(
        "--cacert", str(setup.ca_file), "--tlsv1.1", "--tls-max", "1.1",
        "--resolve", f"{SITE_HOST}:{port}:127.0.0.1", f"https://{SITE_HOST}:{port}/a",
    )  # fmt: skip
    assert code != 0
    code, _, _ = await curl(f"http://{edge.fields['tls']}/a")  # plain HTTP on the TLS port
    assert code != 0
    control = edge.fields["control"]
    failures = "edge_tls_handshake_failures_total"
    await poll_metric(control, failures, {"reason": "protocol_version"}, 1)
    await poll_metric(control, failures, {"reason": "not_tls"}, 1)
    assert await scrape(control, "edge_tls_handshakes_total") == 0


async def poll_metric(control: str, name: str, labels: dict[str, str], least: float) -> None:
    async def reached() -> bool:
        return await scrape(control, name, labels) >= least

    deadline = asyncio.get_running_loop().time() + 10
    while not await reached():
        assert asyncio.get_running_loop().time() < deadline, f"{name}{labels} < {least}"
        await asyncio.sleep(0.05)


async def test_reload_swaps_certificate_keeps_open_connection_and_cache(
    setup: Setup, origin: ScriptedOrigin, edge: Process
) -> None:
    tls = edge.fields["tls"]
    before = await asyncio.to_thread(TlsClient, tls, setup.ca_file, SITE_HOST)
    try:
        first = await asyncio.to_thread(before.get, "/a", SITE_HOST)
        assert first.status == 200 and origin.fetches["/a"] == 1
        renewed = issue(setup.ca, setup.directory, "edge", SITE_HOST)  # same files, new cert
        assert renewed.der != setup.default.der
        await reload(edge, "reloaded")
        after = await tls_get_peer(tls, setup.ca_file, SITE_HOST)
        assert after == renewed.der
        # The connection opened before the reload still works, and the cache survived.
        again = await asyncio.to_thread(before.get, "/a", SITE_HOST)
        assert again.status == 200 and again.body == b"from the origin"
        assert before.peer_der() == setup.default.der
        assert "hit" in again.headers["Cache-Status"] and origin.fetches["/a"] == 1
    finally:
        before.close()
    expiry = await scrape(edge.fields["control"], "edge_tls_certificate_expiry_seconds")
    assert expiry > 0


async def tls_get_peer(address: str, ca: Path, sni: str) -> bytes:
    def once() -> bytes:
        client = TlsClient(address, ca, sni)
        try:
            return client.peer_der()
        finally:
            client.close()

    return await asyncio.to_thread(once)


async def test_reload_with_a_bad_file_keeps_the_old_state(setup: Setup, edge: Process) -> None:
    setup.api.cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    line = await reload(edge, "reload_failed")
    assert str(setup.api.cert) in line and line.count("\n") == 1
    assert await tls_get_peer(edge.fields["tls"], setup.ca_file, API_HOST) == setup.api.der
    answer = await tls_get(edge.fields["tls"], setup.ca_file, SITE_HOST, "/a", SITE_HOST)
    assert answer.status == 200
    failed = await scrape(edge.fields["control"], "edge_config_reloads_total", {"result": "failed"})
    assert failed == 1


@pytest.mark.parametrize("damage", ["garbage_cert", "wrong_key", "missing_key"])
async def test_bad_certificate_or_key_at_start_is_one_line_and_exit_2(
    setup: Setup, damage: str
) -> None:
    config = write_config(setup, "http://127.0.0.1:9")
    if damage == "garbage_cert":
        setup.api.cert.write_text("not a certificate\n")
        named = setup.api.cert
    elif damage == "wrong_key":
        setup.default.key.write_bytes(setup.api.key.read_bytes())  # another certificate's key
        named = setup.default.cert
    else:
        setup.api.key.unlink()
        named = setup.api.key
    proc = await asyncio.create_subprocess_exec(
        *edge_argv(config), cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    lines = err.decode().splitlines()
    assert len(lines) == 1 and str(named) in lines[0] and lines[0].startswith("edge: edge.toml: ")


@pytest.fixture
async def tls_origin(setup: Setup) -> AsyncIterator[TlsOrigin]:
    origin_ca = trustme.CA()  # the origin's own private CA, not the edge's
    (setup.directory / "origin-ca.pem").write_bytes(origin_ca.cert_pem.bytes())
    async with TlsOrigin(origin_ca) as origin:
        origin.script("/api", headers=CACHEABLE, body=b"over tls")
        yield origin


@pytest.mark.parametrize(
    ("extra", "status"),
    [('origin_ca = "origin-ca.pem"', 200), ("", 502), ("origin_verify = false", 200)],
    ids=["verified-with-origin-ca", "unknown-ca-502", "verify-off"],
)
async def test_https_origin_with_a_private_ca(
    setup: Setup, origin: ScriptedOrigin, tls_origin: TlsOrigin, extra: str, status: int
) -> None:
    edge_extra = extra if extra.startswith("origin_verify") else ""
    site_extra = extra if extra.startswith("origin_ca") else ""
    config = write_config(setup, origin.url, api_origin=tls_origin.url, extra=site_extra)
    if edge_extra:
        config.write_text(config.read_text().replace("[edge]\n", f"[edge]\n{edge_extra}\n"))
    child = await spawn(edge_argv(config))
    try:
        answer = await tls_get(child.fields["tls"], setup.ca_file, API_HOST, "/api", API_HOST)
        assert answer.status == status
        assert (answer.body == b"over tls") == (status == 200)
        warned = any("event=origin_verify_off" in line for line in child.log)
        assert warned == bool(edge_extra)
    finally:
        await stop(child)


async def test_reload_adds_origin_ca_for_the_next_request(
    setup: Setup, origin: ScriptedOrigin, tls_origin: TlsOrigin
) -> None:
    config = write_config(setup, origin.url, api_origin=tls_origin.url)
    child = await spawn(edge_argv(config))
    try:
        tls = child.fields["tls"]
        assert (await tls_get(tls, setup.ca_file, API_HOST, "/api", API_HOST)).status == 502
        write_config(
            setup, origin.url, api_origin=tls_origin.url, extra='origin_ca = "origin-ca.pem"'
        )
        await reload(child, "reloaded")
        assert (await tls_get(tls, setup.ca_file, API_HOST, "/api", API_HOST)).status == 200
    finally:
        await stop(child)


async def test_host_needing_another_certificate_than_sni_is_421_rfc9110_15_5_20(
    setup: Setup, origin: ScriptedOrigin, tls_origin: TlsOrigin
) -> None:
    origin.script("/a", headers=CACHEABLE)
    config = write_config(
        setup, origin.url, api_origin=tls_origin.url, extra='origin_ca = "origin-ca.pem"'
    )
    child = await spawn(edge_argv(config))
    try:
        tls = child.fields["tls"]
        # SNI www (default certificate), Host api (its own certificate): not authoritative here.
        crossed = await tls_get(tls, setup.ca_file, SITE_HOST, "/api", API_HOST)
        assert crossed.status == 421 and tls_origin.fetches["/api"] == 0
        crossed = await tls_get(tls, setup.ca_file, API_HOST, "/a", SITE_HOST)
        assert crossed.status == 421 and origin.fetches["/a"] == 0
        # Matching names are served, over the same kind of connection.
        assert (await tls_get(tls, setup.ca_file, API_HOST, "/api", API_HOST)).status == 200
        assert (await tls_get(tls, setup.ca_file, SITE_HOST, "/a", SITE_HOST)).status == 200
        # Cached now: a hit over TLS (the fast path's), and still 421 when crossed.
        hit = await tls_get(tls, setup.ca_file, SITE_HOST, "/a", SITE_HOST)
        assert hit.status == 200 and "hit" in hit.headers["Cache-Status"]
        crossed = await tls_get(tls, setup.ca_file, API_HOST, "/a", SITE_HOST)
        assert crossed.status == 421 and origin.fetches["/a"] == 1
        control = child.fields["control"]
        assert await scrape(control, "edge_fast_path_hits_total", {}) == 1
        misdirected = await scrape(
            control, "edge_misdirected_requests_total", {"reason": "certificate"}
        )
        assert misdirected == 3
    finally:
        await stop(child)


async def test_a_handshake_not_finished_in_time_is_closed_and_counted(
    setup: Setup, origin: ScriptedOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process, with the limit shortened: a client that connects and says nothing.
    monkeypatch.setattr("edge.tls.TLS_HANDSHAKE_TIMEOUT_S", 0.2)
    default = CertificateConfig((), str(setup.default.cert), str(setup.default.key))
    tls = TlsSettings(HostPort(LOOPBACK, 0), default)
    async with running_edge(origin.url, tls=tls) as server:
        assert server.tls_address is not None
        reader, writer = await asyncio.open_connection(
            server.tls_address.host, server.tls_address.port
        )
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""  # the edge closed it
        finally:
            writer.close()
        failures = {"reason": "timeout"}
        assert metric(server.metrics, "edge_tls_handshake_failures_total", failures) == 1
        # A client that does finish is served on the same port.
        answer = await tls_get(str(server.tls_address), setup.ca_file, SITE_HOST, "/a", SITE_HOST)
        assert answer.status == 404  # not scripted here: the origin's own answer


async def test_sessions_resume_with_tickets_also_after_a_reload(
    setup: Setup, edge: Process
) -> None:
    host, _, port = edge.fields["tls"].rpartition(":")
    ctx = ssl.create_default_context(cafile=str(setup.ca_file))  # a session is per context

    def connect(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=API_HOST, session=session) as tls,
        ):
            # TLS 1.3 tickets arrive after the handshake: read an answer first.
            tls.sendall(f"GET /a HTTP/1.1\r\nHost: {API_HOST}\r\n\r\n".encode())
            tls.recv(1024)
            return tls.session, tls.session_reused

    first, reused = await asyncio.to_thread(connect, None)
    assert first is not None and not reused
    assert (await asyncio.to_thread(connect, first))[1]
    await reload(edge, "reloaded")
    assert (await asyncio.to_thread(connect, first))[1]
