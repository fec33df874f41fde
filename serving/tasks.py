"""What a model does, as every part of serving asks it: one class per task kind.

An artifact's manifest says what its model takes (``optimize.manifest``: audio, text or any
tensors); ``task_of`` turns that into a :class:`Task`, and the ingress (v1 verbs and
answers, v2 metadata), the replica (what it loads beside the model, its warm-up) and the
CLI (the verb it prints) ask the task instead of telling specs apart. A new kind of model
is one new class here and one line in ``task_of``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from optimize.manifest import EXAMPLES_FILE, InputSpec, TensorsSpec, TextSpec
from optimize.manifest import TensorSpec as ManifestTensor
from serving.audio_decode import decode_audio
from serving.calls import Tensors
from serving.config import LimitsConfig
from serving.errors import BadRequest
from serving.protocols.v2 import BYTES, DATATYPES, TEXT_INPUT, TensorSpec

Verb = Literal["classify", "embed"]
# Bodies up to this size are decoded on the event loop: decoding them costs less than a
# round trip through a worker thread.
INLINE_DECODE_BYTES = 512 * 1024
# Texts in one request, at most: more is a batch job, not a request.
MAX_TEXTS = 256


@dataclass(frozen=True)
class Decoded:
    """A v1 request's inputs for the model, and what its answer needs to know of them."""

    inputs: Tensors
    seconds: float | None = None  # audio: the clip's length


class Task(ABC):
    """One kind of model: how it is asked (v1 verb, v2 signature) and how it answers."""

    verb: Verb | None = None  # the v1 verb it answers; None: v2 only
    content_types: tuple[str, ...] = ()  # the v1 bodies it takes

    @property
    def labels(self) -> list[str]:
        """The labels a classifier answers; none for other kinds."""
        return []

    @abstractmethod
    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Its v2 inputs and outputs, as clients send and receive them."""

    async def decode(self, body: bytes, content_type: str, limits: LimitsConfig) -> Decoded:
        """A v1 request body as the model's inputs (only for a task with a verb)."""
        raise NotImplementedError

    def answer(self, outputs: Tensors, decoded: Decoded) -> dict[str, Any]:
        """A v1 answer's fields from the model's outputs (only for a task with a verb)."""
        raise NotImplementedError

    def refusal(self, model: str, verb: Verb) -> str:
        """Why a v1 ``verb`` is not this model's, and what to use instead."""
        if verb == "embed":
            return (
                f"model {model!r} is not a text embedding model: use "
                f"POST /v2/models/{model}/infer (or :classify for a classifier)"
            )
        return (
            f"model {model!r} is not a classifier (its artifact takes {self.takes()}): use "
            f"POST /v2/models/{model}/infer" + (" or :embed" if self.verb == "embed" else "")
        )

    def takes(self) -> str:
        return ", ".join(t.name for t in self.signature()[0])

    @abstractmethod
    def warmup_feeds(self, directory: Path, inputs: list[TensorSpec]) -> Tensors | None:
        """The model's own inputs for one call before the replica reports healthy; None
        when they come through ``feeds`` (text)."""

    def load_tokenizer(self, directory: Path) -> Any:
        """What turns requests into the model's inputs in the replica (text: the
        tokenizer); None for a model that takes its inputs as they come."""
        return None


def _v2(tensor: ManifestTensor) -> TensorSpec:
    """A manifest's tensor as v2 metadata: a free dimension is -1."""
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in tensor.shape)
    return TensorSpec(tensor.name, tensor.datatype, shape)


class AudioClassify(Task):
    """An audio classifier: a clip in, a label and softmax scores out."""

    verb = "classify"
    content_types = ("audio/wav", "audio/flac", "audio/l16", "audio/pcm-f32le")

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        spec = self.spec
        inputs = [TensorSpec(spec.input_name, "FP32", (-1, -1))]
        return inputs, [TensorSpec(spec.output_name, "FP32", (-1, len(spec.labels)))]

    async def decode(self, body: bytes, content_type: str, limits: LimitsConfig) -> Decoded:
        spec = self.spec
        decode = functools.partial(
            decode_audio,
            body,
            content_type,
            sample_rate=spec.sample_rate,
            max_seconds=min(limits.max_audio_seconds, spec.max_seconds),
        )
        # A short clip decodes faster than a hop to a thread and back; a long one must not
        # hold the event loop (every other request and health probe waits on it).
        wave = decode() if len(body) <= INLINE_DECODE_BYTES else await asyncio.to_thread(decode)
        return Decoded({spec.input_name: wave[None, :]}, wave.shape[0] / spec.sample_rate)

    def answer(self, outputs: Tensors, decoded: Decoded) -> dict[str, Any]:
        logits = np.asarray(outputs[self.spec.output_name], dtype=np.float64)[0]
        scores = np.exp(logits - logits.max())
        scores /= scores.sum()
        labels = self.spec.labels
        return {
            "label": labels[int(scores.argmax())],
            "scores": {label: float(s) for label, s in zip(labels, scores, strict=True)},
            "seconds": decoded.seconds,
        }

    def warmup_feeds(self, directory: Path, inputs: list[TensorSpec]) -> Tensors | None:
        """One second of silence."""
        feeds = {}
        for tensor in inputs:
            shape = [1 if d < 0 else d for d in tensor.shape[:1]]
            shape += [self.spec.sample_rate if d < 0 else d for d in tensor.shape[1:]]
            feeds[tensor.name] = np.zeros(shape, dtype=DATATYPES[tensor.datatype])
        return feeds


