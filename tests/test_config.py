"""load_config: every defect is one ConfigError line naming file, key path and expectation."""

from __future__ import annotations

import contextlib
import os
import string
import subprocess
import sys
import tempfile
from ipaddress import ip_network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdn.config import HostPort, absolute_name, parse_host_port
from georouter.config import DEFAULT_CONFIG, load_config
from georouter.errors import ConfigError

BASE = """\
[router]
dns_listen = "127.0.0.1:0"
control_listen = "127.0.0.1:0"
token = "t0ken"

[policy]
default_region = "na"

[[zones]]
origin = "example.com"
ns = ["ns1.example.com"]
services = ["cdn"]

[[zones.records]]
name = "www"
type = "CNAME"
value = "cdn.example.com."

[[regions]]
name = "na"
continents = ["NA"]
latitude = 39.8
longitude = -98.6

[[regions]]
name = "eu"
countries = ["DE"]
latitude = 50.1
longitude = 8.7

[[regions]]
name = "ap"
latitude = 1.35
longitude = 103.8

[[nodes]]
name = "edge-1"
region = "na"
ipv4 = "127.0.0.11"
capacity_rps = 100
control_url = "http://127.0.0.11:9080"
"""

RECORD = '\n[[zones.records]]\nname = "{name}"\ntype = "{type}"\nvalue = "{value}"\n'
OVERRIDE = '\n[[overrides]]\nnetwork = "{network}"\nregion = "{region}"\n'
NODE = BASE[BASE.index("[[nodes]]") :]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cdn.toml"
    path.write_text(text)
    return path


TOKEN, CAPACITY = 'token = "t0ken"', "capacity_rps = 100\n"
OPERATOR_A = TOKEN + '\noperator_token = "a"'
NODE_2 = NODE.replace("edge-1", "edge-2")


def with_node_token(token: str, text: str = BASE) -> str:
    """`text` (BASE or a node) with its first node given its own token."""
    return text.replace(CAPACITY, CAPACITY + f'token = "{token}"\n', 1)


def listen_list(items: str) -> str:
    return BASE.replace('dns_listen = "127.0.0.1:0"', f"dns_listen = [{items}]", 1)


