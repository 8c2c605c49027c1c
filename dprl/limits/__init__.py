"""What is counted, against what: host keys, limits, the Limiter interface, the in-memory limiter."""

from .hosts import HostKey, HostLimits, host_key, normalize_host_spec
from .limiter import Limiter, Slot
from .memory import MemoryLimiter

__all__ = ["HostKey", "HostLimits", "Limiter", "MemoryLimiter", "Slot", "host_key", "normalize_host_spec"]
