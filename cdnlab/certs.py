"""The demo's HTTPS material: a local CA and one edge certificate, made fresh at every start.

`make_demo_tls(directory, names, addresses)` writes `ca.pem` (what curl and browsers trust),
`edge.pem` and `edge.key` (every edge presents them: the zone's service names plus each
edge's address) and `edge.toml` (one [[sites]] per service name, all to the demo origin,
and the [tls] certificate) into the demo's temporary directory. Nothing is ever committed.
`spki_hash()` is the base64 SHA-256 of a certificate's public key, what Chromium's
`--ignore-certificate-errors-spki-list` takes.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cdnlab.supervisor import DemoError

DEMO_TLS_EXTRA = "pip install 'georouter[demo]'"


@dataclass(frozen=True, slots=True)
class DemoTls:
    ca: Path
    cert: Path
    key: Path
    edge_config: Path
    spki: str  # of the edge certificate, for Chromium


def spki_hash(cert_pem: bytes) -> str:
    # Imported here: cryptography comes with trustme, in the demo extra.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def sites_toml(names: Sequence[str], origin_url: str) -> str:
    """One [[sites]] per service name, all served by the demo origin (TLS comes by flags)."""
    lines = []
    for name in names:
        lines += ["[[sites]]", f'hosts = ["{name}"]', f'origin = "{origin_url}"', ""]
    return "\n".join(lines)


def make_demo_tls(
    directory: Path, names: Sequence[str], addresses: Sequence[str], origin_url: str
) -> DemoTls:
    """Write a fresh CA, the edge certificate and the edge config into `directory`."""
    try:
        import trustme
    except ImportError:
        raise DemoError(
            f"HTTPS in the demo needs trustme, the demo extra: {DEMO_TLS_EXTRA}"
        ) from None
    ca = trustme.CA(organization_name="georouter demo CA")
    leaf = ca.issue_cert(*names, *addresses)
    paths = {n: directory / n for n in ("ca.pem", "edge.pem", "edge.key", "edge.toml")}
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["edge.pem"]))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(paths["edge.pem"]), append=True)
    leaf.private_key_pem.write_to_path(str(paths["edge.key"]))
    paths["edge.key"].chmod(0o600)
    tls = DemoTls(
        ca=paths["ca.pem"],
        cert=paths["edge.pem"],
        key=paths["edge.key"],
        edge_config=paths["edge.toml"],
        spki=spki_hash(leaf.cert_chain_pems[0].bytes()),
    )
    paths["edge.toml"].write_text(sites_toml(names, origin_url))
    return tls
