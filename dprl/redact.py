"""Secrets kept out of everything dprl shows: logs, errors, pages, metrics, ``repr``.

Every place that renders a URL that may carry credentials (Redis, Sentinel, Cluster,
parent proxies) renders it through ``masked_url``, the parsed addresses' ``__str__``
included. A password is replaced by ``***``, never shortened or hashed: a reader learns
that one was given, and nothing of it.
"""

from __future__ import annotations

import re

MASK = "***"
# query options that carry a secret (Redis URLs accept password=, parent proxies may too)
_SECRET_OPTION = re.compile(r"(?i)([?&](?:password|pass|token|secret)=)[^&#]*")


def masked_url(url: str) -> str:
    """``url`` with the password of its userinfo and secret query options replaced by ``***``.

    Works on URLs that do not parse (a bad flag is shown in its error) and on the
    multi-host forms (``redis+sentinel://:pw@h1:26379,h2:26379/svc``).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    location, query_sep, query = rest.partition("?")
    if "@" in location:
        auth, _, hosts = location.rpartition("@")
        user, colon, _ = auth.partition(":")
        location = f"{user}:{MASK}@{hosts}" if colon else f"{auth}@{hosts}"
    if query_sep:
        query = _SECRET_OPTION.sub(lambda m: m[1] + MASK, "?" + query)[1:]
    return f"{scheme}{sep}{location}{query_sep}{query}"
