"""dprl: an HTTP(S) forward proxy capping concurrent upstream connections per host.

Packages, lowest first: ``http`` (sans-IO HTTP/1.x), ``limits`` (host keys, the Limiter
interface, the in-memory limiter), ``net`` (sockets: endpoint, dialling, the pipe),
``redis`` (the fleet-wide limiter), ``proxy`` (sessions, exchanges, tunnels, the
server); then ``config``, ``library`` and ``cli``.
"""

from .config import Config
from .errors import LimiterUnavailable, LimitExceeded
from .library import DistributedProxyRateLimiter, ProxyRateLimiter
from .limits.hosts import normalize_host_spec
from .limits.limiter import Limiter, Slot
from .limits.memory import MemoryLimiter
from .version import __version__

__all__ = [
    "Config",
    "DistributedProxyRateLimiter",
    "LimitExceeded",
    "Limiter",
    "LimiterUnavailable",
    "MemoryLimiter",
    "ProxyRateLimiter",
    "Slot",
    "__version__",
    "normalize_host_spec",
]
