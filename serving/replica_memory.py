"""What a replica process holds in memory, and what it may hold.

The limit is the container's cgroup memory limit (what the kubelet enforces: Kubernetes
writes ``resources.limits.memory`` there), or the machine's memory where none is set, so
the dashboard and the "memory over 90 % of its limit" alert work the same in a pod and on
a laptop. GPU memory comes from NVML (package ``nvidia-ml-py``) for this process; a
replica on a CPU pool holds none.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

# cgroup v2, then v1. v1 reports "no limit" as a huge number (about 2**63).
_CGROUP_LIMIT_FILES = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def memory_limit_bytes(limit_files: tuple[Path, ...] = _CGROUP_LIMIT_FILES) -> int:
    """The cgroup memory limit of this process, or the machine's total memory."""
    total = int(psutil.virtual_memory().total)
    for path in limit_files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(int(text), total)
        return total  # "max": no limit set
    return total


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default)."""
    return int(psutil.Process(pid or os.getpid()).memory_info().rss)


def gpu_memory_bytes(pid: int | None = None) -> int:
    """GPU memory this process holds on any GPU; 0 where NVML is missing or sees none."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return 0
    pid = pid or os.getpid()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        logger.warning("NVML unavailable, GPU memory reported as 0: %s", exc)
        return 0
    try:
        used = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == pid and process.usedGpuMemory is not None:
                    used += int(process.usedGpuMemory)
        return used
    finally:
        pynvml.nvmlShutdown()
