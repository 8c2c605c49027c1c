"""dprl: an HTTP(S) forward proxy capping concurrent upstream connections per host."""

from .config import Config
from .errors import LimiterUnavailable, LimitExceeded
from .hosts import normalize_host_spec
from .limiter import Limiter, Slot
from .memory_limiter import MemoryLimiter
from .proxy import DistributedProxyRateLimiter, ProxyRateLimiter

__all__ = [
    "Config",
    "DistributedProxyRateLimiter",
    "LimitExceeded",
    "Limiter",
    "LimiterUnavailable",
    "MemoryLimiter",
    "ProxyRateLimiter",
    "Slot",
    "normalize_host_spec",
]
__version__ = "0.1.0"
