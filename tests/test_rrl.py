"""The response rate limiter (BIND semantics): plain function calls with a given clock."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from georouter.rrl import Limiter, RrlConfig

A = socket.inet_aton("192.0.2.1")
SAME_24 = socket.inet_aton("192.0.2.200")
OTHER_24 = socket.inet_aton("192.0.3.1")
NAME = b"\x03www\x07example\x00\x00\x01\x00\x01"


def test_a_burst_is_answered_up_to_the_rate_then_every_slip_th_is_truncated() -> None:
    limiter = Limiter(RrlConfig(responses_per_second=5, slip=2))
    actions = [limiter.decide(A, NAME, 100.0) for _ in range(11)]
    assert actions == ["answer"] * 5 + ["drop", "slip"] * 3


def test_the_prefix_shares_an_account_and_other_classes_do_not() -> None:
    limiter = Limiter(RrlConfig(responses_per_second=1, slip=0))
    assert limiter.decide(A, NAME, 0.0) == "answer"
    assert limiter.decide(SAME_24, NAME, 0.0) == "drop"  # same /24
    assert limiter.decide(OTHER_24, NAME, 0.0) == "answer"
    assert limiter.decide(A, b"\x00nxdomain", 0.0) == "answer"


def test_a_flood_must_pause_for_the_window_to_be_answered_again() -> None:
    limiter = Limiter(RrlConfig(responses_per_second=2, window_s=10, slip=0))
    for _ in range(1000):
        limiter.decide(A, NAME, 0.0)  # debt capped at window x rate = 20
    assert limiter.decide(A, NAME, 5.0) == "drop"  # 10 credits earned: still in debt
    assert limiter.decide(A, NAME, 11.0) == "answer"


def test_each_worker_holds_its_share() -> None:
    limiter = Limiter(RrlConfig(responses_per_second=10, slip=0), share=0.5)
    assert [limiter.decide(A, NAME, 0.0) for _ in range(6)].count("answer") == 5


def test_exempt_networks() -> None:
    net = ipaddress.ip_network("192.0.2.0/25")
    limiter = Limiter(RrlConfig(exempt=(net, ipaddress.ip_network("2001:db8::/32"))))
    assert limiter.exempt(A)
    assert not limiter.exempt(SAME_24)
    assert limiter.exempt(socket.inet_pton(socket.AF_INET6, "2001:db8::1"))
    assert not limiter.exempt(socket.inet_pton(socket.AF_INET6, "2001:db9::1"))


@given(st.floats(0.5, 100), st.integers(1, 400), st.integers(0, 10))
def test_answers_never_exceed_the_rate_over_time(rate: float, queries: int, slip: int) -> None:
    limiter = Limiter(RrlConfig(responses_per_second=rate, slip=slip))
    answered = sum(limiter.decide(A, NAME, i * 0.01) == "answer" for i in range(queries))
    assert answered <= rate + rate * queries * 0.01 + 1
