"""Where Redis is and how to talk to it, from a URL (the forms redis-py and the CLI accept).

``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS; ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname`` as query
options), ``unix://[[user]:password@]/path[?db=N]``. Unknown options are refused, so a
typo never silently weakens TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

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
            raise ValueError(f"must start with redis://, rediss:// or unix://, got {url!r}")
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
                raise ValueError(f"unix:// URL without a socket path: {url!r}")
            fields["path"] = parts.path
        else:
            try:
                port = parts.port or 6379
            except ValueError:
                raise ValueError(f"invalid port in Redis URL {url!r}") from None
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
        return cls(**fields)  # type: ignore[arg-type]

    def __str__(self) -> str:
        """The address for logs: no password."""
        if self.path:
            return f"unix://{self.path}?db={self.db}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


def masked_url(url: str) -> str:
    """The URL with its password replaced, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        auth, _, host = rest.rpartition("@")
        user = auth.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url
