"""The egress grant (``contract.egress``) and the decision the proxy asks (``egress.policy``)."""

from __future__ import annotations

import ipaddress

import pytest

from worker_manager.contract.commands import CreateCommand, parse_command
from worker_manager.contract.egress import (
    MAX_EGRESS_ENTRIES,
    Destination,
    EgressEntryError,
    canonical_egress,
    effective_address,
    embedded_ipv4,
    non_public_kind,
    parse_destination,
    parse_egress,
)
from worker_manager.contract.limits import CommandLimits
from worker_manager.contract.record import public_view
from worker_manager.core.errors import InvalidCommand
from worker_manager.egress.policy import EgressPolicy, is_public
from worker_manager.settings import EgressSettings

ip = ipaddress.ip_address
net = ipaddress.ip_network


# --- the grammar -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("*", Destination("any"), "*"),
        ("api.github.com", Destination("host", host="api.github.com"), "api.github.com"),
        ("API.GitHub.com", Destination("host", host="api.github.com"), "api.github.com"),
        ("example.com.", Destination("host", host="example.com"), "example.com"),
        ("localhost", Destination("host", host="localhost"), "localhost"),
        ("xn--bcher-kva.de:443", Destination("host", "xn--bcher-kva.de", port=443), None),
        ("api.github.com:443", Destination("host", host="api.github.com", port=443), None),
        ("*.pypi.org", Destination("suffix", host="pypi.org"), None),
        ("*.PyPI.org:443", Destination("suffix", host="pypi.org", port=443), "*.pypi.org:443"),
        ("10.0.0.5", Destination("network", network=net("10.0.0.5/32")), None),
        ("10.0.0.5:80", Destination("network", network=net("10.0.0.5/32"), port=80), None),
        ("10.0.0.0/8", Destination("network", network=net("10.0.0.0/8")), None),
        ("10.0.0.0/8:5432", Destination("network", network=net("10.0.0.0/8"), port=5432), None),
        ("10.0.0.0/255.0.0.0", Destination("network", network=net("10.0.0.0/8")), "10.0.0.0/8"),
        (
            "169.254.169.254/32",
            Destination("network", network=net("169.254.169.254/32")),
            "169.254.169.254",
        ),
        ("::1", Destination("network", network=net("::1/128")), None),
        ("[::1]", Destination("network", network=net("::1/128")), "::1"),
        ("[::1]:443", Destination("network", network=net("::1/128"), port=443), None),
        ("2001:DB8::/32", Destination("network", network=net("2001:db8::/32")), "2001:db8::/32"),
        (
            "[2001:db8::/32]:443",
            Destination("network", network=net("2001:db8::/32"), port=443),
            None,
        ),
        ("2001:db8:0:0::1", Destination("network", network=net("2001:db8::1/128")), "2001:db8::1"),
        ("0.0.0.0/0", Destination("network", network=net("0.0.0.0/0")), None),
        ("example.com:00443", Destination("host", "example.com", port=443), "example.com:443"),
        ("x.com:65535", Destination("host", "x.com", port=65535), None),
        ("x.com:1", Destination("host", "x.com", port=1), None),
        ("*.com", Destination("suffix", host="com"), None),
    ],
)
def test_each_form_parses_to_its_destination_and_canonical_text(
    text: str, expected: Destination, canonical: str | None
) -> None:
    parsed = parse_destination(text)
    assert parsed == expected
    assert str(parsed) == (canonical or text)
    # The canonical text is a fixed point: stored, re-parsed, identical.
    assert parse_destination(str(parsed)) == parsed
    assert str(parse_destination(str(parsed))) == str(parsed)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("https://x.com", "is not a destination: use host, host:port"),
        ("x.com/path", "is not a destination"),
        ("user@x.com", "is not a destination"),
        ("x.com?q=1", "is not a destination"),
        ("x .com", "is not a destination"),
        (" x.com", "is not a destination"),
        ("x.com\n", "is not a destination"),
        ("", "is not a destination"),
        ("a..b", "is not a destination"),
        (".x.com", "is not a destination"),
        ("x.com..", "is not a destination"),
        ("-x.com", "is not a destination"),
        ("x-.com", "is not a destination"),
        ("x_y.com", "is not a destination"),
        ("*.", "is not a destination"),
        ("*.*.x.com", "'*' other than a leading '*.'"),
        ("a.*.com", "'*' other than a leading '*.'"),
        ("a*.com", "'*' other than a leading '*.'"),
        ("*x.com", "'*' other than a leading '*.'"),
        ("**", "'*' other than a leading '*.'"),
        ("*:443", '"*" takes none'),
        ("x.com:0", "a port is a number from 1 to 65535"),
        ("x.com:65536", "a port is a number from 1 to 65535"),
        ("x.com:-1", "a port is a number from 1 to 65535"),
        ("x.com:http", "a port is a number from 1 to 65535"),
        ("x.com:", "has no port after its ':'"),
        ("x.com:443:1", "is not a destination"),
        (":443", "is not a destination"),
        ("[::1]:x", "a port is a number from 1 to 65535"),
        ("[::1]:", "has no port after its ':'"),
        ("[::1]]", "is not a destination"),
        ("[10.0.0.1]:80", "is not a destination"),
        ("[x.com]:80", "is not a destination"),
        ("::1:443:", "is not a destination"),
        ("fe80::1%eth0", "is not a destination"),
        ("10.0.0.1/8", "host bits set: did you mean 10.0.0.0/8?"),
        ("10.0.0.0/33", "is not a destination"),
        ("10.0.0.256", "neither an IP address nor a host name"),
        ("127.1", "neither an IP address nor a host name"),
        ("010.0.0.1", "neither an IP address nor a host name"),
        ("bücher.de", "write an international name in its xn-- form"),
        ("a" * 64 + ".com", "a label of 64 characters; at most 63"),
        ("x" * 257, "has 257 characters; at most 256"),
    ],
)
def test_each_malformed_form_is_refused_naming_the_entry(text: str, says: str) -> None:
    with pytest.raises(EgressEntryError) as caught:
        parse_destination(text)
    message = str(caught.value)
    shown = text if len(text) <= 80 else text[:80] + "…"
    assert message.startswith(f"egress entry {shown!r} "), message
    assert says in message, message
    assert caught.value.entry == text
    assert isinstance(caught.value, ValueError)


