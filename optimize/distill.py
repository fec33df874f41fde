"""A smaller student distilled from the teacher, for the CPU pool's latency target.

The student keeps every k-th transformer layer of the teacher (as DistilBERT and
DistilHuBERT do) and a thinner conv front end: each conv layer keeps the output channels
with the largest L1 norm (structured pruning), the next layer's input channels follow.
Weights are initialised from the teacher, then trained by knowledge distillation on audio:
KL on temperature-softened logits plus L1 + cosine distance between mapped hidden states
(student layer j <-> teacher layer ``layers[j]``), and cross-entropy on labels when the
training data has them and ``label_weight`` > 0. Training clips come from a seeded stream
(a different seed range from calibration and evaluation), so fidelity is measured on audio
the student never saw. Deterministic for a seed; resumable from the checkpoint it writes
every ``checkpoint_every`` steps (safetensors for weights, ``torch.load(weights_only=True)``
for the optimizer: no pickle of code is ever loaded).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from transformers import AutoModelForAudioClassification, PreTrainedModel

from optimize.audio import synthetic_set
from optimize.checkpoint import SourceModel, checkpoint_digest
from optimize.progress import ProgressFn, no_progress

logger = logging.getLogger(__name__)

STUDENT_VARIANT = "student-int8"
TRAIN_SEED_OFFSET = 1_000_003  # far from the calibration (+202) and eval (+303) seeds
# A student is judged by its decisions: 98 % agreement with the teacher on held-out audio.
# Its logits are its own (a smaller model trained to mimic), so cosine and absolute error
# are looser than quantization's.
STUDENT_GATES: dict[str, float] = {
    "min_top1_agreement": 0.98,
    "min_logit_cosine": 0.95,
    "max_abs_error": 10.0,
}


class StudentRecipe(BaseModel):
    """How the student is shaped and trained; recorded in its manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer_stride: int = Field(6, ge=1, description="keep teacher layers k-1, 2k-1, ...")
    conv_keep: float = Field(0.25, gt=0, le=1, description="share of conv channels kept")
    steps: int = Field(400, ge=1, description="training steps at most")
    max_minutes: float = Field(20.0, gt=0, description="training time budget")
    batch_size: int = Field(8, ge=1)
    train_seconds: float = Field(1.0, gt=0, description="clip length while training")
    learning_rate: float = Field(3e-4, gt=0)
    temperature: float = Field(2.0, gt=0)
    hidden_weight: float = Field(1.0, ge=0, description="weight of hidden L1 + cosine")
    label_weight: float = Field(0.0, ge=0, description="weight of label cross-entropy")
    checkpoint_every: int = Field(25, ge=1)
    seed: int = 0

    def teacher_layers(self, teacher_layers: int) -> list[int]:
        """Teacher layer indices the student keeps (the last one always)."""
        kept = list(range(self.layer_stride - 1, teacher_layers, self.layer_stride))
        if not kept or kept[-1] != teacher_layers - 1:
            kept.append(teacher_layers - 1)
        return kept


@dataclass(frozen=True)
class DistillReport:
    """What training did, for the manifest and the closing line."""

    steps: int
    seconds: float
    final_loss: float
    resumed_from: int
    teacher_layers: list[int]
    conv_dim: list[int]

    def describe(self) -> str:
        return (
            f"student: layers {self.teacher_layers} of the teacher, conv channels "
            f"{self.conv_dim}, {self.steps} KD steps in {self.seconds:.0f} s "
            f"(final loss {self.final_loss:.4f}"
            + (f", resumed at step {self.resumed_from})" if self.resumed_from else ")")
        )


