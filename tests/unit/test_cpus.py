"""``--workers auto``: the CPUs this process may use (affinity, cgroup v1/v2 quota)."""

from __future__ import annotations

import os
from pathlib import Path

from dprl.workers.cpus import cgroup_quota, usable_cpus


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
