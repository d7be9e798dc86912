"""Where webhooks may go (issue 17.9): the registry validator's table, and the same rule on resolved addresses.

No traffic: the validator does no DNS, and the resolved-address rule is fed addresses.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.destinations import (
    ALUR_HTTP_PORTS,
    host_problem,
    literal_address,
    resolved_problem,
)
from contracts.records import Agency
from contracts.vocab import AgencyType, Channel

SECRET = "whsec_" + "A" * 32


def webhook(url: str, **flags: bool) -> Agency:
    return Agency(id="lbh-x", type=AgencyType.LEGAL_AID, channel=Channel.WEBHOOK, url=url, secret=SECRET, **flags)


# host as written, and what makes it refused (None: accepted without any flag)
TABLE = [
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]/hook", "link-local"),
    ("https://10.1.2.3/hook", "private"),
    ("https://172.16.0.9/hook", "private"),
    ("https://192.168.1.20/hook", "private"),
    ("https://100.64.0.1/hook", "not globally routable"),
    ("https://[fd00::1]/hook", "private"),
    ("https://[fd12:3456::9]/hook", "private"),
    ("https://[::1]/hook", "loopback"),
    ("http://[::1]:9000/hook", "loopback"),
    ("https://127.0.0.1/hook", "loopback"),
    ("http://127.0.0.1:9000/hook", "loopback"),
    ("https://127.1/hook", "loopback"),  # shorthand the resolver reads as 127.0.0.1
    ("https://2130706433/hook", "loopback"),  # 127.0.0.1 as one number
    ("https://0x7f000001/hook", "loopback"),
    ("https://[::ffff:10.0.0.1]/hook", "private"),  # IPv4-mapped IPv6
    ("https://localhost/hook", "loopback"),
    ("http://localhost:9000/hook", "loopback"),
    ("https://LocalHost./hook", "loopback"),
    ("https://api.localhost/hook", "loopback"),
    ("https://0.0.0.0/hook", "unspecified"),
    ("https://[::]/hook", "unspecified"),
    ("https://224.0.0.1/hook", "multicast"),
    ("https://[ff02::1]/hook", "multicast"),
    ("https://255.255.255.255/hook", "reserved"),
    ("https://203.0.113.7/hook", "private"),  # documentation range
    ("https://lbh.example.org/hook", None),
    ("https://93.184.215.14/hook", None),
    ("https://[2001:4860:4860::8888]/hook", None),
    ("https://localhost.example.org/hook", None),  # not under .localhost: DNS decides, at send time
]


@pytest.mark.parametrize(("url", "kind"), TABLE)
def test_the_validator_refuses_private_destinations_unless_allowed(url: str, kind: str | None) -> None:
    if kind is None:
        assert webhook(url).url == url
        return
    with pytest.raises(ValidationError) as refused:
        webhook(url)
    message = str(refused.value)
    assert f"is {kind}" in message and "lbh-x" in message
    never = kind in ("link-local", "unspecified", "multicast", "reserved")
    if never:
        assert "never sent there" in message
        with pytest.raises(ValidationError, match="never sent there"):
            webhook(url, allow_private_network=True)
    else:
        assert "allow_private_network" in message
        assert webhook(url, allow_private_network=True).allow_private_network


def test_metadata_is_named_for_what_it_is() -> None:
    with pytest.raises(ValidationError, match="cloud metadata"):
        webhook("http://169.254.169.254/", allow_private_network=True, allow_insecure_http=True)


@pytest.mark.parametrize("port", sorted(ALUR_HTTP_PORTS))
def test_alurs_own_ports_on_loopback_are_refused_even_when_allowed(port: int) -> None:
    for host in ("127.0.0.1", "localhost", "[::1]"):
        with pytest.raises(ValidationError, match=f"Alur's own HTTP port {port}"):
            webhook(f"http://{host}:{port}/v1/reports", allow_private_network=True)
    assert webhook(f"https://lbh.example.org:{port}/hook").url  # a public host may use any port


def test_plain_http_is_still_refused_off_loopback() -> None:
    with pytest.raises(ValidationError, match="plain http"):
        webhook("http://10.0.0.5/hook", allow_private_network=True)
    assert webhook("http://10.0.0.5/hook", allow_private_network=True, allow_insecure_http=True).url


def test_a_name_resolving_to_loopback_or_private_is_refused_on_its_addresses() -> None:
    local = socket.gethostname()
    assert host_problem(local, 443, allow_private=False) is None or local == "localhost", "names pass the validator"
    assert resolved_problem(local, ["127.0.0.1"], 443, allow_private=False) == (
        f"host {local} resolves to 127.0.0.1, which is loopback: "
        "refused unless the registry entry sets allow_private_network explicitly"
    )
    assert resolved_problem(local, ["127.0.0.1"], 443, allow_private=True) is None
    # Every address counts: one private address among public ones refuses the name (DNS rebinding).
    mixed = ["93.184.215.14", "2001:4860:4860::8888", "10.0.0.7"]
    assert "10.0.0.7, which is private" in str(resolved_problem("hook.example", mixed, 443, allow_private=False))
    assert resolved_problem("hook.example", mixed[:2], 443, allow_private=False) is None
    assert "link-local" in str(resolved_problem("hook.example", ["169.254.169.254"], 443, allow_private=True))
    assert "Alur's own" in str(resolved_problem("vm", ["127.0.0.1"], 8083, allow_private=True))
    assert "Alur's own" in str(resolved_problem("vm", ["127.0.0.1"], 9999, allow_private=True,
                                                own_ports=frozenset({9999})))
    assert "no address" in str(resolved_problem("hook.example", [], 443, allow_private=True))
    assert "fe80::1" in str(resolved_problem("hook.example", ["fe80::1%2"], 443, allow_private=True))


@given(st.ip_addresses())
def test_the_validator_and_the_sender_agree_on_every_address(address: object) -> None:
    text = str(address)
    host = f"[{text}]" if ":" in text else text
    for allow in (False, True):
        statically = host_problem(host, 443, allow_private=allow)
        resolved = resolved_problem("hook.example", [text], 443, allow_private=allow)
        assert (statically is None) == (resolved is None), (text, statically, resolved)
    assert literal_address(host) is not None
