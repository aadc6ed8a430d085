"""Helpers of the HTTPS and sites tests: a private CA (trustme, in tmp_path), an https://
origin, a blocking TLS client that picks its SNI apart from the Host, and the edge's
metrics read from its control port."""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import trustme
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.origin_app import LOOPBACK, ScriptedOrigin


@dataclass(frozen=True)
class Issued:
    """A certificate written to files: ``cert`` and ``key`` (PEM), and its DER form."""

    cert: Path
    key: Path
    der: bytes


def issue(ca: trustme.CA, directory: Path, stem: str, *hosts: str) -> Issued:
    leaf = ca.issue_cert(*hosts)
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    return Issued(cert, key, ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()))


class TlsOrigin(ScriptedOrigin):
    """The scripted origin over HTTPS, with a certificate for 127.0.0.1 from ``ca``."""

    def __init__(self, ca: trustme.CA) -> None:
        super().__init__()
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(LOOPBACK).configure_cert(self._ctx)

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0, ssl_context=self._ctx).start()
        self.url = f"https://{LOOPBACK}:{self._runner.addresses[0][1]}"
        return self.url


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class TlsClient:
    """One HTTP/1.1 connection over TLS to ``address`` with SNI ``sni`` (blocking: call
    it through asyncio.to_thread while the test's origin runs on the loop)."""

    def __init__(self, address: str, ca: Path, sni: str | None) -> None:
        host, _, port = address.rpartition(":")
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = sni is not None
        ctx.set_alpn_protocols(["http/1.1"])
        raw = socket.create_connection((host, int(port)), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.conn.sock = self.sock

    def peer_der(self) -> bytes:
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return der

    def get(self, path: str, host: str) -> Answer:
        self.conn.request("GET", path, headers={"Host": host})
        resp = self.conn.getresponse()
        return Answer(resp.status, dict(resp.getheaders()), resp.read())

    def close(self) -> None:
        self.conn.close()


async def tls_get(address: str, ca: Path, sni: str | None, path: str, host: str) -> Answer:
    def once() -> Answer:
        client = TlsClient(address, ca, sni)
        try:
            return client.get(path, host)
        finally:
            client.close()

    return await asyncio.to_thread(once)


async def scrape(control: str, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of the edge's /metrics (0 if absent)."""
    async with aiohttp.ClientSession() as client, client.get(f"http://{control}/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels or {}).items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


async def curl(*args: str) -> tuple[int, str, str]:
    """Run curl; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
