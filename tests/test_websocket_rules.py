"""The pure WebSocket rules (edge/websocket.py): upgrade detection, handshake checks,
admission, close-code mapping and labels, and the keep-alive step; plus the [websocket]
config table and the tunnels field of the load report."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from cdn.errors import ReportError
from cdn.report import LoadReport
from edge.config import MiB, WebSocketSettings, load_config
from edge.errors import ConfigError
from edge.load import LoadTracker
from edge.websocket import (
    Keepalive,
    close_label,
    handshake_problem,
    keepalive,
    offered_protocols,
    refusal,
    wants_websocket,
    wire_code,
    wire_reason,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's sample nonce
SENDABLE = {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}


def headers(**fields: str) -> CIMultiDict[str]:
    return CIMultiDict((name.replace("_", "-"), value) for name, value in fields.items())


@pytest.mark.parametrize(
    ("method", "fields", "expected"),
    [
        ("GET", {"Upgrade": "websocket", "Connection": "Upgrade"}, True),
        ("GET", {"Upgrade": "WebSocket", "Connection": "keep-alive, Upgrade"}, True),
        ("GET", {"Upgrade": "h2c, websocket", "Connection": "upgrade"}, True),
        ("GET", {"Upgrade": "websocket"}, False),  # RFC 9110 §7.8: needs the option
        ("GET", {"Upgrade": "h2c", "Connection": "Upgrade"}, False),
        ("POST", {"Upgrade": "websocket", "Connection": "Upgrade"}, False),  # RFC 6455 §4.1
        ("GET", {}, False),
    ],
)
def test_an_upgrade_needs_get_upgrade_websocket_and_the_connection_option_rfc9110_7_8(
    method: str, fields: dict[str, str], expected: bool
) -> None:
    assert wants_websocket(method, CIMultiDict(fields)) is expected


@pytest.mark.parametrize(
    ("version", "fields", "status"),
    [
        ((1, 1), {"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": KEY}, None),
        ((1, 0), {"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": KEY}, 400),
        ((1, 1), {"Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": KEY}, 426),
        ((1, 1), {"Sec-WebSocket-Key": KEY}, 426),
        ((1, 1), {"Sec-WebSocket-Version": "13"}, 400),
        ((1, 1), {"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "c2hvcnQ="}, 400),
        ((1, 1), {"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "not base64!"}, 400),
    ],
)
def test_client_handshake_checks_rfc6455_4_2_1(
    version: tuple[int, int], fields: dict[str, str], status: int | None
) -> None:
    problem = handshake_problem(version, CIMultiDict(fields))
    assert (problem.status if problem else None) == status


def test_subprotocol_offers_keep_the_clients_order_rfc6455_4_1() -> None:
    offers = CIMultiDict([("Sec-WebSocket-Protocol", "chat.v2, chat.v1"),
                          ("Sec-WebSocket-Protocol", "mqtt")])  # fmt: skip
    assert offered_protocols(offers) == ("chat.v2", "chat.v1", "mqtt")


@pytest.mark.parametrize(
    ("enabled", "draining", "open_tunnels", "max_tunnels", "why"),
    [
        (True, False, 0, 2, None),
        (True, False, 1, 2, None),
        (True, False, 2, 2, "limit"),
        (True, False, 0, 0, "limit"),
        (True, True, 0, 2, "draining"),
        (False, False, 0, 2, "disabled"),
    ],
)
def test_admission(
    enabled: bool, draining: bool, open_tunnels: int, max_tunnels: int, why: str | None
) -> None:
    got = refusal(
        enabled=enabled, draining=draining, open_tunnels=open_tunnels, max_tunnels=max_tunnels
    )
    assert got == why


@pytest.mark.parametrize(
    ("heard", "sent"),
    [(1000, 1000), (1001, 1001), (1009, 1009), (4321, 4321), (3000, 3000),
     (0, 1000), (1005, 1000),  # no status given: a normal close
     (1006, 1011), (1015, 1011),  # never on the wire: an unexpected condition
     (1004, 1011), (999, 1011), (5000, 1011), (2999, 1011)],
)  # fmt: skip
def test_codes_that_may_not_be_sent_are_mapped_rfc6455_7_4_1(heard: int, sent: int) -> None:
    assert wire_code(heard) == sent


@given(st.integers(min_value=0, max_value=65535))
def test_every_mapped_code_may_be_sent_and_every_label_is_bounded(code: int) -> None:
    assert wire_code(code) in SENDABLE
    label = close_label(code)
    assert label == "other" or 1000 <= int(label) <= 1015


@given(st.text(max_size=200))
def test_a_close_reason_fits_a_control_frame_rfc6455_5_5(reason: str) -> None:
    data = wire_reason(reason)
    assert len(data) <= 123 and reason.startswith(data.decode())


def test_keepalive_pings_a_quiet_leg_and_declares_a_silent_one_idle() -> None:
    def step(now: float, pinged: float = 0.0) -> Keepalive:
        return keepalive(
            now, heard=100.0, pinged=pinged, idle_timeout_s=100.0, ping_interval_s=30.0
        )

    quiet = step(110.0)
    assert (quiet.idle, quiet.ping, quiet.next_check) == (False, False, 130.0)
    due = step(130.0)
    assert (due.idle, due.ping, due.next_check) == (False, True, 160.0)
    after = step(140.0, pinged=130.0)
    assert (after.ping, after.next_check) == (False, 160.0)
    last = step(190.0, pinged=190.0)
    assert last.next_check == 200.0  # the idle deadline comes before the next ping
    assert step(200.0, pinged=190.0).idle


def test_keepalive_without_pings_is_a_plain_idle_timeout() -> None:
    check = keepalive(5.0, heard=0.0, pinged=0.0, idle_timeout_s=100.0, ping_interval_s=0.0)
    assert (check.idle, check.ping, check.next_check) == (False, False, 100.0)


@given(
    st.floats(0, 1e6),
    st.floats(0, 1e6),
    st.floats(0.01, 1e4),
    st.floats(0, 1e4),
    st.floats(0, 1e6),
)
def test_keepalive_looks_again_no_later_than_the_idle_deadline(
    heard: float, pinged: float, idle: float, ping: float, later: float
) -> None:
    now = heard + later
    check = keepalive(now, heard=heard, pinged=pinged, idle_timeout_s=idle, ping_interval_s=ping)
    assert check.idle == (now >= heard + idle)
    if not check.idle:
        assert now <= check.next_check <= heard + idle


def test_open_tunnels_weigh_in_utilization_as_the_tighter_resource() -> None:
    tracker = LoadTracker(capacity_rps=100.0, started=0.0, max_tunnels=4)
    assert tracker.snapshot(10.0, tunnels=2).utilization == 0.5
    assert tracker.snapshot(10.0, tunnels=4).utilization == 1.0
    for _ in range(400):  # 80 rps over the 5 s window: 0.8 of capacity
        tracker.begin(9.5)
        tracker.end(9.5, "pass")
    snap = tracker.snapshot(10.0, tunnels=1)
    assert (snap.utilization, snap.tunnels, snap.as_dict()["tunnels"]) == (0.8, 1, 1)


def test_report_tunnels_field_is_optional_and_validated() -> None:
    report = LoadReport("edge-eu-1", 1, "up", 1, 10.0, 100.0, 0.5, 0.9, tunnels=7)
    assert LoadReport.from_json(report.to_json()) == report
    older = b'{"node":"e","seq":1,"status":"up","inflight":0,"rps":0,"capacity_rps":1,'
    older += b'"utilization":0,"cache_hit_ratio":0}'
    assert LoadReport.from_json(older).tunnels == 0  # an edge from before the field
    with pytest.raises(ReportError, match="tunnels"):
        LoadReport.from_json(older[:-1] + b',"tunnels":-1}')


def test_websocket_table_defaults_and_keys(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('[edge]\nname = "e"\norigin = "http://127.0.0.1:1"\n')
    assert load_config(config).websocket == WebSocketSettings()
    assert WebSocketSettings().max_message_bytes == MiB
    assert WebSocketSettings().idle_timeout_s == 100.0
    config.write_text(
        '[edge]\nname = "e"\norigin = "http://127.0.0.1:1"\n[websocket]\nmax_tunnels = 5\n'
        'max_message_bytes = "64K"\nidle_timeout_s = 10\nping_interval_s = 0\n'
    )
    assert load_config(config).websocket == WebSocketSettings(5, 64 * 1024, 10.0, 0.0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("max_tunnels = -1", "websocket.max_tunnels: expected an integer"),
        ('max_message_bytes = "0"', "websocket.max_message_bytes"),
        ("idle_timeout_s = 0", "websocket.idle_timeout_s"),
        ("idle_timeout_s = 10\nping_interval_s = 10", "websocket.ping_interval_s: must be under"),
        ("max_tunnel = 3", "max_tunnel"),
    ],
)
def test_websocket_table_errors_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f'[edge]\nname = "e"\norigin = "http://127.0.0.1:1"\n[websocket]\n{body}\n')
    with pytest.raises(ConfigError, match=message):
        load_config(config)
