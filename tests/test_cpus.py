"""``--workers auto``: the CPUs this process may use (affinity, cgroup v1/v2 quota)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dprl.workers.cpus import cgroup_quota, usable_cpus

from .proxy_process import ProxyProcess


def _proc(tmp_path: Path, cgroup: str, mountinfo: str) -> str:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo.replace("ROOT", str(tmp_path / "cg")))
    return str(proc)


def test_cgroup_v2_quota_is_read_along_the_path_and_the_tightest_wins(tmp_path):
    group = tmp_path / "cg" / "kubepods" / "pod1"
    group.mkdir(parents=True)
    (tmp_path / "cg" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "cg" / "kubepods" / "cpu.max").write_text("150000 100000\n")
    (group / "cpu.max").write_text("300000 100000\n")
    proc = _proc(tmp_path, "0::/kubepods/pod1\n", "30 23 0:26 / ROOT rw - cgroup2 cgroup2 rw\n")
    quota = cgroup_quota(proc)
    assert quota is not None and quota.cpus == 1.5
    assert quota.where.endswith("kubepods/cpu.max")


def test_cgroup_v2_without_a_limit_is_no_quota(tmp_path):
    (tmp_path / "cg").mkdir()
    (tmp_path / "cg" / "cpu.max").write_text("max 100000\n")
    proc = _proc(tmp_path, "0::/\n", "30 23 0:26 / ROOT rw - cgroup2 cgroup2 rw\n")
    assert cgroup_quota(proc) is None


def test_cgroup_v1_cfs_quota(tmp_path):
    group = tmp_path / "cg" / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("50000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    proc = _proc(
        tmp_path,
        "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
        "32 31 0:29 / ROOT rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /nonexistent rw,relatime - cgroup cgroup rw,memory\n",
    )
    quota = cgroup_quota(proc)
    assert quota is not None and quota.cpus == 0.5


def test_cgroup_v1_quota_of_minus_one_is_none(tmp_path):
    (tmp_path / "cg").mkdir()
    (tmp_path / "cg" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cg" / "cpu.cfs_period_us").write_text("100000\n")
    proc = _proc(tmp_path, "4:cpu:/\n", "32 31 0:29 / ROOT rw - cgroup cgroup rw,cpu\n")
    assert cgroup_quota(proc) is None


def test_a_quota_caps_the_affinity_count_rounded_up(tmp_path):
    (tmp_path / "cg").mkdir()
    (tmp_path / "cg" / "cpu.max").write_text("50000 100000\n")
    proc = _proc(tmp_path, "0::/\n", "30 23 0:26 / ROOT rw - cgroup2 cgroup2 rw\n")
    count = usable_cpus(proc)
    if len(os.sched_getaffinity(0)) > 1:
        assert count.count == 1
        assert "cgroup CPU quota 0.5" in count.source
    else:
        assert count.count == 1


def test_without_cgroup_files_the_affinity_mask_counts(tmp_path):
    count = usable_cpus(str(tmp_path / "missing"))
    assert count.count == len(os.sched_getaffinity(0))
    assert "affinity" in count.source


def test_workers_auto_on_one_allowed_cpu_starts_one_process():
    """Pinned to one CPU (as ``taskset -c 0`` does): os.cpu_count() still says every CPU,
    dprl starts one process and says where the number came from."""
    proc = ProxyProcess("--workers", "auto", preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    try:
        proc.wait_line(r"--workers auto: 1 worker\(s\), from 1 CPU\(s\) in this process's affinity mask")
        assert not proc.matching("supervisor")
    finally:
        assert proc.stop() == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_workers_auto_on_two_allowed_cpus_starts_a_supervisor():
    proc = ProxyProcess("--workers", "auto", preexec_fn=lambda: os.sched_setaffinity(0, {0, 1}))
    try:
        proc.wait_line(r"--workers auto: 2 worker\(s\), from 2 CPU\(s\)")
        proc.wait_line(r"dprl supervisor listening on .* with 2 workers")
    finally:
        assert proc.stop() == 0
