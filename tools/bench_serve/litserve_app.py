"""The same artifact behind LitServe, as a team would serve it instead (bench only).

``python -m tools.bench_serve.litserve_app --artifact DIR --port P [--threads N]``: one LitServe
worker on the CPU running the artifact's ``model.onnx`` on ONNX Runtime with the thread count
ONNX Runtime picks by default (one per core, ``--threads 0``), as a first user would run it;
``POST /predict`` takes ``{"wav": <base64 WAV>}`` (LitServe's
JSON input path) and answers the label and scores, as Sluiceway's ``:classify`` does. Its
defaults otherwise (no batching, one API server), as a first user would run it.
"""

# No ``from __future__ import annotations``: LitServe reads ``decode_request``'s annotation
# at run time to build its FastAPI route.
import argparse
import base64
import io
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort
import soundfile

from optimize.audio import resample
from optimize.manifest import MODEL_FILE, InputSpec, read_manifest


class AudioClassifier(ls.LitAPI):  # type: ignore[misc]  # LitServe is untyped
    """A WAV in, label and scores out."""

    def __init__(self, artifact: Path, threads: int) -> None:
        super().__init__()
        self._artifact = artifact
        self._threads = threads

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(self._artifact / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        spec = read_manifest(self._artifact).input
        assert isinstance(spec, InputSpec), "the LitServe baseline serves audio classifiers"
        self._rate, self._labels = spec.sample_rate, spec.labels
        self._input, self._output = spec.input_name, spec.output_name

    def decode_request(self, request: dict[str, Any]) -> np.ndarray:
        data, rate = soundfile.read(
            io.BytesIO(base64.b64decode(request["wav"])), dtype="float32", always_2d=True
        )
        return resample(data.mean(axis=1).astype(np.float32), int(rate), self._rate)

    def predict(self, wave: np.ndarray) -> np.ndarray:
        logits = self._session.run([self._output], {self._input: wave[None, :]})[0]
        return np.asarray(logits[0], dtype=np.float64)

    def encode_response(self, logits: np.ndarray) -> dict[str, Any]:
        scores = np.exp(logits - logits.max())
        scores /= scores.sum()
        return {
            "label": self._labels[int(scores.argmax())],
            "scores": {label: float(s) for label, s in zip(self._labels, scores, strict=True)},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="0: ONNX Runtime's default")
    args = parser.parse_args()
    server = ls.LitServer(AudioClassifier(args.artifact, args.threads), accelerator="cpu")
    server.run(port=args.port, host="127.0.0.1", generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