def test_a_name_of_more_than_253_characters_is_refused() -> None:
    name = ".".join(["a" * 63] * 4)  # 255 characters of valid labels
    with pytest.raises(EgressEntryError, match="a name of 255 characters; at most 253"):
        parse_destination(name)
    assert parse_destination(name[:253].rstrip(".")).kind == "host"


def test_a_long_entry_is_named_but_cut_short_in_the_message() -> None:
    with pytest.raises(EgressEntryError) as caught:
        parse_destination("x" * 300)
    assert len(str(caught.value)) < 200 and "…" in str(caught.value)


def test_a_grant_collapses_duplicates_keeps_order_and_names_the_bad_entry() -> None:
    grant = parse_egress(["b.com", "*.a.com", "B.com", "b.com.", "10.0.0.5/32", "10.0.0.5"])
    assert [str(d) for d in grant] == ["b.com", "*.a.com", "10.0.0.5"]
    assert canonical_egress(["[::1]", "::1", "*"]) == ["::1", "*"]
    assert parse_egress([]) == ()
    with pytest.raises(EgressEntryError, match=r"egress entry 'https://x\.com' is not a dest"):
        parse_egress(["ok.com", "https://x.com"])
    with pytest.raises(EgressEntryError, match=f"at most {MAX_EGRESS_ENTRIES}"):
        parse_egress([f"h{i}.com" for i in range(MAX_EGRESS_ENTRIES + 1)])
    assert len(parse_egress([f"h{i}.com" for i in range(MAX_EGRESS_ENTRIES)])) == 256
    with pytest.raises(EgressEntryError, match="a list of destinations"):
        parse_egress("api.github.com")


# --- the create field and the default ----------------------------------------------------------
def _create(**fields: str) -> dict[str, str]:
    return {"command": "create", "agent_type": "CUSTOM", "agent_command": '["cat"]', **fields}


def _egress_of(**fields: str) -> list[str] | None:
    cmd = parse_command(_create(**fields), "1-0", CommandLimits(), replies="worker:replies")
    assert isinstance(cmd, CreateCommand)
    return cmd.egress


def test_a_create_keeps_its_grant_canonical_and_none_when_it_names_none() -> None:
    given = '["API.github.com:443", "*.pypi.org", "api.github.com:443"]'
    assert _egress_of(egress=given) == ["api.github.com:443", "*.pypi.org"]
    assert _egress_of(egress="[]") == []
    assert _egress_of() is None


