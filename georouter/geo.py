"""Client address → location → region, with a cache per GeoIP database network."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the DNS path should send a client, and how far that answer generalises."""

    region: str
    prefix_len: int  # every address sharing this prefix is placed alike (the ECS scope, RFC 7871 §7.2.1)
