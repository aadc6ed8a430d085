"""The guard around the responder, by plain calls: cookies cut and added, slips, and
hostile bytes (Hypothesis) never raising."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
from hypothesis import given
from hypothesis import strategies as st

from georouter.armour import Guard
from georouter.cookies import CookieSecrets
from georouter.metrics import RouterMetrics
from georouter.responder import Responder
from georouter.rrl import Limiter, RrlConfig
from tests.test_responder import FakePicker, FakePlacer, router_config

CONFIG = router_config()
METRICS = RouterMetrics()
RESPONDER = Responder(CONFIG, FakePlacer(), FakePicker(CONFIG), METRICS.tallies)
SECRETS = CookieSecrets(bytes(16))


def guard(rate: float | None = None, now: float = 1_700_000_000.0) -> Guard:
    limiter = None if rate is None else Limiter(RrlConfig(responses_per_second=rate, slip=1))
    return Guard(SECRETS, limiter, METRICS.tallies, clock=lambda: now)


def cookie_query(cookie: bytes, name: str = "example.com", ecs: bool = False) -> bytes:
    options: list[dns.edns.Option] = [dns.edns.GenericOption(dns.edns.COOKIE, cookie)]
    if ecs:
        options.insert(0, dns.edns.ECSOption("192.0.2.0", 24))
    return dns.message.make_query(name, "SOA", use_edns=0, options=options).to_wire()


def test_the_cookie_is_added_after_the_other_options_rfc7873_5_2_3() -> None:
    reply = dns.message.from_wire(guard().respond(cookie_query(bytes(8), ecs=True), "192.0.2.9",
                                                  "udp", RESPONDER) or b"")  # fmt: skip
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    codes = [option.otype for option in reply.options]
    assert codes == [dns.edns.ECS, dns.edns.COOKIE]


def test_a_limited_query_with_a_client_cookie_slips_as_badcookie() -> None:
    g = guard(rate=1)
    query = cookie_query(bytes(8))
    assert g.respond(query, "192.0.2.9", "udp", RESPONDER) is not None
    slipped = dns.message.from_wire(g.respond(query, "192.0.2.9", "udp", RESPONDER) or b"")
    assert slipped.rcode() == dns.rcode.BADCOOKIE
    assert any(option.otype == dns.edns.COOKIE for option in slipped.options)
    plain = dns.message.make_query("example.com", "SOA").to_wire()
    g.respond(plain, "192.0.2.9", "udp", RESPONDER)
    truncated = dns.message.from_wire(g.respond(plain, "192.0.2.9", "udp", RESPONDER) or b"")
    assert truncated.flags & dns.flags.TC and not truncated.answer
    assert g.respond(plain, "192.0.2.9", "tcp", RESPONDER) is not None  # never limited


@given(st.binary(max_size=300), st.sampled_from(["udp", "tcp"]))
def test_hostile_bytes_never_raise(data: bytes, transport: str) -> None:
    guard(rate=1).respond(data, "192.0.2.9", transport, RESPONDER)  # type: ignore[arg-type]


@given(st.binary(max_size=48), st.booleans())
def test_any_cookie_option_gets_a_readable_answer(cookie: bytes, ecs: bool) -> None:
    response = guard().respond(cookie_query(cookie, ecs=ecs), "192.0.2.9", "udp", RESPONDER)
    assert response is not None
    reply = dns.message.from_wire(response)
    if len(cookie) == 8 or 16 <= len(cookie) <= 40:
        cookies = [o for o in reply.options if o.otype == dns.edns.COOKIE]
        assert len(cookies) == 1 and bytes(cookies[0].client) == cookie[:8]
    else:
        assert reply.rcode() == dns.rcode.FORMERR


class Echo:
    """Answers with the query it was given: what the guard passed on is the answer."""

    def respond(self, data: bytes, client_ip: str, transport: str) -> bytes | None:
        return data


option_lists = st.lists(
    st.tuples(st.sampled_from([8, 10, 10, 12, 65001]), st.binary(max_size=24)), max_size=3
)


@given(
    option_lists,
    st.sampled_from(["example.com", "cdn.example.com", "x.example.com"]),
    st.integers(0, 65535),
    st.binary(max_size=4),
)
def test_the_quick_path_answers_as_the_full_one(
    options: list[tuple[int, bytes]], name: str, ident: int, tail: bytes
) -> None:
    # Without RRL, a query with no COOKIE option code after its header skips the OPT
    # parse: every query must get what the full path (cut, check, append) gives it.
    edns = [dns.edns.GenericOption(code, data) for code, data in options]
    query = dns.message.make_query(name, "A", use_edns=0 if options else -1, options=edns)
    data = ident.to_bytes(2) + query.to_wire()[2:] + tail
    quick, full = guard(), guard()
    expected = full._guarded(data, "192.0.2.9", "udp", Echo())
    assert quick.respond(data, "192.0.2.9", "udp", Echo()) == expected
    if any(code == 10 for code, _ in options):
        assert expected != data  # the cookie was checked, so the full path did run