@pytest.mark.parametrize(
    ("egress", "says"),
    [
        ('["ok.com", "https://x.com"]', "field 'egress': entry 'https://x.com' is not a dest"),
        ('["10.0.0.1/8"]', "field 'egress': entry '10.0.0.1/8' has host bits set"),
        ('"api.github.com"', "field 'egress': input should be a valid list"),
        ("api.github.com", "field 'egress': must be JSON text (a list of destinations)"),
        ("[1]", "field 'egress'"),
        (str([f"h{i}.com" for i in range(300)]).replace("'", '"'), "has 300 entries"),
    ],
)
def test_a_bad_grant_is_an_invalid_command_naming_the_entry(egress: str, says: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse_command(_create(egress=egress), "1-0", CommandLimits(), replies="worker:replies")
    assert says in str(caught.value), str(caught.value)
    assert caught.value.field == "egress"


def test_the_default_grant_is_parsed_at_start_and_kept_canonical() -> None:
    settings = EgressSettings(egress_default=["PyPI.org:443", "*.github.com", "pypi.org:443"])
    assert settings.egress_default == ["pypi.org:443", "*.github.com"]
    assert EgressSettings().egress_default == []
    with pytest.raises(ValueError, match=r"egress entry 'x\.com/a' is not a destination"):
        EgressSettings(egress_default=["ok.com", "x.com/a"])


def test_a_record_shows_its_grant_and_null_when_it_holds_none() -> None:
    view = public_view({"worker_id": "w", "egress": '["api.github.com:443"]'})
    assert view["egress"] == ["api.github.com:443"]
    assert public_view({"worker_id": "w", "egress": "[]"})["egress"] == []
    assert public_view({"worker_id": "w"})["egress"] is None
    assert public_view({"worker_id": "w", "egress": "{bad"})["egress"] == []


# --- the decision ------------------------------------------------------------------------------
def policy(*entries: str) -> EgressPolicy:
    return EgressPolicy(parse_egress(entries))


PUBLIC = [ip("140.82.112.5")]
PUBLIC6 = [ip("2606:4700::1111")]


def test_a_host_entry_matches_that_name_and_port_only() -> None:
    p = policy("api.github.com:443")
    assert p.decide("api.github.com", 443, PUBLIC).allowed
    assert not p.decide("api.github.com", 80, PUBLIC).allowed
    assert p.decide("api.github.com", 80, PUBLIC).reason == "port 80 not granted"
    assert not p.decide("github.com", 443, PUBLIC).allowed
    assert not p.decide("x.api.github.com", 443, PUBLIC).allowed
    assert p.decide("github.com", 443, PUBLIC).reason == "not granted"
    anyport = policy("api.github.com")
    assert anyport.decide("api.github.com", 1, PUBLIC).allowed
    assert anyport.decide("api.github.com", 65535, PUBLIC6).allowed


def test_a_wildcard_matches_subdomains_at_any_depth_but_not_the_domain() -> None:
    p = policy("*.example.com")
    assert p.decide("a.example.com", 443, PUBLIC).allowed
    assert p.decide("a.b.c.example.com", 8080, PUBLIC).allowed
    assert not p.decide("example.com", 443, PUBLIC).allowed
    assert not p.decide("badexample.com", 443, PUBLIC).allowed
    assert not p.decide("example.com.evil.net", 443, PUBLIC).allowed
    ported = policy("*.example.com:443")
    assert ported.decide("a.example.com", 443, PUBLIC).allowed
    assert ported.decide("a.example.com", 80, PUBLIC).reason == "port 80 not granted"
    both = policy("*.example.com", "example.com")
    assert both.decide("example.com", 443, PUBLIC).allowed


def test_case_and_a_trailing_dot_do_not_matter() -> None:
    p = policy("API.GitHub.com", "*.PyPI.org")
    assert p.decide("api.github.com.", 443, PUBLIC).allowed
    assert p.decide("API.GITHUB.COM", 443, PUBLIC).allowed
    assert p.decide("Files.PyPI.org.", 443, PUBLIC).allowed


def test_star_is_any_public_destination_on_any_port() -> None:
    p = policy("*")
    assert p.decide("anything.example", 1, PUBLIC).allowed
    assert p.decide("140.82.112.5", 22, PUBLIC).allowed
    assert p.decide("2606:4700::1111", 443, PUBLIC6).allowed


def test_nothing_granted_and_nothing_resolved_are_refused() -> None:
    assert policy().decide("api.github.com", 443, PUBLIC).reason == "nothing is granted"
    verdict = policy("*").decide("nowhere.invalid.", 443, [])
    assert not verdict.allowed and verdict.reason == "nowhere.invalid does not resolve"
    assert not policy("*").decide("x.com", 0, PUBLIC).allowed
    assert not policy("*").decide("x.com", 65536, PUBLIC).allowed


def test_the_metadata_address_is_refused_through_star_and_through_a_name() -> None:
    metadata = [ip("169.254.169.254")]
    via_star = policy("*").decide("169.254.169.254", 80, metadata)
    assert not via_star.allowed
    assert via_star.reason == "link-local address 169.254.169.254 not granted literally"
    via_name = policy("*", "metadata.google.internal", "*.internal")
    assert not via_name.decide("metadata.google.internal", 80, metadata).allowed
    assert not via_name.decide("evil.example.com", 80, metadata).allowed
    literal = policy("169.254.169.254/32")
    assert literal.decide("169.254.169.254", 80, metadata).allowed
    # A literal network also grants a name that resolves into it (addresses by address).
    assert literal.decide("metadata.google.internal", 80, metadata).allowed
    on_port = policy("169.254.169.254:80")
    assert on_port.decide("169.254.169.254", 80, metadata).allowed
    refused = on_port.decide("169.254.169.254", 8080, metadata)
    assert refused.reason == "link-local address 169.254.169.254 not granted literally on port 8080"


def test_loopback_is_refused_through_star_and_through_a_granted_name() -> None:
    assert not policy("*").decide("127.0.0.1", 6379, [ip("127.0.0.1")]).allowed
    named = policy("localhost", "*").decide("localhost", 8080, [ip("127.0.0.1")])
    assert not named.allowed
    assert named.reason == "loopback address 127.0.0.1 not granted literally"
    assert not policy("localhost").decide("localhost", 80, [ip("::1")]).allowed
    assert policy("127.0.0.1").decide("localhost", 80, [ip("127.0.0.1")]).allowed
    assert policy("127.0.0.0/8:6379").decide("127.0.0.1", 6379, [ip("127.0.0.1")]).allowed


def test_ipv6_loopback_and_ipv4_mapped_addresses_are_not_public() -> None:
    p = policy("*", "*.example.com")
    for address in (
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.5",
        "::ffff:169.254.169.254",
        "fe80::1",
        "fc00::5",
        "::",
        "64:ff9b::a00:5",
        "2002:a00:5::1",
    ):
        verdict = p.decide("a.example.com", 443, [ip(address)])
        assert not verdict.allowed, address
        assert "not granted literally" in verdict.reason, (address, verdict.reason)
    assert not p.decide("[::1]", 443, [ip("::1")]).allowed
    # A mapped address reaches its IPv4 address: an IPv4 network grants it, literally.
    assert policy("10.0.0.0/8").decide("db.internal", 5432, [ip("::ffff:10.0.0.5")]).allowed
    assert policy("[::1]:443").decide("[::1]", 443, [ip("::1")]).allowed
    assert policy("::1").decide("::1", 22, [ip("::1")]).allowed
    # A mapped public address is public.
    assert p.decide("a.example.com", 443, [ip("::ffff:140.82.112.5")]).allowed


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("::ffff:127.0.0.1", "loopback"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("64:ff9b::7f00:1", "loopback"),  # NAT64
        ("64:ff9b:1::7f00:1", "loopback"),  # local-use NAT64
        ("::ffff:0:7f00:1", "loopback"),  # SIIT's IPv4-translated form
        ("::ffff:0:a9fe:a9fe", "link-local"),
        ("2002:7f00:1::1", "loopback"),  # 6to4
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("2002:a9fe:a9fe::", "link-local"),
        ("2001:0:4136:e378:8000:63bf:5601:5601", "link-local"),  # Teredo, client 169.254.169.254
    ],
)
def test_a_wide_ipv6_grant_does_not_reach_the_ipv4_addresses_ipv6_forms_carry(
    address: str, kind: str
) -> None:
    for grant in ("::/0", "2000::/3", "::/1", "*"):
        verdict = policy(grant).decide(address, 80, [ip(address)])
        assert not verdict.allowed, (grant, address)
        assert verdict.reason.startswith(f"{kind} address "), verdict.reason
    # Named literally, in the family it leads to (or inside the range that carries it), it is.
    target = str(effective_address(ip(address)))
    assert policy(f"{target}:80").decide(address, 80, [ip(address)]).allowed
    carrier = embedded_ipv4(ip(address))
    assert carrier is not None
    assert policy(str(carrier[1])).decide(address, 80, [ip(address)]).allowed


