"""A short bounded fuzz run of each target (`make fuzz` runs them for longer), and the
fuzz machinery itself: the mutator, the watchdog, the properties' oracle."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from pathlib import Path

import dns.message
import pytest

from fuzz import FuzzFailure, Mutator, fuzz, save_finding
from fuzz.dns_target import DnsTarget, allowed_size, check_reply
from fuzz.http_target import HttpTarget
from fuzz.runner import Finding, InputTimeout

SMOKE_INPUTS = 2000  # per target: a few seconds each
SMOKE_SEED = 15


@pytest.fixture(scope="module")
def dns_target() -> Iterator[DnsTarget]:
    target = DnsTarget()
    yield target
    target.close()


@pytest.fixture(scope="module")
def http_target() -> Iterator[HttpTarget]:
    target = HttpTarget()
    yield target
    target.close()


def test_dns_target_survives_a_bounded_run(dns_target: DnsTarget) -> None:
    result = fuzz(dns_target, max_inputs=SMOKE_INPUTS, seed=SMOKE_SEED)
    assert result.finding is None, result.finding and result.finding.trace
    assert result.inputs == SMOKE_INPUTS


def test_http_target_survives_a_bounded_run(http_target: HttpTarget) -> None:
    result = fuzz(http_target, max_inputs=SMOKE_INPUTS, seed=SMOKE_SEED)
    assert result.finding is None, result.finding and result.finding.trace
    assert result.inputs == SMOKE_INPUTS


def test_every_seed_is_answered_or_parsed(dns_target: DnsTarget, http_target: HttpTarget) -> None:
    """The seeds are valid: each DNS seed gets an answer, each HTTP seed parses to heads."""
    for seed in dns_target.seeds():
        assert dns_target.check(seed)[0] is False  # not dropped
    for seed in http_target.seeds():
        outcomes = http_target.check(seed)
        assert outcomes and all(isinstance(o, tuple) for o in outcomes), (seed, outcomes)


def test_seeds_reach_every_cache_outcome(http_target: HttpTarget) -> None:
    outcomes = {o[0] for seed in http_target.seeds() for o in http_target.check(seed)}
    assert {"fresh", "stale", "miss", "pass", "unsafe"} <= outcomes


def test_dns_oracle_rejects_a_wrong_id_an_oversized_answer_and_garbage() -> None:
    query = dns.message.make_query("cdn.example.com.", "A")
    query.id = 0x1234
    wire = query.to_wire()
    good = dns.message.make_response(query).to_wire()
    assert check_reply(wire, good, "udp", None)[0] == 0
    with pytest.raises(FuzzFailure, match="ID"):
        check_reply(wire, b"\x00\x00" + good[2:], "udp", None)
    with pytest.raises(FuzzFailure, match="QR"):
        check_reply(wire, wire, "udp", None)
    with pytest.raises(FuzzFailure, match="over udp"):
        check_reply(wire, good + b"\0" * 600, "udp", None)
    with pytest.raises(FuzzFailure, match="dnspython"):
        check_reply(wire, good + b"\xc0", "udp", None)


@pytest.mark.parametrize(
    ("transport", "payload", "size"),
    [("udp", None, 512), ("udp", 100, 512), ("udp", 1000, 1000), ("udp", 4096, 1232),
     ("tcp", None, 65535), ("tcp", 512, 65535)],
)  # fmt: skip
def test_allowed_size_rfc6891_6_2_5(transport: str, payload: int | None, size: int) -> None:
    assert allowed_size(transport, payload) == size  # type: ignore[arg-type]


class _Slow:
    name = "slow"
    max_len = 16
    tokens = (b"x",)

    def seeds(self) -> list[bytes]:
        return [b"ok", b"hang"]

    def check(self, data: bytes) -> Hashable:
        while data == b"hang":
            pass
        return data


def test_a_hanging_input_is_found_not_waited_on() -> None:
    result = fuzz(_Slow(), max_inputs=10, budget_s=0.2)
    assert result.finding is not None and result.finding.data == b"hang"
    assert "time budget" in result.finding.error and InputTimeout.__name__ in result.finding.trace


def test_a_finding_is_saved_with_its_hex_and_trace(tmp_path: Path) -> None:
    finding = Finding("dns", b"\x00\xff", "FuzzFailure: x", "Traceback ...")
    path = save_finding(finding, tmp_path / "crashes")
    assert path.read_bytes() == b"\x00\xff"
    assert path.name.startswith("dns-") and "00ff" in path.with_suffix(".txt").read_text()


def test_the_mutator_is_repeatable_and_bounded() -> None:
    def batch() -> list[bytes]:
        mutator = Mutator([b"\x12\x34" + b"\0" * 30], [b"\xc0\x0c"], seed=7, max_len=40)
        return [mutator.generate() for _ in range(500)]

    first = batch()
    assert first == batch()
    assert len(set(first)) > 400 and max(map(len, first)) <= 40
