# Serving image for the chart's default `image.repository` (ghcr.io/sluiceway/serving):
# Ray Serve + onnxruntime-gpu, no torch. Build from the repository root:
#   docker build -t ghcr.io/sluiceway/serving:0.1.0 .
#
# RAY_VERSION must equal `rayVersion` in charts/sluiceway/values.yaml (KubeRay talks to the
# cluster as that version) and the `ray` in the dev venv; tests/charts/test_dockerfile.py
# checks both.
ARG RAY_VERSION=2.60.0

# Official Ray tags read {ray version}-py{python}-{platform}. py311: the Python we develop and
# test on (requires-python >= 3.11). cu130 (nvidia/cuda 13.0 base): the PyPI onnxruntime-gpu
# wheel we install (1.31) is built for CUDA 13 + cuDNN 9. An explicit -cuXX rather than the
# `-gpu` alias, which moves: a CUDA bump is a reviewed change here. The same image runs the
# CPU pools (the CPU execution provider ships in the same wheel).
# Not built here (no Docker engine on the development machines): check the tag exists before
# publishing, and that `CUDAExecutionProvider` loads on a GPU node.
FROM rayproject/ray:${RAY_VERSION}-py311-cu130

ARG RAY_VERSION
ENV RAY_USAGE_STATS_ENABLED=0 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SLUICEWAY_ARTIFACT_CACHE=/var/cache/sluiceway/artifacts

# The only step that needs root: the artifact cache and the source directory (the in-tree
# build writes build/ there), owned by the image's `ray` user (uid 1000, gid 100 `users`).
USER root
RUN mkdir -p /var/cache/sluiceway/artifacts /home/ray/sluiceway \
    && chown -R 1000:100 /var/cache/sluiceway /home/ray/sluiceway

# Numeric, non-root from here on: Kubernetes can only check `runAsNonRoot` on a numeric UID.
USER 1000:100
WORKDIR /home/ray/sluiceway

# What `pip install` needs and nothing more: serving imports optimize/manifest.py (stdlib +
# pydantic) and optimize/audio.py (numpy, soundfile, scipy: in the serving extra), and
# setuptools packages all four packages (pyproject's packages.find).
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 optimize/ optimize/
COPY --chown=1000:100 serving/ serving/
COPY --chown=1000:100 sluiceway/ sluiceway/
COPY --chown=1000:100 deploy/ deploy/

# Only the `serving` extra: never `optimize` (torch, transformers). Pinning ray to the base
# image's version keeps pip from swapping Ray under KubeRay's `rayVersion`.
RUN pip install --no-cache-dir ".[serving]" "ray[serve]==${RAY_VERSION}"

WORKDIR /home/ray
