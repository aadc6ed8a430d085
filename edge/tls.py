"""HTTPS at the edge: certificates chosen by SNI, swapped on reload, handshakes counted.

Theory of operation. The TLS port listens with one server context (`TlsTerminator.context`)
that is never replaced, so its session-ticket keys live as long as the process. Its SNI
callback runs on every ClientHello (server_name None without SNI) and moves the connection
to the context of the certificate for that name in the *current* `Certificates`, which a
reload swaps whole: connections that finished their handshake keep the context they got;
the next ClientHello gets the new one. Every context allows TLS 1.2 and 1.3 only and offers
ALPN http/1.1 (RFC 7301), set on each because OpenSSL reads some of them from either.

The handshake runs in `loop.start_tls` under our own small protocol (`_TlsAcceptor`), not
inside `create_server(ssl=...)`, because asyncio silences a server-side handshake failure:
here it is counted by reason (edge/certs.py) and only a finished handshake reaches aiohttp.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from edge.certs import CertificateFormatError, handshake_failure, not_after
from edge.config import DEFAULT_SITE, CertificateConfig, TlsSettings
from edge.errors import ConfigError
from edge.metrics import EdgeMetrics

# A client gets this long from connecting to a finished handshake (nginx: client_header
# timeout 60 s covers it; ours is shorter: a handshake is a few round trips).
TLS_HANDSHAKE_TIMEOUT_S = 10.0
ALPN = ("http/1.1",)


@dataclass(frozen=True, slots=True)
class Certificates:
    """The loaded certificates of one config: swapped whole on reload."""

    default: ssl.SSLContext
    by_host: Mapping[str, ssl.SSLContext]
    certificate_of: Mapping[str, str]  # host -> certificate name (its first host)
    expiry: Mapping[str, float]  # certificate name -> notAfter, seconds since the epoch

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        return self.by_host.get((server_name or "").lower().rstrip("."), self.default)


def server_context(cert: CertificateConfig, source: str) -> ssl.SSLContext:
    """A server context for one certificate; a bad file is a ConfigError naming it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(list(ALPN))
    for key, name in (("cert", cert.cert), ("key", cert.key)):
        if not Path(name).is_file():
            raise ConfigError(source, f"{cert.where}.{key}", f"{name}: no such file")
    try:
        ctx.load_cert_chain(cert.cert, cert.key)
    except (ssl.SSLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ConfigError(
            source, cert.where, f"cannot use certificate {cert.cert} with key {cert.key}: {why}"
        ) from None
    return ctx


def load_certificates(settings: TlsSettings, source: str) -> Certificates:
    """Every certificate of ``[tls]``, loaded and checked (ConfigError on the first bad one)."""
    default = server_context(settings.default, source)
    by_host: dict[str, ssl.SSLContext] = {}
    certificate_of: dict[str, str] = {}
    expiry = {DEFAULT_SITE: _expiry(settings.default, source)}
    for cert in settings.certificates:
        ctx = server_context(cert, source)
        name = cert.hosts[0]
        expiry[name] = _expiry(cert, source)
        for host in cert.hosts:
            by_host[host] = ctx
            certificate_of[host] = name
    return Certificates(default, by_host, certificate_of, expiry)


def _expiry(cert: CertificateConfig, source: str) -> float:
    try:
        return not_after(Path(cert.cert).read_bytes())
    except (OSError, CertificateFormatError) as exc:
        raise ConfigError(source, f"{cert.where}.cert", f"{cert.cert}: {exc}") from None


def origin_context(ca: str | None, verify: bool, where: str, source: str) -> ssl.SSLContext:
    """The client context for https:// origins: the system's CAs plus ``ca``, or none
    checked at all when ``verify`` is off (the caller logs that)."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(list(ALPN))
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc.strerror or str(exc)
            raise ConfigError(source, where, f"cannot read CA file {ca}: {why}") from None
    return ctx


class TlsTerminator:
    """The TLS port's state: one listening context, the current certificates, the metrics."""

    def __init__(self, certificates: Certificates, metrics: EdgeMetrics) -> None:
        self.certificates = certificates
        self.metrics = metrics
        self._sni: weakref.WeakKeyDictionary[ssl.SSLObject, str] = weakref.WeakKeyDictionary()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols(list(ALPN))
        ctx.sni_callback = self._on_client_hello
        self.context = ctx
        self.swap(certificates)

    def swap(self, certificates: Certificates) -> None:
        """Serve ``certificates`` from the next handshake on; publish their expiry."""
        self.certificates = certificates
        gauge = self.metrics.tls_certificate_expiry
        gauge.clear()
        for name, when in certificates.expiry.items():
            gauge.labels(name).set(when)

    def sni(self, ssl_object: object) -> str | None:
        """The server name a connection's client sent (None: none, or not TLS)."""
        if not isinstance(ssl_object, ssl.SSLObject):
            return None
        return self._sni.get(ssl_object)

    def _on_client_hello(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        if server_name is not None:
            self._sni[ssl_object] = server_name
        ssl_object.context = self.certificates.context_for(server_name)

    def count(self, exc: BaseException | None) -> None:
        if exc is None:
            self.metrics.tls_handshakes.inc()
        else:
            self.metrics.tls_handshake_failures.labels(handshake_failure(exc)).inc()


class _TlsAcceptor(asyncio.Protocol):
    """Runs one connection's handshake; hands the decrypted stream to aiohttp's handler."""

    def __init__(
        self,
        handler: Callable[[], asyncio.BaseProtocol],
        terminator: TlsTerminator,
        pending: set[asyncio.Task[None]],
    ) -> None:
        self._handler = handler
        self._terminator = terminator
        self._pending = pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the bytes are the handshake's: start_tls reads them
        task = asyncio.create_task(self._handshake(transport))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _handshake(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        protocol = self._handler()
        try:
            # Our own deadline: asyncio's (kept as a backstop) ends in a ConnectionAbortedError
            # that cannot be told from a client hanging up.
            async with asyncio.timeout(TLS_HANDSHAKE_TIMEOUT_S):
                tls = await loop.start_tls(
                    transport,
                    protocol,
                    self._terminator.context,
                    server_side=True,
                    ssl_handshake_timeout=2 * TLS_HANDSHAKE_TIMEOUT_S,
                )
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            self._terminator.count(exc)
            transport.close()
            return
        if tls is None:  # the connection went during the handshake
            self._terminator.count(ConnectionResetError())
            return
        self._terminator.count(None)
        protocol.connection_made(tls)


class TlsSite(web.BaseSite):
    """An aiohttp site whose connections go through `_TlsAcceptor` first."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, terminator: TlsTerminator
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._terminator = terminator
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        handler = self._runner.server
        assert handler is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _TlsAcceptor(handler, self._terminator, self._pending),
            self._host,
            self._port,
        )

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await super().stop()