def _kept_channels(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Output channels of a conv weight [out, in, k] with the largest L1 norms, in order."""
    norms = weight.abs().sum(dim=(1, 2))
    return torch.sort(torch.topk(norms, keep).indices).values


def make_student(teacher: PreTrainedModel, recipe: StudentRecipe) -> PreTrainedModel:
    """A thinner, shallower copy of ``teacher`` initialised from its weights."""
    config = copy.deepcopy(teacher.config)
    layers = recipe.teacher_layers(config.num_hidden_layers)
    conv_dim = [max(8, round(c * recipe.conv_keep)) for c in config.conv_dim]
    config.num_hidden_layers = len(layers)
    config.conv_dim = conv_dim
    student = AutoModelForAudioClassification.from_config(config)
    source = teacher.state_dict()
    kept: list[torch.Tensor] = []
    for i, width in enumerate(conv_dim):
        kept.append(
            _kept_channels(source[f"wav2vec2.feature_extractor.conv_layers.{i}.conv.weight"], width)
        )
    state = {}
    for name, target in student.state_dict().items():
        value = _student_tensor(name, source, kept, layers)
        if value.shape != target.shape:
            raise ValueError(f"{name}: derived {tuple(value.shape)}, student {tuple(target.shape)}")
        state[name] = value.clone()
    student.load_state_dict(state)
    student.eval()
    return student


def _student_tensor(
    name: str, source: dict[str, torch.Tensor], kept: list[torch.Tensor], layers: list[int]
) -> torch.Tensor:
    prefix = "wav2vec2.feature_extractor.conv_layers."
    if name.startswith(prefix):
        index = int(name[len(prefix) :].split(".")[0])
        tensor = source[name].index_select(0, kept[index])
        if name.endswith("conv.weight") and index > 0:
            tensor = tensor.index_select(1, kept[index - 1])
        return tensor
    if name.startswith("wav2vec2.feature_projection.layer_norm."):
        return source[name].index_select(0, kept[-1])
    if name == "wav2vec2.feature_projection.projection.weight":
        return source[name].index_select(1, kept[-1])
    layer_prefix = "wav2vec2.encoder.layers."
    if name.startswith(layer_prefix):
        position, rest = name[len(layer_prefix) :].split(".", 1)
        return source[f"{layer_prefix}{layers[int(position)]}.{rest}"]
    return source[name]


def _loss(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    batch: torch.Tensor,
    labels: torch.Tensor | None,
    layers: list[int],
    recipe: StudentRecipe,
) -> torch.Tensor:
    with torch.no_grad():
        t_out = teacher(batch, output_hidden_states=True)
    s_out = student(batch, output_hidden_states=True)
    temp = recipe.temperature
    loss = F.kl_div(
        F.log_softmax(s_out.logits / temp, dim=-1),
        F.softmax(t_out.logits / temp, dim=-1),
        reduction="batchmean",
    ) * (temp * temp)
    if recipe.hidden_weight > 0:
        hidden = torch.zeros(())
        for j, t_index in enumerate(layers):
            s_h, t_h = s_out.hidden_states[j + 1], t_out.hidden_states[t_index + 1]
            hidden = hidden + F.l1_loss(s_h, t_h)
            hidden = hidden + (1 - F.cosine_similarity(s_h, t_h, dim=-1)).mean()
        loss = loss + recipe.hidden_weight * hidden / len(layers)
    if labels is not None and recipe.label_weight > 0:
        loss = loss + recipe.label_weight * F.cross_entropy(s_out.logits, labels)
    return loss


def _save(
    directory: Path,
    student: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    step: int,
    recipe: StudentRecipe,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in student.state_dict().items()},
        directory / "student.safetensors",
    )
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps({"step": step, "recipe": recipe.model_dump()}))


def _resume(
    directory: Path,
    student: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    recipe: StudentRecipe,
) -> int:
    state_file = directory / "state.json"
    if not state_file.is_file():
        return 0
    state = json.loads(state_file.read_text())
    budget = {"steps", "max_minutes"}  # a longer budget continues the same training
    saved = {k: v for k, v in state.get("recipe", {}).items() if k not in budget}
    if saved != recipe.model_dump(exclude=budget):
        logger.warning("%s holds another recipe's training state; starting over", directory)
        return 0
    student.load_state_dict(load_file(directory / "student.safetensors"))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    return int(state["step"])


def distill(
    teacher: SourceModel,
    recipe: StudentRecipe,
    checkpoint_dir: Path,
    *,
    progress: ProgressFn = no_progress,
) -> tuple[PreTrainedModel, DistillReport]:
    """Build the student and train it by knowledge distillation; resumes from checkpoint_dir."""
    now = time.monotonic
    torch.manual_seed(recipe.seed)
    teacher.model.eval()
    student = make_student(teacher.model, recipe)
    layers = recipe.teacher_layers(teacher.model.config.num_hidden_layers)
    optimizer = torch.optim.AdamW(student.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    start_step = _resume(checkpoint_dir, student, optimizer, recipe)
    if start_step:
        logger.info("distillation resumes at step %d from %s", start_step, checkpoint_dir)
    begun = now()
    deadline = begun + recipe.max_minutes * 60
    step, loss_value = start_step, float("nan")
    # Trained in eval mode: no dropout, layerdrop or SpecAugment masking (whose numpy RNG
    # would break determinism); the student mimics the teacher's clean outputs.
    student.eval()
    while step < recipe.steps and now() < deadline:
        data = synthetic_set(
            recipe.batch_size,
            seconds=recipe.train_seconds,
            sample_rate=teacher.sample_rate,
            seed=recipe.seed + TRAIN_SEED_OFFSET + step,
        )
        batch = torch.from_numpy(data.clips)
        labels = torch.from_numpy(data.labels) if data.labels is not None else None
        loss = _loss(teacher.model, student, batch, labels, layers, recipe)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        rate = (step - start_step) * recipe.batch_size / max(now() - begun, 1e-9)
        progress("student: distilling", step, recipe.steps)
        if step % recipe.checkpoint_every == 0:
            _save(checkpoint_dir, student, optimizer, step, recipe)
            logger.info(
                "student step %d/%d: KD loss %.4f, %.1f clips/s",
                step,
                recipe.steps,
                loss_value,
                rate,
            )
    _save(checkpoint_dir, student, optimizer, step, recipe)
    student.eval()
    report = DistillReport(
        steps=step,
        seconds=now() - begun,
        final_loss=loss_value,
        resumed_from=start_step,
        teacher_layers=layers,
        conv_dim=list(student.config.conv_dim),
    )
    return student, report


def student_source(teacher: SourceModel, student: PreTrainedModel, directory: Path) -> SourceModel:
    """The trained student saved as a checkpoint, ready for the export path."""
    directory.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(directory, safe_serialization=True)
    return SourceModel(
        model=student,
        name=f"{teacher.name} student",
        directory=directory,
        sha256=checkpoint_digest(directory),
        labels=teacher.labels,
        sample_rate=teacher.sample_rate,
    )
