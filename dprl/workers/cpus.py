"""How many CPUs this process may use: ``--workers auto``.

``os.cpu_count()`` counts the machine's CPUs, not the ones this process may run on. Two
things make the usable number smaller: the affinity mask (``taskset``, cpusets) and a
cgroup CPU bandwidth quota (a container's ``--cpus``: cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``), the smallest along the cgroup's path. As Go
1.25 does for GOMAXPROCS: the affinity count, capped by the quota rounded up, at least 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class CpuCount:
    count: int
    source: str  # where the number came from, for the start line


def usable_cpus(proc: str = "/proc/self") -> CpuCount:
    """The CPUs this process may use, and why that many."""
    try:
        affinity = len(os.sched_getaffinity(0))
        source = f"{affinity} CPU(s) in this process's affinity mask"
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
        source = f"{affinity} CPU(s) on this machine"
    quota = cgroup_quota(proc)
    if quota is not None and math.ceil(quota.cpus) < affinity:
        return CpuCount(max(1, math.ceil(quota.cpus)), f"cgroup CPU quota {quota.cpus:g} ({quota.where}), {source}")
    return CpuCount(affinity, source)


@dataclass(frozen=True, slots=True)
class Quota:
    cpus: float  # quota / period
    where: str  # the file that set it


def cgroup_quota(proc: str = "/proc/self") -> Quota | None:
    """The tightest CPU bandwidth quota on this process's cgroup path (None: no quota)."""
    try:
        memberships = Path(proc, "cgroup").read_text().splitlines()
        mounts = Path(proc, "mountinfo").read_text().splitlines()
    except OSError:
        return None
    found: list[Quota] = []
    for line in mounts:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        mount_root, mount_point = fields[3], fields[4]
        fstype, options = fields[dash + 1], fields[dash + 3].split(",") if len(fields) > dash + 3 else []
        if fstype == "cgroup2":
            path = _member_path(memberships, lambda controllers, hierarchy: hierarchy == "0")
            reader = _read_v2
        elif fstype == "cgroup" and "cpu" in options:
            path = _member_path(memberships, lambda controllers, hierarchy: "cpu" in controllers.split(","))
            reader = _read_v1
        else:
            continue
        if path is None:
            continue
        relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
        directory = Path(mount_point, relative).resolve()
        top = Path(mount_point).resolve()
        while True:
            quota = reader(directory)
            if quota is not None:
                found.append(quota)
            if directory == top or top not in directory.parents:
                break
            directory = directory.parent
    return min(found, key=lambda q: q.cpus, default=None)


def _member_path(memberships: list[str], match: Callable[[str, str], bool]) -> str | None:
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if match(controllers, hierarchy):
            return path or "/"
    return None


def _read_v2(directory: Path) -> Quota | None:
    try:
        limit, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
    except OSError:
        return None
    if limit == "max" or not limit.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return Quota(int(limit) / int(period), str(directory / "cpu.max"))


def _read_v1(directory: Path) -> Quota | None:
    try:
        limit = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if limit <= 0 or period <= 0:
        return None
    return Quota(limit / period, str(directory / "cpu.cfs_quota_us"))
