"""The memory limit the dashboard and the 90 % alert compare a replica's RSS against."""

from __future__ import annotations

from pathlib import Path

import psutil

from serving.replica_memory import gpu_memory_bytes, memory_limit_bytes, rss_bytes


def test_a_cgroup_limit_is_the_limit(tmp_path: Path) -> None:
    v2 = tmp_path / "memory.max"
    v2.write_text("4294967296\n")
    assert memory_limit_bytes((v2,)) == 4 * 2**30


def test_no_limit_means_the_machines_memory(tmp_path: Path) -> None:
    total = psutil.virtual_memory().total
    v2 = tmp_path / "memory.max"
    v2.write_text("max\n")
    assert memory_limit_bytes((v2,)) == total
    v1 = tmp_path / "memory.limit_in_bytes"
    v1.write_text(str(2**63 - 4096))  # cgroup v1's "unlimited"
    assert memory_limit_bytes((tmp_path / "absent", v1)) == total
    assert memory_limit_bytes((tmp_path / "absent",)) == total


def test_rss_is_this_process_and_no_gpu_means_zero() -> None:
    assert 10 * 2**20 < rss_bytes() < memory_limit_bytes()
    assert gpu_memory_bytes() == 0  # no GPU (or no NVML) on this machine
