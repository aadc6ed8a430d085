"""Facts about certificates and TLS handshakes the edge reports, read without a TLS library.

Pure: `not_after` reads a certificate's expiry from its PEM text (the X.509 structure of
RFC 5280 §4.1, walked just far enough in DER), and `handshake_failure` names why a
handshake failed with one of a few bounded reasons (a metric label).
"""

from __future__ import annotations

import base64
import calendar
import re
import ssl
import time

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL
)
_SEQUENCE = 0x30
_CONTEXT_0 = 0xA0  # [0] EXPLICIT Version
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18

# ssl.SSLError.reason (OpenSSL's reason code) -> the failure reason we count.
_REASONS = {
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "WRONG_SSL_VERSION": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_CIPHERS_AVAILABLE": "no_shared_cipher",
    "TLSV1_ALERT_UNKNOWN_CA": "certificate_rejected",
    "SSLV3_ALERT_BAD_CERTIFICATE": "certificate_rejected",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate_rejected",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate_rejected",
    "TLSV1_ALERT_DECRYPT_ERROR": "certificate_rejected",
    "HTTP_REQUEST": "not_tls",
    "HTTPS_PROXY_REQUEST": "not_tls",
    "WRONG_VERSION_NUMBER": "not_tls",
    "UNKNOWN_PROTOCOL": "not_tls",
    "RECORD_LAYER_FAILURE": "not_tls",
    "UNEXPECTED_EOF_WHILE_READING": "closed",
}
HANDSHAKE_FAILURES = (
    "protocol_version",
    "no_shared_cipher",
    "certificate_rejected",
    "not_tls",
    "timeout",
    "closed",
    "other",
)


class CertificateFormatError(ValueError):
    """The text holds no certificate whose validity period can be read."""


def not_after(pem: bytes) -> float:
    """The first certificate's notAfter (RFC 5280 §4.1.2.5) as seconds since the epoch."""
    match = _PEM_CERT.search(pem)
    if match is None:
        raise CertificateFormatError("no PEM CERTIFICATE block")
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        return _validity_end(der)
    except (ValueError, IndexError) as exc:
        raise CertificateFormatError(f"not an X.509 certificate ({exc})") from None


def _validity_end(der: bytes) -> float:
    cert, _ = _element(der, 0, _SEQUENCE)
    at, _ = _element(der, cert, _SEQUENCE)  # tbsCertificate
    if der[at] == _CONTEXT_0:
        at = _skip(der, at)  # version
    for _field in ("serialNumber", "signature", "issuer"):
        at = _skip(der, at)
    validity, _ = _element(der, at, _SEQUENCE)
    return _time(der, _skip(der, validity))  # past notBefore


def _header(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``at``."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("bad length")
        length = int.from_bytes(der[at : at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("truncated")
    return tag, at, at + length


def _element(der: bytes, at: int, tag: int) -> tuple[int, int]:
    found, start, end = _header(der, at)
    if found != tag:
        raise ValueError(f"expected tag {tag:#x}, found {found:#x}")
    return start, end


def _skip(der: bytes, at: int) -> int:
    return _header(der, at)[2]


def _time(der: bytes, at: int) -> float:
    tag, start, end = _header(der, at)
    text = der[start:end].decode("ascii")
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; years 50..99 are 19xx (RFC 5280 §4.1.2.5.1)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError(f"expected a time, found tag {tag:#x}")
    if len(text) != 15 or not text.endswith("Z"):
        raise ValueError(f"unexpected time {text!r}")
    return float(calendar.timegm(time.strptime(text, "%Y%m%d%H%M%SZ")))


def handshake_failure(exc: BaseException) -> str:
    """The bounded reason (HANDSHAKE_FAILURES) a server-side handshake failed with."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return _REASONS.get(exc.reason or "", "other")
    if isinstance(exc, ConnectionError | EOFError):
        return "closed"
    return "other"
