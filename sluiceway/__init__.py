"""Sluiceway: optimized ONNX artifacts served by Ray Serve on GPU and CPU pools."""

from serving.build import build_version

__version__ = build_version()

__all__ = ["__version__"]
