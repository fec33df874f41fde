from __future__ import annotations

from pathlib import Path

import pytest

from optimize.errors import ModelLoadError
from optimize.runtime import open_session


def test_a_corrupt_or_missing_onnx_file_is_a_clear_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"not an onnx model")
    with pytest.raises(ModelLoadError, match=r"cannot load .*model\.onnx.*rebuild it"):
        open_session(corrupt, threads=1)
    with pytest.raises(ModelLoadError, match=r"missing\.onnx"):
        open_session(tmp_path / "missing.onnx", threads=1)
