"""Config primitives both programs read the same way: addresses, URLs, names, tokens, bounds.

Each check is a function of one string that returns the value or raises ValueError; the
TOML reader (cdn.tomltable) turns that into one ConfigError naming the file and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import urlsplit

from cdn.tomltable import Table

# Bounds of what a config may ask for: beyond them a value is a typo, not a setting.
MAX_TIMER_S = 3600.0
MAX_CAPACITY_RPS = 1e9
MAX_PREVIOUS_TOKENS = 8  # each is compared on every authenticated request
MAX_NAME_OCTETS = 255  # RFC 1035 §2.3.4, counted in wire form

# Host-name letters (RFC 1123 §2.1) plus "_" for service labels such as _dmarc (RFC 8552).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_HOST_PORT = re.compile(
    r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<p6>[0-9]{1,5})|(?P<host>[^:\[\]]+):(?P<port>[0-9]{1,5})"
)
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # b64token, RFC 6750 §2.1


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str) -> HostPort:
    """Parse HOST:PORT, IPv6 as [::1]:53 (port 0 lets the OS choose); ValueError if malformed."""
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        raise ValueError(f"expected HOST:PORT (IPv6 as [::1]:53), got {text!r}")
    host, port = match["v6"] or match["host"], int(match["p6"] or match["port"])
    if port > 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    if match["v6"]:
        IPv6Address(host)  # raises ValueError naming the address
    elif re.fullmatch(r"[0-9.]+", host):
        IPv4Address(host)
    else:
        absolute_name(host)
    return HostPort(host, port)


def absolute_name(text: str) -> str:
    """A fully qualified name (trailing dot optional) in canonical form; ValueError if invalid."""
    if not text.isascii():
        raise ValueError(f"expected an ASCII domain name (IDNA 'xn--' form), got {text!r}")
    name = text.lower().removesuffix(".")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"expected a domain name, got {text!r} (bad label {label!r})")
    # Wire form: a length octet per label, the label octets, and the root's zero octet.
    if len(name) + 2 > MAX_NAME_OCTETS:
        raise ValueError(f"domain name longer than {MAX_NAME_OCTETS} octets: {text!r}")
    return name + "."


def http_url(text: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """`text` if it is a URL of one of `schemes` with a host, a valid port and no query or
    fragment (a path is appended to it); else ValueError."""
    problem = f"expected an {' or '.join(s + '://' for s in schemes)} URL with a host, got {text!r}"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(problem) from None
    if parts.scheme not in schemes or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(problem)
    return text


def bearer_token(text: str) -> str:
    """`text` if it is a non-empty b64token (RFC 6750 §2.1); else ValueError."""
    if not _BEARER_TOKEN.fullmatch(text):
        raise ValueError("expected a non-empty bearer token (letters, digits, -._~+/, =)")
    return text


def previous_tokens(t: Table, key: str = "previous_tokens") -> tuple[str, ...]:
    """`previous_tokens` of table `t`: tokens still accepted while clients move to `token`."""
    items = t.strings(key)
    if len(items) > MAX_PREVIOUS_TOKENS:
        raise t.error(key, f"expected at most {MAX_PREVIOUS_TOKENS} tokens")
    return tuple(t.item(key, text, bearer_token) for key, text in items)
