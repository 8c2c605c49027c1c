"""Where Redis is and how to talk to it, from a URL (the forms redis-py and the CLI accept).

``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS; ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname`` as query
options), ``unix://[[user]:password@]/path[?db=N]``. Unknown options are refused, so a
typo never silently weakens TLS.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..redact import masked_url

SCHEMES = ("redis", "rediss", "unix")
_OPTIONS = {
    "db",
    "password",
    "username",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""  # a Unix socket path; host and port are unused then
    username: str = ""
    password: str = ""
    db: int = 0
    tls: bool = False
    ca_certs: str = ""
    certfile: str = ""
    keyfile: str = ""
    cert_reqs: str = "required"  # none | optional | required
    check_hostname: bool = True

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """Parse a Redis URL; ValueError (one line) if it is not one."""
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"must start with redis://, rediss:// or unix://, got {masked_url(url)!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = set(query) - _OPTIONS
        if unknown:
            raise ValueError(f"unknown Redis URL option(s): {', '.join(sorted(unknown))}")
        username = unquote(parts.username or "") or query.get("username", "")
        password = unquote(parts.password or "") or query.get("password", "")
        db_text = query.get("db") or (parts.path.lstrip("/") if parts.scheme != "unix" else "") or "0"
        if not db_text.isdigit():
            raise ValueError(f"Redis database must be a number, got {db_text!r}")
        fields: dict[str, object] = {"username": username, "password": password, "db": int(db_text)}
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"unix:// URL without a socket path: {masked_url(url)!r}")
            fields["path"] = parts.path
        else:
            try:
                port = parts.port or 6379
            except ValueError:
                raise ValueError(f"invalid port in Redis URL {masked_url(url)!r}") from None
            fields.update(host=parts.hostname or "127.0.0.1", port=port)
        if parts.scheme == "rediss":
            reqs = query.get("ssl_cert_reqs", "required").lower()
            if reqs not in ("none", "optional", "required"):
                raise ValueError(f"ssl_cert_reqs must be none, optional or required, got {reqs!r}")
            check = query.get("ssl_check_hostname", "true").lower()
            if check not in _TRUE + _FALSE:
                raise ValueError(f"ssl_check_hostname must be true or false, got {check!r}")
            fields.update(
                tls=True,
                ca_certs=query.get("ssl_ca_certs", ""),
                certfile=query.get("ssl_certfile", ""),
                keyfile=query.get("ssl_keyfile", ""),
                cert_reqs=reqs,
                check_hostname=check in _TRUE and reqs != "none",
            )
        return cls(**fields)  # type: ignore[arg-type]  # each field checked above, by name

    def at(self, host: str, port: int) -> RedisAddress:
        """The same credentials, database and TLS, at another server."""
        return replace(self, host=host, port=port)

    def __str__(self) -> str:
        """The address for logs and pages: its password masked."""
        auth = _userinfo(self.username, self.password)
        if self.path:
            return masked_url(f"unix://{auth}{self.path}?db={self.db}")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return masked_url(f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{self.port}/{self.db}")


KINDS = ("single", "sentinel", "cluster")


@dataclass(frozen=True, slots=True)
class RedisDeployment:
    """What a Redis URL names: one server, a Sentinel-managed master, or a Cluster.

    ``servers`` are the server itself (single), the sentinels (sentinel) or the seed
    nodes (cluster). ``template`` carries what every data connection uses: credentials,
    database, TLS. For Sentinel, the master is found by asking the sentinels for
    ``service`` at every connection; for Cluster, the slot map comes from any seed.

    ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`` and
    ``redis+cluster://[[user]:password@]host:port[,host:port...]``; ``rediss+...`` for
    TLS; the query options of ``redis://`` apply.
    """

    kind: str
    servers: tuple[RedisAddress, ...]
    template: RedisAddress
    service: str = ""

    @classmethod
    def from_url(cls, url: str) -> RedisDeployment:
        scheme, sep, rest = url.partition("://")
        base, _, kind = scheme.partition("+")
        if not sep or base not in SCHEMES or kind not in ("", "sentinel", "cluster") or (kind and base == "unix"):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://, "
                f"got {masked_url(url)!r}"
            )
        if not kind:
            address = RedisAddress.from_url(url)
            return cls("single", (address,), address)
        location, query_sep, query = rest.partition("?")
        userinfo, at, hosts_and_path = location.rpartition("@") if "@" in location else ("", "", location)
        hosts, _, path = hosts_and_path.partition("/")
        db = "0"
        service = ""
        if kind == "sentinel":
            service, _, db = path.partition("/")
            if not service:
                shown = masked_url(url)
                raise ValueError(f"a redis+sentinel:// URL names the service: .../service_name[/db], got {shown!r}")
            db = db or "0"
        elif path.strip("/"):
            raise ValueError(f"a redis+cluster:// URL has no database or path, got {masked_url(url)!r}")
        servers = []
        for item in filter(None, hosts.split(",")):
            servers.append(RedisAddress.from_url(f"{base}://{item}"))
        if not servers:
            raise ValueError(f"no host:port in {masked_url(url)!r}")
        auth = f"{userinfo}{at}" if at else ""
        template = RedisAddress.from_url(f"{base}://{auth}{servers[0].host}:{servers[0].port}/{db}{query_sep}{query}")
        servers = [replace(template, host=s.host, port=s.port, db=0, password="", username="") for s in servers]
        return cls(kind, tuple(servers), template, service)

    def __str__(self) -> str:
        if self.kind == "single":
            return str(self.template)
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.servers)
        scheme = ("rediss+" if self.template.tls else "redis+") + self.kind
        auth = _userinfo(self.template.username, self.template.password)
        return masked_url(f"{scheme}://{auth}{hosts}" + (f"/{self.service}/{self.template.db}" if self.service else ""))


def _userinfo(username: str, password: str) -> str:
    """``user:password@`` as in a URL (rendered only through masked_url)."""
    if password:
        return f"{quote(username, safe='')}:{quote(password, safe='')}@"
    return f"{quote(username, safe='')}@" if username else ""