def test_an_ipv6_form_of_a_public_ipv4_address_is_public() -> None:
    for address in ("64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"):
        assert is_public(ip(address)), address
        assert policy("*").decide("dns.example", 53, [ip(address)]).allowed
    # Judged as IPv4 8.8.8.8: an IPv6 network does not name it, an IPv4 one does.
    assert not policy("::/0").decide("64:ff9b::808:808", 53, [ip("64:ff9b::808:808")]).allowed
    assert policy("8.8.8.0/24").decide("64:ff9b::808:808", 53, [ip("64:ff9b::808:808")]).allowed


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.5",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "127.0.0.53",
        "169.254.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "2001:db8::1",
    ],
)
def test_non_public_ranges(address: str) -> None:
    assert not is_public(ip(address))
    verdict = policy("*").decide(address, 443, [ip(address)])
    assert not verdict.allowed and "not granted literally" in verdict.reason


@pytest.mark.parametrize("address", ["8.8.8.8", "140.82.112.5", "100.128.0.1", "2606:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert is_public(ip(address))


def test_site_local_ipv6_is_not_public() -> None:
    # fec0::/10 is deprecated, but still routed inside some sites: Python calls it global.
    verdict = policy("*").decide("x.example.com", 443, [ip("fec0::1")])
    assert verdict.reason == "site-local address fec0::1 not granted literally"
    assert policy("fec0::/10").decide("fec0::1", 443, [ip("fec0::1")]).allowed


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b:1:a9fe:a9:fe00:808:808",  # /48 form of 169.254.169.254; its last 32 bits public
        "64:ff9b:1:7f:0:100:808:808",  # /56 form of 127.0.0.1
        "64:ff9b:1:0:7f:1:808:808",  # /64 form of 127.0.0.1
    ],
)
def test_a_local_use_nat64_address_whose_ipv4_cannot_be_read_is_not_public(address: str) -> None:
    # Where the IPv4 address sits depends on the site translator's prefix length: unknown.
    assert non_public_kind(ip(address)) == "translated"
    for grant in ("*", "::/0", "2000::/3", "::/1", "8.8.8.0/24"):
        assert not policy(grant).decide(address, 80, [ip(address)]).allowed, grant
    # Named by a network inside the local-use range, it is the operator's choice.
    assert policy("64:ff9b:1::/48").decide(address, 80, [ip(address)]).allowed


