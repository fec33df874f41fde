"""Sluiceway: optimized ONNX artifacts served by Ray Serve on GPU and CPU pools."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sluiceway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
