"""Host keys and limits (docs/design.md, "Hosts and limits")."""

from __future__ import annotations

import pytest

from dprl.http.target import split_authority
from dprl.limits.hosts import HostLimits, host_key, normalize_host_spec


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
