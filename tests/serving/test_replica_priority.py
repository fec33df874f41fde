"""A pool's ``nice``: its inference threads, and ONNX Runtime's own, run at that priority;
the rest of the process (Ray's threads, the event loop) keeps its own."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from optimize.manifest import artifact_digest
from serving.config import ArtifactRef, PoolConfig
from serving.replica import inference_executor, load_variant


def nice_of(thread: int) -> int:
    """A thread's nice value, from /proc (field 19 of its stat line)."""
    stat = Path(f"/proc/self/task/{thread}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def threads() -> set[int]:
    return {int(t.name) for t in Path("/proc/self/task").iterdir()}


def test_sessions_and_runs_happen_at_the_pools_priority(tiny_artifacts: Path) -> None:
    here = nice_of(threading.get_native_id())
    config = PoolConfig(threads=2, nice=min(19, here + 7), max_ongoing_requests=1)
    ref = ArtifactRef(
        uri=str(tiny_artifacts / "int8"),
        sha256=artifact_digest(tiny_artifacts / "int8"),
    )
    executor = inference_executor("cpu", config)
    try:
        before = threads()
        variant = executor.submit(load_variant, ref, config).result()
        started = threads() - before
        # The executor's thread and ONNX Runtime's intra-op thread (threads=2: the caller
        # is the other one).
        assert len(started) >= 2, started
        assert {nice_of(t) for t in started} == {config.nice}
        feeds = {"input_values": np.zeros((1, 16_000), dtype=np.float32)}
        outputs = executor.submit(variant.session.run, None, feeds).result()
        assert outputs[0].shape[0] == 1
        assert nice_of(threading.get_native_id()) == here  # the caller is untouched
    finally:
        executor.shutdown()


def test_nice_zero_changes_nothing(tiny_artifacts: Path) -> None:
    here = nice_of(threading.get_native_id())
    executor = inference_executor("cpu", PoolConfig(nice=0))
    try:
        assert executor.submit(lambda: nice_of(threading.get_native_id())).result() == here
    finally:
        executor.shutdown()
