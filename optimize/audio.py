"""Audio in: WAV files (resampled to the model's rate) and a seeded synthetic labelled set.

The synthetic set stands in for real data when none is given. Two classes that a listener
would tell apart and a random-weight encoder still separates: ``tonal`` clips are dominated
by a harmonic tone with vibrato and syllable-rate amplitude modulation, ``noisy`` clips by
band-limited noise; each mixes in some of the other at a random ratio so that decisions
depend on the input.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from numpy.typing import NDArray
from scipy.signal import lfilter, resample_poly

from optimize.errors import AudioDecodeError, DatasetError

logger = logging.getLogger(__name__)

SYNTHETIC_LABELS: tuple[str, ...] = ("tonal", "noisy")
AUDIO_SUFFIXES = (".wav", ".flac")

Waveform = NDArray[np.float32]


@dataclass(frozen=True)
class AudioSet:
    """Clips of one length as a [n, samples] float32 array, with optional label indices."""

    clips: NDArray[np.float32]
    labels: NDArray[np.int64] | None
    label_names: tuple[str, ...] | None
    sample_rate: int
    origin: str

    def __len__(self) -> int:
        return int(self.clips.shape[0])

    def subset(self, count: int) -> AudioSet:
        """The first ``count`` clips."""
        return AudioSet(
            clips=self.clips[:count],
            labels=None if self.labels is None else self.labels[:count],
            label_names=self.label_names,
            sample_rate=self.sample_rate,
            origin=self.origin,
        )


def resample(wave: Waveform, source_rate: int, target_rate: int) -> Waveform:
    """Polyphase resampling (anti-aliased) from ``source_rate`` to ``target_rate``."""
    if source_rate == target_rate:
        return wave
    g = gcd(source_rate, target_rate)
    return np.asarray(resample_poly(wave, target_rate // g, source_rate // g), dtype=np.float32)


def load_wav(path: Path, sample_rate: int) -> Waveform:
    """Read an audio file as mono float32 at ``sample_rate`` (resampled, and logged, if not)."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioDecodeError(
            f"cannot read audio file {path}: {exc}; give a WAV or FLAC file (PCM or float)"
        ) from exc
    if data.shape[0] == 0:
        raise AudioDecodeError(f"audio file {path} holds no samples")
    mono = data.mean(axis=1).astype(np.float32)
    if rate != sample_rate:
        logger.info("resampling %s from %d Hz to %d Hz", path, rate, sample_rate)
    return resample(mono, int(rate), sample_rate)


def fit_length(wave: Waveform, samples: int) -> Waveform:
    """Crop or zero-pad ``wave`` to ``samples``."""
    if wave.shape[0] >= samples:
        return wave[:samples]
    return np.pad(wave, (0, samples - wave.shape[0])).astype(np.float32)


def _read_labels(csv_path: Path) -> dict[str, str]:
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise DatasetError(f"cannot read labels file {csv_path}: {exc}") from exc
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["file", "label"]:
        rows = rows[1:]
    labels: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DatasetError(f"{csv_path}, line {number}: expected 'file,label', got {row!r}")
        labels[row[0].strip()] = row[1].strip()
    return labels


def load_folder(
    folder: Path,
    *,
    sample_rate: int,
    seconds: float,
    label_names: tuple[str, ...],
    labels_csv: Path | None = None,
) -> AudioSet:
    """Every WAV/FLAC file in ``folder`` (sorted by name), cropped/padded to ``seconds``.

    ``labels_csv`` maps file names to label names (columns ``file,label``); labels must be
    among the model's ``label_names``.
    """
    if not folder.is_dir():
        raise DatasetError(f"audio folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DatasetError(f"audio folder {folder} holds no .wav or .flac files")
    samples = round(seconds * sample_rate)
    clips = np.stack([fit_length(load_wav(p, sample_rate), samples) for p in files])
    labels: NDArray[np.int64] | None = None
    if labels_csv is not None:
        mapping = _read_labels(labels_csv)
        index = {name: i for i, name in enumerate(label_names)}
        values = []
        for path in files:
            if path.name not in mapping:
                raise DatasetError(f"{labels_csv} has no label for {path.name}")
            name = mapping[path.name]
            if name not in index:
                raise DatasetError(
                    f"{labels_csv}: label {name!r} of {path.name} is not one of the model's "
                    f"labels {list(label_names)}"
                )
            values.append(index[name])
        labels = np.asarray(values, dtype=np.int64)
    return AudioSet(
        clips=clips.astype(np.float32),
        labels=labels,
        label_names=label_names if labels is not None else None,
        sample_rate=sample_rate,
        origin=str(folder),
    )


def _tonal(rng: np.random.Generator, t: NDArray[np.float64], rate: int) -> NDArray[np.float64]:
    f0 = rng.uniform(90.0, 320.0)
    vibrato = 1.0 + 0.03 * np.sin(2 * np.pi * rng.uniform(3.0, 7.0) * t)
    phase = 2 * np.pi * f0 * np.cumsum(vibrato) / rate
    harmonics = sum(
        rng.uniform(0.2, 1.0) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        for k in range(1, 7)
    )
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(2.5, 6.0) * t + rng.uniform(0, 6.3))
    return np.asarray(harmonics * envelope)


def _noisy(rng: np.random.Generator, samples: int) -> NDArray[np.float64]:
    white = rng.standard_normal(samples)
    pole = rng.uniform(-0.9, 0.9)  # tilt the spectrum: from bright hiss to rumble
    return np.asarray(lfilter([1.0], [1.0, -pole], white))


def _normalise(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(x / (np.sqrt(np.mean(x**2)) + 1e-9), dtype=np.float64)


def synthetic_set(count: int, *, seconds: float, sample_rate: int, seed: int) -> AudioSet:
    """``count`` seeded, labelled clips alternating ``tonal`` / ``noisy`` (balanced)."""
    if count <= 0:
        raise DatasetError(f"a synthetic set needs at least one clip, got {count}")
    rng = np.random.default_rng(seed)
    samples = round(seconds * sample_rate)
    t = np.arange(samples) / sample_rate
    clips = np.empty((count, samples), dtype=np.float32)
    labels = np.arange(count, dtype=np.int64) % 2
    for i in range(count):
        tone, noise = _normalise(_tonal(rng, t, sample_rate)), _normalise(_noisy(rng, samples))
        # The dominant source is 3 to 20 dB above the other.
        ratio = 10 ** (-rng.uniform(3.0, 20.0) / 20)
        mix = tone + ratio * noise if labels[i] == 0 else noise + ratio * tone
        clips[i] = (rng.uniform(0.05, 0.5) * _normalise(mix)).astype(np.float32)
    return AudioSet(
        clips=clips,
        labels=labels,
        label_names=SYNTHETIC_LABELS,
        sample_rate=sample_rate,
        origin=f"synthetic(seed={seed})",
    )


def write_wav(path: Path, wave: Waveform, sample_rate: int) -> None:
    """Write 16-bit PCM WAV (for users who want the synthetic set as files, and tests)."""
    soundfile.write(str(path), wave, sample_rate, subtype="PCM_16")
