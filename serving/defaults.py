"""A serving config derived from one `sluiceway optimize` output directory.

The embedded default: one model named after the directory, one variant, a GPU pool (the
fp16 artifact on CUDA) only where ONNX Runtime can use CUDA, and a CPU pool always: the
distilled ``student-int8`` artifact when it was built and passed its gates (it is the one
built for the CPU latency target), else ``int8``. A directory without them (``sluiceway
import`` of an fp32 model without ``--variants``) serves ``fp32`` on either pool.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from optimize.errors import ArtifactError
from optimize.manifest import artifact_digest, read_manifest
from serving.config import ServingConfig, parse_config
from serving.errors import ConfigError

logger = logging.getLogger(__name__)
POOL_ARTIFACTS = {"gpu": "fp16", "cpu": "int8"}
FALLBACK = "fp32"  # what either pool serves when its own artifact was not built
STUDENT = "student-int8"
# One machine: CPU inference shares its cores with the HTTP proxy and the ingress, which
# must stay prompt (routing, shedding, health checks) while inference keeps every core busy.
LOCAL_NICE = 19  # Ray's workers (proxy, ingress) run at 15
QUEUE_ROWS = 64


def pool_artifact(directory: Path, pool: str) -> str:
    """The artifact ``pool`` serves from ``directory``: its own (for the CPU pool an
    accepted student first), else ``fp32`` when only that was built."""
    own = cpu_artifact(directory) if pool == "cpu" else POOL_ARTIFACTS[pool]
    built = (directory / own / "manifest.json").is_file()
    if not built and (directory / FALLBACK / "manifest.json").is_file():
        return FALLBACK
    return own


def cpu_artifact(directory: Path) -> str:
    """``student-int8`` when present and accepted by its gates, else ``int8``."""
    student = directory / STUDENT
    if (student / "manifest.json").is_file():
        try:
            if read_manifest(student).accepted:
                return STUDENT
            logger.warning("%s failed its gates: the CPU pool serves int8", student)
        except ArtifactError as exc:
            logger.warning("%s is unreadable (%s): the CPU pool serves int8", student, exc)
    return POOL_ARTIFACTS["cpu"]


def cuda_usable() -> bool:
    """True when ONNX Runtime's CUDA provider is installed and a GPU is visible."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    return gpu_visible(os.environ.get("CUDA_VISIBLE_DEVICES"), Path("/dev/nvidia0").exists())


def gpu_visible(visible_devices: str | None, device_file: bool) -> bool:
    """Whether CUDA would see a GPU: with ``CUDA_VISIBLE_DEVICES`` set, only when its first
    entry names a device (CUDA stops at the first invalid one: ``-1`` or an empty value
    hides them all); without it, when the driver's device file exists."""
    if visible_devices is None:
        return device_file
    first = visible_devices.split(",")[0].strip()
    return bool(first) and not first.startswith("-")


def config_for_artifacts(
    directory: Path, *, gpu: bool, port: int = 8000, cores: int | None = None
) -> ServingConfig:
    """One model from ``directory`` (its name), served on GPU (if ``gpu``) then CPU."""
    pools = ["gpu", "cpu"] if gpu else ["cpu"]
    artifacts = {}
    for pool in pools:
        path = directory / pool_artifact(directory, pool)
        if not (path / "manifest.json").is_file():
            raise ConfigError(
                f"{path} is not an artifact; build it with "
                f"`sluiceway optimize --output {directory}`"
            )
        artifacts[pool] = {"uri": str(path.resolve()), "sha256": artifact_digest(path)}
    cores = cores or max(1, os.cpu_count() or 2)
    name = directory.resolve().name.lower().replace("_", "-").replace(".", "-")
    cpu_pool = {
        "num_cpus": 1,
        # One thread per model call, as many calls at once as cores: the CPU time a clip
        # costs is least on one thread, and no call waits for a core another holds.
        "threads": 1,
        "max_ongoing_requests": cores,
        "nice": LOCAL_NICE,
        # Room to queue; the SLO decides how much of it is used before shedding.
        "max_queued_requests": QUEUE_ROWS,
    }
    gpu_pool = {
        "device": "cuda",
        "num_gpus": 1,
        "max_ongoing_requests": 2,
        "batching": {"max_batch_size": 16},
        "max_queued_requests": QUEUE_ROWS,
    }
    return parse_config(
        {
            "models": {
                name: {
                    "variants": {"default": {"weight": 100, "artifacts": artifacts}},
                    "routing": {"pools": pools},
                }
            },
            "pools": {"gpu": gpu_pool, "cpu": cpu_pool} if gpu else {"cpu": cpu_pool},
            # Two, as in the chart: one lost (or replaced on redeploy) is not an outage.
            "ingress": {"replicas": {"min": 2, "max": 2}},
            "http": {"host": "127.0.0.1", "port": port},
        },
        origin=f"default config for {directory}",
    )
