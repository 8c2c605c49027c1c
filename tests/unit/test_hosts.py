"""Host keys and limits (docs/design.md, "Hosts and limits")."""

from __future__ import annotations

import pytest

from dprl.http.target import split_authority
from dprl.limits.hosts import HostLimits, SharedCap, host_key, normalize_host_spec
from dprl.limits.rates import parse_rate


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("api.example.com", "api.example.com"),
        ("API.Example.COM.", "api.example.com"),
        ("api.example.com:443", "api.example.com"),
        ("api.example.com:80", "api.example.com"),
        ("api.example.com:8443", "api.example.com:8443"),
        ("[::1]:9000", "[::1]:9000"),
        ("[0:0:0:0:0:0:0:1]:9000", "[::1]:9000"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("127.0.0.1:443", "127.0.0.1"),
        ("_svc.example.com", "_svc.example.com"),
    ],
)
def test_normalisation(spec, key):
    assert normalize_host_spec(spec) == key
    assert normalize_host_spec(key) == key


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "bad host",
        "a..b",
        "[::1",
        "[::zz]:80",
        "host:0",
        "host:70000",
        "host:-1",
        "-lead.example",
        "é.example",
        "::%]",  # found by hypothesis: a zone id swallowed the closing bracket
        "[fe80::1%eth0]:80",
    ],
)
def test_invalid_hosts_are_refused(spec):
    with pytest.raises(ValueError):
        normalize_host_spec(spec)


def test_authority_form_requires_a_port():
    assert split_authority("Example.com:443", None) == ("example.com", 443)
    with pytest.raises(ValueError):
        split_authority("example.com", None)
    with pytest.raises(ValueError):
        split_authority("::1:443", None)  # IPv6 needs brackets
    assert host_key("example.com", 443) == "example.com"
    assert host_key("example.com", 8080) == "example.com:8080"


def test_limits_follow_reference_semantics():
    limits = HostLimits(10, {"a.example.com": 5})
    assert limits.limit_for("a.example.com") == 5
    assert limits.limit_for("b.example.com") == 10
    limits.set("A.EXAMPLE.COM:443", 0)  # 0 removes the override
    assert limits.limit_for("a.example.com") == 10
    limits.set("b.example.com", -3)
    assert limits.overrides() == {}
    limits.replace({"c.example.com:8443": 2})
    assert limits.overrides() == {"c.example.com:8443": 2}
    with pytest.raises(ValueError):
        HostLimits(-1)


def test_the_policy_cache_follows_every_kind_of_change() -> None:
    """policy_for is worked out once per change: each way of changing limits shows at once."""
    limits = HostLimits(default=3)
    key = "api.example.com"
    assert limits.policy_for(key).limit == 3
    limits.set(key, 5)
    assert limits.limit_for(key) == 5
    limits.set_stored({key: 7}, None)
    assert limits.limit_for(key) == 7
    limits.set_stored({}, 9)
    limits.remove(key)
    assert limits.limit_for(key) == 9  # the stored default
    limits.set_stored({}, None)
    limits.set_default(2)
    assert limits.limit_for(key) == 2
    limits.replace({"*.example.com": 4})
    assert limits.limit_for(key) == 4
    assert limits.rate_for(key) is None
    limits.default_rate = parse_rate("10/s")
    assert limits.rates_for(key) == ((key, parse_rate("10/s")),)
    limits.set_rate(key, parse_rate("2/s"))
    assert limits.rate_for(key) == parse_rate("2/s")
    limits.set_stored_rates({key: parse_rate("1/s")}, None)
    assert limits.rate_for(key) == parse_rate("1/s")
    cap = SharedCap("api", 6, frozenset({key}), frozenset(), parse_rate("5/s"))
    limits.replace_shared([cap])
    policy = limits.policy_for(key)
    assert (policy.cap, policy.line) == (cap, "shared:api")
    assert policy.rates == ((key, parse_rate("1/s")), ("shared:api", parse_rate("5/s")))


def test_the_source_of_a_limit_is_named_for_operators() -> None:
    limits = HostLimits(5, {"api.example.com": 9, "*.cdn.example": 2})
    limits.replace_shared([SharedCap("media", 4, frozenset(), frozenset({"*.cdn.example"}))])
    assert limits.limit_source("api.example.com") == "api.example.com"
    assert limits.limit_source("a.cdn.example") == "*.cdn.example, shared:media"
    assert limits.limit_source("other.example") == "default"
    limits.set_stored({"api.example.com": 3, "*.example.com": 7}, None)
    assert limits.limit_source("api.example.com") == "fleet api.example.com"
    assert limits.limit_source("x.example.com") == "fleet *.example.com"