def test_the_reason_names_the_kind_of_address() -> None:
    for address, kind in [
        ("100.64.0.1", "shared"),
        ("10.0.0.5", "private"),
        ("::1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ]:
        verdict = policy("*").decide("x.example.com", 443, [ip(address)])
        assert verdict.reason == f"{kind} address {ip(address)} not granted literally"


def test_a_name_resolving_to_one_public_and_one_private_address_is_refused() -> None:
    p = policy("*", "api.example.com")
    verdict = p.decide("api.example.com", 443, [ip("140.82.112.5"), ip("10.0.0.5")])
    assert not verdict.allowed
    assert verdict.reason == "private address 10.0.0.5 not granted literally"
    # Allowed once the private one is named literally too.
    both = policy("api.example.com", "10.0.0.5")
    assert both.decide("api.example.com", 443, [ip("140.82.112.5"), ip("10.0.0.5")]).allowed


def test_network_entries_match_on_every_resolved_address() -> None:
    p = policy("140.82.112.0/20:443")
    assert p.decide("140.82.112.5", 443, [ip("140.82.112.5")]).allowed
    assert p.decide("github.com", 443, [ip("140.82.112.5"), ip("140.82.113.1")]).allowed
    partly = p.decide("github.com", 443, [ip("140.82.112.5"), ip("8.8.8.8")])
    assert not partly.allowed and partly.reason == "not granted"
    assert p.decide("github.com", 80, [ip("140.82.112.5")]).reason == "port 80 not granted"
    # A private network grants only itself: 10.0.0.0/8 is not a key to 192.168.0.0/16.
    private = policy("10.0.0.0/8")
    assert private.decide("10.1.2.3", 5432, [ip("10.1.2.3")]).allowed
    assert not private.decide("192.168.1.1", 5432, [ip("192.168.1.1")]).allowed
    # An IPv6 network never contains an IPv4 address and the other way round.
    assert not policy("::/0").decide("8.8.8.8", 53, [ip("8.8.8.8")]).allowed
    assert not policy("0.0.0.0/0").decide("x", 53, [ip("2606:4700::1111")]).allowed


def test_an_ip_literal_is_not_granted_by_a_name_entry() -> None:
    p = policy("api.github.com")
    assert not p.decide("140.82.112.5", 443, [ip("140.82.112.5")]).allowed


def test_the_policy_is_built_from_the_grant_text_too() -> None:
    p = EgressPolicy.from_entries(["*.pypi.org:443"])
    assert p.destinations == (Destination("suffix", host="pypi.org", port=443),)
    assert p.decide("files.pypi.org", 443, PUBLIC).allowed
    with pytest.raises(EgressEntryError):
        EgressPolicy.from_entries(["https://x.com"])