def texts(body: bytes) -> np.ndarray:
    """The ``text`` of a JSON body (a string or a non-empty list of them) as BYTES rows."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f'the body must be JSON like {{"text": "..."}}: {exc}') from exc
    text = data.get("text") if isinstance(data, dict) else None
    given = [text] if isinstance(text, str) else text
    if not isinstance(given, list) or not given or not all(isinstance(t, str) for t in given):
        raise BadRequest('"text" must be a string or a non-empty list of strings')
    if len(given) > MAX_TEXTS:
        raise BadRequest(f"{len(given)} texts in one request; at most {MAX_TEXTS}")
    rows = np.empty(len(given), dtype=object)
    rows[:] = given
    return rows


class _Text(Task):
    """A text encoder: raw text in (tokenized by the replica)."""

    content_types = ("application/json",)

    def __init__(self, spec: TextSpec) -> None:
        self.spec = spec

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        output = TensorSpec(self.spec.output_name, "FP32", (-1, self.spec.dimension))
        return [TensorSpec(TEXT_INPUT, BYTES, (-1,))], [output]

    def takes(self) -> str:
        return ", ".join(t.name for t in self.spec.inputs)

    async def decode(self, body: bytes, content_type: str, limits: LimitsConfig) -> Decoded:
        return Decoded({TEXT_INPUT: texts(body)})

    def load_tokenizer(self, directory: Path) -> Any:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(directory / self.spec.tokenizer_file))
        tokenizer.enable_truncation(max_length=self.spec.max_length)
        tokenizer.enable_padding()
        return tokenizer

    def warmup_feeds(self, directory: Path, inputs: list[TensorSpec]) -> Tensors | None:
        return None  # the replica tokenizes a sentence: its own feeds


class TextEmbed(_Text):
    """Sentence embeddings: one vector per text."""

    verb = "embed"

    def answer(self, outputs: Tensors, decoded: Decoded) -> dict[str, Any]:
        vectors = np.asarray(outputs[self.spec.output_name], dtype=np.float32)
        return {"dimension": int(vectors.shape[1]), "embeddings": vectors.tolist()}


class TextClassify(_Text):
    """A text classifier: a label and scores per text (sigmoid per label for a multi-label
    head, softmax otherwise)."""

    verb = "classify"

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    def answer(self, outputs: Tensors, decoded: Decoded) -> dict[str, Any]:
        spec = self.spec
        logits = np.asarray(outputs[spec.output_name], dtype=np.float64)
        if spec.multi_label:
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            scores = np.exp(logits - logits.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        return {
            "results": [
                {
                    "label": spec.labels[int(row.argmax())],
                    "labels": [n for n, v in zip(spec.labels, row, strict=True) if v >= 0.5]
                    if spec.multi_label
                    else [spec.labels[int(row.argmax())]],
                    "scores": {n: float(v) for n, v in zip(spec.labels, row, strict=True)},
                }
                for row in scores
            ]
        }


class TensorModel(Task):
    """Any ONNX model (``sluiceway import``): tensors in and out, over v2 only."""

    def __init__(self, spec: TensorsSpec) -> None:
        self.spec = spec

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return [_v2(t) for t in self.spec.inputs], [_v2(t) for t in self.spec.outputs]

    def warmup_feeds(self, directory: Path, inputs: list[TensorSpec]) -> Tensors | None:
        """The inputs it was measured on, kept in the artifact."""
        with np.load(directory / EXAMPLES_FILE, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}


def task_of(spec: InputSpec | TextSpec | TensorsSpec) -> Task:
    """The task of an artifact, from its manifest's input spec."""
    if isinstance(spec, TextSpec):
        return TextEmbed(spec) if spec.task == "embed" else TextClassify(spec)
    if isinstance(spec, TensorsSpec):
        return TensorModel(spec)
    return AudioClassify(spec)