def edited(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def record(name: str, rtype: str, value: str) -> str:
    return BASE.replace(
        "\n[[regions]]", RECORD.format(name=name, type=rtype, value=value) + "\n[[regions]]", 1
    )


def records(*triples: tuple[str, str, str], text: str = BASE) -> str:
    added = "".join(RECORD.format(name=n, type=t, value=v) for n, t, v in triples)
    return text.replace("\n[[regions]]", added + "\n[[regions]]", 1)


DELEGATION = (("sub", "NS", "ns.sub.example.com."), ("ns.sub", "A", "192.0.2.53"))


def policy(line: str) -> str:
    return edited("[policy]\n", f"[policy]\n{line}\n")


def listen(value: str) -> str:
    return edited('dns_listen = "127.0.0.1:0"', f'dns_listen = "{value}"')


def ap(line: str) -> str:
    return edited('name = "ap"\n', f'name = "ap"\n{line}\n')


def override(*pairs: tuple[str, str]) -> str:
    return BASE + "".join(OVERRIDE.format(network=n, region=r) for n, r in pairs)


# (test id, config text, key path, expectation fragment)
# fmt: off
CASES = [
    # unknown keys: typos are errors, with a hint
    ("typo_policy_key", policy("answer_tll = 5"), "policy.answer_tll",
     "unknown key (did you mean 'answer_ttl'?)"),
    ("typo_top_table", BASE + "\n[polcy]\nanswer_ttl = 5\n", "polcy",
     "unknown key (did you mean 'policy'?)"),
    ("typo_node_key", edited('ipv4 = "127.0.0.11"', 'ipv4 = "127.0.0.11"\nip6 = "::1"'),
     "nodes[0].ip6", "unknown key"),
    ("required_missing", edited("capacity_rps = 100\n", ""), "nodes[0].capacity_rps",
     "required key missing (expected a number)"),
    # credentials: every node has one, none is shared between holders
    ("no_credential", edited('token = "t0ken"\n', ""), "nodes[0].token",
     "expected a token (or a shared router.token)"),
    ("node_token_twice", with_node_token("a") + with_node_token("a", NODE_2),
     "nodes[1].token", "same token as node 'edge-1'"),
    ("operator_is_a_node_token", with_node_token("a").replace(TOKEN, OPERATOR_A),
     "router.operator_token", "same token as node 'edge-1'"),
    ("operator_is_the_shared_token", edited(TOKEN, TOKEN + '\noperator_token = "t0ken"'),
     "router.operator_token", "must differ from router.token"),
    # a previous operator token an edge holds as router.token would let it act as operator
    ("previous_operator_is_the_shared_token",
     edited(TOKEN, OPERATOR_A + '\nprevious_operator_tokens = ["t0ken"]'),
     "router.previous_operator_tokens[0]", "must differ from router.token (edges hold it)"),
    ("operator_is_a_previous_shared_token",
     edited(TOKEN, OPERATOR_A + '\nprevious_tokens = ["a"]'),
     "router.operator_token", "must differ from router.previous_tokens[0] (edges hold it)"),
    ("previous_without_token", edited(CAPACITY, CAPACITY + 'previous_tokens = ["b"]\n'),
     "nodes[0].previous_tokens", "expected a token to rotate to"),
    ("no_operator", with_node_token("a").replace(TOKEN + "\n", ""),
     "router.operator_token", "expected a token for drain, weight and purge"),
    # wrong types
    ("ttl_string", policy('answer_ttl = "20"'), "policy.answer_ttl",
     "expected an integer, got a string '20'"),
    ("ttl_float", policy("answer_ttl = 20.5"), "policy.answer_ttl",
     "expected an integer, got a number 20.5"),
    ("threshold_bool", policy("saturation_threshold = true"), "policy.saturation_threshold",
     "expected a number, got a boolean True"),
    ("countries_not_array", edited('countries = ["DE"]', 'countries = "DE"'),
     "regions[1].countries", "expected an array, got a string 'DE'"),
    ("router_not_table", "router = 5\n" + BASE[BASE.index("[policy]"):], "router",
     "expected a table, got an integer 5"),
    ("latitude_nan", edited("latitude = 39.8", "latitude = nan"), "regions[0].latitude",
     "expected a finite number"),
    ("capacity_huge_integer", edited("capacity_rps = 100", "capacity_rps = 1" + "0" * 400),
     "nodes[0].capacity_rps", "expected a finite number"),
    # ranges (TTLs are 31-bit, RFC 2181 §8)
    ("ttl_negative", policy("answer_ttl = -1"), "policy.answer_ttl",
     "expected an integer in 0..2147483647, got -1"),
    ("ttl_over_31_bits_rfc2181_8", policy("answer_ttl = 2147483648"), "policy.answer_ttl",
     "expected an integer in 0..2147483647"),
    ("answers_zero", policy("answers_per_response = 0"), "policy.answers_per_response",
     "expected an integer in 1..8, got 0"),
    ("answers_nine", policy("answers_per_response = 9"), "policy.answers_per_response",
     "in 1..8, got 9"),
    ("threshold_zero", policy("saturation_threshold = 0"), "policy.saturation_threshold",
     "expected a number in (0, 1.5], got 0"),
    ("threshold_high", policy("saturation_threshold = 1.51"), "policy.saturation_threshold",
     "(0, 1.5], got 1.51"),
    ("fall_zero", BASE + "\n[health]\nfall = 0\n", "health.fall",
     "expected an integer in 1..100"),
    ("timeout_zero", BASE + "\n[health]\nprobe_timeout_s = 0\n", "health.probe_timeout_s",
     "(0, 3600]"),
    ("prewarm_task_zero", BASE + "\n[prewarm]\nmax_urls_per_task = 0\n",
     "prewarm.max_urls_per_task", "expected an integer in 1..1000, got 0"),
    ("prewarm_top_k_33", BASE + "\n[prewarm]\npopularity_top_k = 33\n",
     "prewarm.popularity_top_k", "expected an integer in 1..32, got 33"),
    ("prewarm_unknown", BASE + "\n[prewarm]\nmax_urls = 5\n", "prewarm.max_urls", "unknown"),
    ("latitude_range", edited("latitude = 39.8", "latitude = 91"), "regions[0].latitude",
     "[-90, 90], got 91"),
    ("capacity_zero", edited("capacity_rps = 100", "capacity_rps = 0"), "nodes[0].capacity_rps",
     "(0, 1e+09]"),
    ("serial_over_32_bits",
     edited('origin = "example.com"', 'origin = "example.com"\nsoa_serial = 4294967296'),
     "zones[0].soa_serial", "0..4294967295"),
    # HOST:PORT
    ("port_too_big", listen("127.0.0.1:65536"), "router.dns_listen", "port must be in 0..65535"),
    ("no_port", listen("127.0.0.1"), "router.dns_listen", "expected HOST:PORT (IPv6 as [::1]:53)"),
    ("ipv6_unbracketed", listen("::1:53"), "router.dns_listen", "expected HOST:PORT"),
    ("ipv6_invalid", listen("[::g]:53"), "router.dns_listen", "expected HOST:PORT"),
    ("ipv4_invalid", listen("127.0.0.256:53"), "router.dns_listen", "127.0.0.256"),
    ("host_invalid", listen("bad host:53"), "router.dns_listen", "bad label 'bad host'"),
    ("listen_list_item", listen_list('"127.0.0.1:0", "::1:53"'),
     "router.dns_listen[1]", "expected HOST:PORT"),
    ("listen_list_twice", listen_list('"[::1]:53", "[::1]:53"'),
     "router.dns_listen[1]", "[::1]:53 listed twice"),
    ("listen_list_empty", listen_list(""),
     "router.dns_listen", "expected 1..16 addresses"),
    ("listen_not_text", edited('dns_listen = "127.0.0.1:0"', "dns_listen = 53"),
     "router.dns_listen", "expected an array"),
    # router
    ("token_empty", edited('token = "t0ken"', 'token = ""'), "router.token",
     "expected a non-empty bearer token"),
    ("token_space", edited('token = "t0ken"', 'token = "t0 ken"'), "router.token",
     "bearer token"),
    ("geoip_empty", edited('token = "t0ken"', 'token = "t0ken"\ngeoip = ""'), "router.geoip",
     "expected a file path"),
    ("dns_workers_zero", edited('token = "t0ken"', 'token = "t0ken"\ndns_workers = 0'),
     "router.dns_workers", "expected an integer in 1..64, got 0"),
    ("dns_workers_65", edited('token = "t0ken"', 'token = "t0ken"\ndns_workers = 65'),
     "router.dns_workers", "expected an integer in 1..64, got 65"),
    ("dns_workers_text", edited('token = "t0ken"', 'token = "t0ken"\ndns_workers = "2"'),
     "router.dns_workers", "expected an integer"),
    ("previous_token_space",
     edited('token = "t0ken"', 'token = "t0ken"\nprevious_tokens = ["old", "o ld"]'),
     "router.previous_tokens[1]", "expected a non-empty bearer token"),
    ("previous_tokens_string",
     edited('token = "t0ken"', 'token = "t0ken"\nprevious_tokens = "old"'),
     "router.previous_tokens", "expected an array"),
    ("previous_tokens_nine",
     edited('token = "t0ken"', 'token = "t0ken"\nprevious_tokens = [' + '"a", ' * 9 + "]"),
     "router.previous_tokens", "expected at most 8 tokens"),
    # policy
    ("all_down", policy('all_down = "fail-closed"'), "policy.all_down",
     "expected 'fail-open' or 'servfail', got 'fail-closed'"),
    ("default_region_unknown", edited('default_region = "na"', 'default_region = "apac"'),
     "policy.default_region", "unknown region 'apac' (known: ap, eu, na)"),
    # regions
    ("region_duplicate", edited('name = "ap"', 'name = "eu"'), "regions[2].name",
     "duplicate region name 'eu'"),
    ("region_name_syntax", edited('name = "ap"', 'name = "a p"'), "regions[2].name",
     "expected a region name"),
    ("country_lower", edited('countries = ["DE"]', 'countries = ["de"]'),
     "regions[1].countries[0]", "expected an upper-case ISO 3166-1 alpha-2 code, got 'de'"),
    ("country_alpha3", edited('countries = ["DE"]', 'countries = ["DE", "DEU"]'),
     "regions[1].countries[1]", "alpha-2 code, got 'DEU'"),
    ("country_claimed_twice", ap('countries = ["DE"]'), "regions[2].countries[0]",
     "country 'DE' already claimed by region 'eu'"),
    ("continent_unknown", edited('continents = ["NA"]', 'continents = ["NA", "XX"]'),
     "regions[0].continents[1]", "expected one of AF, AN, AS, EU, NA, OC, SA, got 'XX'"),
    ("continent_claimed_twice", ap('continents = ["NA"]'), "regions[2].continents[0]",
     "continent 'NA' already claimed by region 'na'"),
    ("failover_unknown", ap('failover = ["eu", "sa"]'), "regions[2].failover[1]",
     "unknown region 'sa' (known: ap, eu, na)"),
    ("failover_self", ap('failover = ["ap"]'), "regions[2].failover[0]",
     "a region cannot fail over to itself"),
    ("failover_twice", ap('failover = ["eu", "eu"]'), "regions[2].failover[1]",
     "region 'eu' listed twice"),
    ("no_regions", BASE[: BASE.index("[[regions]]")] + NODE, "regions",
     "expected at least one [[regions]] table"),
    # nodes
    ("node_region_unknown", edited('\nregion = "na"', '\nregion = "apac"'), "nodes[0].region",
     "unknown region 'apac' (known: ap, eu, na)"),
    ("node_duplicate", BASE + "\n" + NODE, "nodes[1].name", "duplicate node name 'edge-1'"),
    ("node_without_address", edited('ipv4 = "127.0.0.11"\n', ""), "nodes[0]",
     "a node needs an ipv4 or an ipv6 address (or both)"),
    ("node_ipv4_invalid", edited('ipv4 = "127.0.0.11"', 'ipv4 = "::1"'), "nodes[0].ipv4",
     "expected an IPv4 address, got '::1'"),
    ("node_ipv6_invalid", edited('ipv4 = "127.0.0.11"', 'ipv6 = "127.0.0.1"'), "nodes[0].ipv6",
     "expected an IPv6 address, got '127.0.0.1'"),
    ("control_url_scheme", edited("http://127.0.0.11:9080", "ftp://127.0.0.11"),
     "nodes[0].control_url", "expected an http:// or https:// URL"),
    ("control_url_port", edited("http://127.0.0.11:9080", "http://h:99999"),
     "nodes[0].control_url", "expected an http:// or https:// URL"),
    # A fragment would swallow the /healthz appended to it: probes would ask for "/".
    ("control_url_fragment", edited("http://127.0.0.11:9080", "http://127.0.0.11:9080/#x"),
     "nodes[0].control_url", "expected an http:// or https:// URL"),
    # overrides
    ("override_host_bits", override(("10.1.2.3/8", "eu")), "overrides[0].network",
     "10.1.2.3/8 has host bits set (did you mean 10.0.0.0/8?)"),
    ("override_not_cidr", override(("10.0.0.0", "eu")), "overrides[0].network",
     "expected a CIDR network such as 192.0.2.0/24, got '10.0.0.0'"),
    ("override_garbage", override(("10.0.0.0/33", "eu")), "overrides[0].network",
     "expected a CIDR network"),
    ("override_duplicate", override(("10.0.0.0/8", "eu"), ("10.0.0.0/8", "ap")),
     "overrides[1].network", "duplicate override for 10.0.0.0/8"),
    ("override_region", override(("2001:db8::/32", "mars")), "overrides[0].region",
     "unknown region 'mars'"),
    # zones: names (RFC 1035 §2.3.4) and data rules (RFC 1034 §3.6.2)
    ("zone_duplicate_after_normalising",
     BASE.replace("\n[[regions]]", '\n[[zones]]\norigin = "EXAMPLE.com."\n'
                  'ns = ["ns1.example.com"]\n\n[[regions]]', 1),
     "zones[1].origin", "duplicate zone example.com."),
    ("zone_origin_bad_label", edited('origin = "example.com"', 'origin = "exa mple.com"'),
     "zones[0].origin", "expected a domain name, got 'exa mple.com' (bad label 'exa mple')"),
    ("zone_origin_idn", edited('origin = "example.com"', 'origin = "exämple.com"'),
     "zones[0].origin", "IDNA 'xn--' form"),
    ("zone_label_over_63_rfc1035_2_3_4",
     edited('origin = "example.com"', f'origin = "{"a" * 64}.com"'), "zones[0].origin",
     "bad label"),
    ("zone_name_over_255_rfc1035_2_3_4",
     edited('origin = "example.com"', f'origin = "{".".join(["a" * 63] * 4)}"'),
     "zones[0].origin", "longer than 255 octets"),
    ("zone_ns_empty", edited('ns = ["ns1.example.com"]', "ns = []"), "zones[0].ns",
     "at least one name server"),
    ("zone_ns_bad", edited('ns = ["ns1.example.com"]', 'ns = ["ns1..example.com"]'),
     "zones[0].ns[0]", "bad label ''"),
    ("service_outside_zone", edited('services = ["cdn"]', 'services = ["cdn.example.org."]'),
     "zones[0].services[0]", "cdn.example.org. is not inside the zone example.com."),
    ("service_twice", edited('services = ["cdn"]', 'services = ["cdn", "CDN.example.com."]'),
     "zones[0].services[1]", "service cdn.example.com. listed twice"),
    ("record_type", record("mail", "MX", "10 mx.example.com."), "zones[0].records[1].type",
     "expected one of A, AAAA, CNAME, TXT, NS, got 'MX'"),
    ("record_a_value", record("host", "A", "1.2.3"), "zones[0].records[1].value",
     "expected an IPv4 address"),
    ("record_aaaa_value", record("host", "AAAA", "1.2.3.4"), "zones[0].records[1].value",
     "expected an IPv6 address"),
    ("record_cname_value", record("alias", "CNAME", "bad..name"), "zones[0].records[1].value",
     "bad label ''"),
    ("record_txt_over_255_rfc1035_3_3_14", record("t", "TXT", "x" * 256),
     "zones[0].records[1].value", "TXT value longer than 255 octets"),
    ("record_outside_zone", record("a.example.net.", "A", "192.0.2.1"),
     "zones[0].records[1].name", "a.example.net. is not inside the zone example.com."),
    ("cname_at_service_rfc1034_3_6_2", record("cdn", "CNAME", "other.example.net."),
     "zones[0].records[1]", "CNAME at the geo-routed service cdn.example.com."),
    ("cname_at_apex_rfc1034_3_6_2", record("@", "CNAME", "other.example.net."),
     "zones[0].records[1]", "CNAME at the zone apex example.com."),
    ("cname_with_other_data_rfc1034_3_6_2", record("www", "TXT", "hello"),
     "zones[0].records[1]", "CNAME alongside other data at www.example.com."),
    ("two_cnames_rfc1034_3_6_2", record("www", "CNAME", "img.example.com"),
     "zones[0].records[1]", "CNAME alongside other data"),
    ("a_at_service", record("cdn", "A", "192.0.2.1"), "zones[0].records[1]",
     "static A at the geo-routed service"),
    ("ns_at_apex", record("@", "NS", "ns2.example.net"), "zones[0].records[1]",
     "NS at the zone apex"),
    # zone cuts (RFC 1034 §4.2.1): the child zone's names are not ours to answer
    ("ns_at_service", record("cdn", "NS", "ns.other.net"), "zones[0].records[1]",
     "NS at cdn.example.com. delegates the geo-routed service cdn.example.com."),
    ("ns_above_service",
     records(("eu", "NS", "ns.other.net"),
             text=edited('services = ["cdn"]', 'services = ["cdn", "img.eu"]')),
     "zones[0].records[1]", "NS at eu.example.com. delegates the geo-routed service img.eu"),
    ("txt_below_cut", records(*DELEGATION, ("x.sub", "TXT", "child data")),
     "zones[0].records[3]", "TXT at x.sub.example.com. is below the zone cut at sub.example.com."),
    ("address_below_cut_not_glue", records(*DELEGATION, ("www.sub", "A", "192.0.2.1")),
     "zones[0].records[3]", "only glue"),
    ("txt_at_cut", records(("sub", "TXT", "x"), *DELEGATION), "zones[0].records[1]",
     "TXT at sub.example.com. is below the zone cut"),
    ("nested_cut", records(*DELEGATION, ("a.sub", "NS", "ns.a.sub.example.com.")),
     "zones[0].records[3]", "NS at a.sub.example.com. is below the zone cut at sub.example.com."),
    ("no_zones", BASE[: BASE.index("[[zones]]")] + BASE[BASE.index("[[regions]]"):], "zones",
     "expected at least one [[zones]] table"),
]
# fmt: on


@pytest.mark.parametrize(
    ("text", "key", "expectation"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_defect_is_one_line_naming_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expectation: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert (error.source, error.key) == (str(path), key)
    assert expectation in error.message
    assert str(error) == f"{path}: {key}: {error.message}"
    assert "\n" not in str(error)


def test_duplicate_record_and_rrset_ttl_rfc2181_5_2(tmp_path: Path) -> None:
    twice = record("host", "A", "192.0.2.1").replace(
        "\n[[regions]]",
        RECORD.format(name="host", type="A", value="192.0.2.1") + "\n[[regions]]",
        1,
    )
    with pytest.raises(ConfigError, match=r"zones\[0\]\.records\[2\]: duplicate record"):
        load_config(write(tmp_path, twice))
    ttl = twice.replace('value = "192.0.2.1"\n', 'value = "192.0.2.1"\nttl = 60\n', 1)
    with pytest.raises(ConfigError, match=r"records\[2\]: TTL differs within the A RRset"):
        load_config(
            write(tmp_path, ttl.replace('"192.0.2.1"\n\n[[regions]]', '"192.0.2.2"\n\n[[regions]]'))
        )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: Is a directory"):
        load_config(tmp_path)


def test_not_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[router]\ntoken = \n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == ""
    assert str(caught.value).startswith(f"{path}: not valid TOML: ")
    assert "line 2" in str(caught.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cdn.toml"
    path.write_bytes(b'[router]\ntoken = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path)


def test_shipped_config_loads() -> None:
    config = load_config(DEFAULT_CONFIG)
    assert config.router.dns_listen == HostPort("127.0.0.1", 5300)
    assert config.router.geoip is None
    assert config.router.dns_workers == 1
    assert config.policy.default_region == "na"
    assert [r.name for r in config.regions] == ["na", "eu", "ap"]
    assert config.region("eu").countries == frozenset({"IL", "TR", "AE", "SA"})
    assert len(config.nodes) == 8
    assert [n.name for n in config.nodes if n.role == "shield"] == ["shield-1", "shield-2"]
    zone = config.zones[0]
    assert zone.origin == "example.com."
    # The demo's social platform: feed, images, posts and chat, all through the same edges.
    assert zone.services == (
        "cdn.example.com.", "img.example.com.", "api.example.com.", "chat.example.com."
    )  # fmt: skip
    assert {(r.name, r.rtype) for r in zone.records} == {
        ("ns1.example.com.", "A"),
        ("www.example.com.", "CNAME"),
        ("example.com.", "TXT"),
    }


def test_previous_tokens_load_for_a_rotation(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE)).router.previous_tokens == ()
    text = BASE.replace('token = "t0ken"', 'token = "new"\nprevious_tokens = ["t0ken", "older"]')
    router = load_config(write(tmp_path, text)).router
    assert (router.token, router.previous_tokens) == ("new", ("t0ken", "older"))


def test_delegation_with_glue_loads_rfc1034_4_2_1(tmp_path: Path) -> None:
    text = records(*DELEGATION, ("ns.sub", "AAAA", "2001:db8::53"), ("subway", "TXT", "ours"))
    zone = load_config(write(tmp_path, text)).zones[0]
    assert {(r.name, r.rtype) for r in zone.records} >= {
        ("sub.example.com.", "NS"),
        ("ns.sub.example.com.", "A"),
        ("ns.sub.example.com.", "AAAA"),
        ("subway.example.com.", "TXT"),
    }


def test_defaults_apply_when_sections_are_absent(tmp_path: Path) -> None:
    text = BASE.replace('[policy]\ndefault_region = "na"\n', "").replace(
        'dns_listen = "127.0.0.1:0"\n', ""
    )
    config = load_config(write(tmp_path, text))
    assert config.policy.default_region == "na"  # the first region
    assert (config.policy.answer_ttl, config.policy.answers_per_response) == (20, 2)
    assert config.router.dns_listen == HostPort("127.0.0.1", 5300)
    assert config.health.fall == 2
    zone = config.zones[0]
    assert (zone.soa_rname, zone.soa_serial, zone.negative_ttl) == (
        "hostmaster.example.com.",
        1,
        60,
    )
    assert zone.records[0].ttl == 300


def test_limits_are_inclusive(tmp_path: Path) -> None:
    text = edited(
        "[policy]\n",
        "[policy]\nanswer_ttl = 2147483647\nanswers_per_response = 8\nsaturation_threshold = 1.5\n",
    )
    text = text.replace('"127.0.0.1:0"', '"[::1]:65535"', 1)
    text = text.replace('token = "t0ken"', 'token = "t0ken"\ndns_workers = 64', 1)
    config = load_config(write(tmp_path, text))
    assert config.router.dns_workers == 64
    assert (config.policy.answer_ttl, config.policy.answers_per_response) == (2**31 - 1, 8)
    assert config.policy.saturation_threshold == 1.5
    assert config.router.dns_listen == HostPort("::1", 65535)
    assert str(config.router.dns_listen) == "[::1]:65535"


def test_names_are_normalised_absolute_lower_case(tmp_path: Path) -> None:
    text = edited('origin = "example.com"', 'origin = "Example.COM."')
    text = text.replace('ns = ["ns1.example.com"]', 'ns = ["NS1.Example.com", "ns.other.net."]')
    text = text.replace('services = ["cdn"]', 'services = ["CDN", "img.EXAMPLE.com.", "@"]')
    text = text.replace('value = "cdn.example.com."', 'value = "Cdn.Example.Com"')
    text = text.replace(
        "\n[[regions]]", RECORD.format(name="@", type="TXT", value="Keep Case") + "\n[[regions]]", 1
    )
    zone = load_config(write(tmp_path, text)).zones[0]
    assert zone.origin == "example.com."
    assert zone.ns == ("ns1.example.com.", "ns.other.net.")
    assert zone.services == ("cdn.example.com.", "img.example.com.", "example.com.")
    assert [(r.name, r.value) for r in zone.records] == [
        ("www.example.com.", "cdn.example.com."),
        ("example.com.", "Keep Case"),
    ]


def test_failover_given_first_then_nearest(tmp_path: Path) -> None:
    text = BASE.replace('name = "ap"\n', 'name = "ap"\nfailover = ["na"]\n')
    text += '\n[[regions]]\nname = "sa"\nlatitude = -23.5\nlongitude = -46.6\n'
    regions = load_config(write(tmp_path, text)).regions_by_name
    assert regions["ap"].failover == ("na", "eu", "sa")  # given, then eu (9,900 km) before sa
    assert regions["na"].failover == ("eu", "sa", "ap")  # eu 7,900 km, sa 8,900 km, ap 15,600 km
    assert regions["sa"].failover == ("na", "eu", "ap")


def test_great_circle_distance_frankfurt_new_york() -> None:
    fra = load_config(DEFAULT_CONFIG).region("eu")  # 50.1 N, 8.7 E
    assert fra.distance_km(40.71, -74.01) == pytest.approx(6205, rel=0.01)
    assert fra.distance_km(fra.latitude, fra.longitude) == 0


def test_geoip_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    path = sub / "cdn.toml"
    path.write_text(edited('token = "t0ken"', 'token = "t0ken"\ngeoip = "GeoLite2-City.mmdb"'))
    assert load_config(path).router.geoip == sub / "GeoLite2-City.mmdb"
    path.write_text(
        edited('token = "t0ken"', 'token = "t0ken"\ngeoip = "/var/lib/GeoIP/City.mmdb"')
    )
    assert load_config(path).router.geoip == Path("/var/lib/GeoIP/City.mmdb")


def test_overrides_load(tmp_path: Path) -> None:
    text = BASE + OVERRIDE.format(network="10.0.0.0/8", region="eu")
    text += OVERRIDE.format(network="2001:DB8::/32", region="ap")
    overrides = load_config(write(tmp_path, text)).overrides
    assert [(o.network, o.region) for o in overrides] == [
        (ip_network("10.0.0.0/8"), "eu"),
        (ip_network("2001:db8::/32"), "ap"),
    ]


# ---- property tests --------------------------------------------------------------------

hosts = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), st.just("localhost")
)


@given(host=hosts, port=st.integers(0, 65535))
def test_host_port_round_trips(host: str, port: int) -> None:
    assert parse_host_port(str(HostPort(host, port))) == HostPort(host, port)


@given(text=st.text(max_size=40))
def test_host_port_never_crashes(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_host_port(text)


labels = st.text(string.ascii_letters + string.digits, min_size=1, max_size=20)


@given(st.lists(labels, min_size=1, max_size=5), st.booleans())
def test_absolute_name_is_idempotent(parts: list[str], dotted: bool) -> None:
    name = absolute_name(".".join(parts) + ("." if dotted else ""))
    assert name == name.lower() and name.endswith(".")
    assert absolute_name(name) == name


toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=False).map(lambda f: repr(f).replace("inf", "inf")),
    st.booleans().map(lambda b: str(b).lower()),
    st.text(string.printable.replace('"', "").replace("\\", ""), max_size=12).map(
        lambda s: f'"{s}"'
    ),
    st.just("[]"),
    st.just("{}"),
    st.just('["x"]'),
)
VALUE_LINES = [i for i, line in enumerate(BASE.splitlines()) if " = " in line]


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(line=st.sampled_from(VALUE_LINES), value=toml_scalars)
def test_any_value_anywhere_loads_or_raises_config_error(line: int, value: str) -> None:
    lines = BASE.splitlines()
    key = lines[line].split(" = ")[0]
    lines[line] = f"{key} = {value}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cdn.toml"
        path.write_text("\n".join(lines))
        try:
            load_config(path)
        except ConfigError as exc:
            assert "\n" not in str(exc)


# ---- the command line ------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "georouter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_cli_check_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, edited('\nregion = "na"', '\nregion = "apac"'))
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"georouter: {path}: nodes[0].region: unknown region 'apac' (known: ap, eu, na)\n"
    )


def test_cli_check_shipped_config_exits_0() -> None:
    script = Path(sys.executable).with_name("georouter")
    result = subprocess.run([str(script), "check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (
        "ok: 1 zone (example.com.), 3 regions (na, eu, ap), 8 nodes (2 shields)," in result.stdout
    )
    assert "GeoLite2-City built 2018-07-03 (embedded)" in result.stdout


def test_dns_listen_takes_a_list_of_addresses(tmp_path: Path) -> None:
    listen = 'dns_listen = ["127.0.0.1:53", "[::1]:53", "[::]:5353"]'
    config = load_config(write(tmp_path, edited('dns_listen = "127.0.0.1:0"', listen)))
    assert config.router.dns_listens == (
        HostPort("127.0.0.1", 53),
        HostPort("::1", 53),
        HostPort("::", 5353),
    )
    assert config.router.dns_listen == HostPort("127.0.0.1", 53)  # the first, for logs
