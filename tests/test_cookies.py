"""RFC 9018 server cookies and RFC 7873 §5.2 outcomes: plain function calls."""

from __future__ import annotations

import socket

from georouter.cookies import CookieSecrets, check, server_cookie

SECRET = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")  # RFC 9018 Appendix A
CLIENT = bytes.fromhex("2464c4abcf10c957")
ADDRESS = socket.inet_aton("198.51.100.100")
T0 = 1559731985  # 0x5cf79f11


def test_learning_a_new_server_cookie_rfc9018_a_1() -> None:
    cookie = server_cookie(CLIENT, ADDRESS, SECRET, T0)
    assert cookie.hex() == "010000005cf79f111f8130c3eee29480"


def test_only_a_client_cookie_gets_a_server_cookie_rfc7873_5_2_3() -> None:
    verdict = check(CLIENT, ADDRESS, CookieSecrets(SECRET), T0)
    assert verdict.outcome == "client_only"
    assert verdict.option.hex() == "000a0018" + CLIENT.hex() + "010000005cf79f111f8130c3eee29480"


def test_a_valid_cookie_is_echoed_and_an_old_one_renewed_rfc9018_4_3() -> None:
    data = CLIENT + server_cookie(CLIENT, ADDRESS, SECRET, T0)
    secrets = CookieSecrets(SECRET)
    valid = check(data, ADDRESS, secrets, T0 + 1799)
    assert valid.outcome == "valid" and valid.option[4:] == data
    renewed = check(data, ADDRESS, secrets, T0 + 1801)
    assert renewed.outcome == "renewed" and renewed.option[16:20] == (T0 + 1801).to_bytes(4)
    assert check(data, ADDRESS, secrets, T0 + 3601).outcome == "bad"  # older than an hour
    assert check(data, ADDRESS, secrets, T0 - 301).outcome == "bad"  # 5 min in the future
    assert check(data, ADDRESS, secrets, T0 - 299).outcome == "valid"


def test_a_cookie_for_another_address_or_secret_is_bad() -> None:
    data = CLIENT + server_cookie(CLIENT, ADDRESS, SECRET, T0)
    other = socket.inet_aton("198.51.100.101")
    assert check(data, other, CookieSecrets(SECRET), T0).outcome == "bad"
    assert check(data, ADDRESS, CookieSecrets(bytes(16)), T0).outcome == "bad"


def test_a_previous_secret_verifies_and_the_current_one_reissues_rfc9018_4_4() -> None:
    data = CLIENT + server_cookie(CLIENT, ADDRESS, SECRET, T0)
    verdict = check(data, ADDRESS, CookieSecrets(bytes(16), (SECRET,)), T0 + 10)
    assert verdict.outcome == "renewed"
    assert verdict.option[-8:] == server_cookie(CLIENT, ADDRESS, bytes(16), T0 + 10)[-8:]


def test_lengths_rfc7873_forbids_are_malformed_rfc7873_5_2_2() -> None:
    secrets = CookieSecrets(SECRET)
    for size in (0, 7, 9, 15, 41):
        assert check(bytes(size), ADDRESS, secrets, T0).outcome == "malformed"
    assert check(bytes(16), ADDRESS, secrets, T0).outcome == "bad"  # 8 + 8: well-formed
    assert check(bytes(40), ADDRESS, secrets, T0).outcome == "bad"
