from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from optimize.audio import load_folder, load_wav, synthetic_set, write_wav
from optimize.errors import AudioDecodeError, DatasetError


def test_synthetic_set_is_seeded_balanced_and_input_dependent() -> None:
    a = synthetic_set(10, seconds=0.5, sample_rate=16_000, seed=3)
    b = synthetic_set(10, seconds=0.5, sample_rate=16_000, seed=3)
    c = synthetic_set(10, seconds=0.5, sample_rate=16_000, seed=4)
    assert np.array_equal(a.clips, b.clips)
    assert not np.array_equal(a.clips, c.clips)
    assert a.labels is not None
    assert np.bincount(a.labels).tolist() == [5, 5]
    assert a.clips.dtype == np.float32
    assert a.clips.shape == (10, 8000)


def test_other_sample_rates_are_resampled_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    t = np.arange(44_100) / 44_100
    write_wav(tmp_path / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44_100)
    with caplog.at_level(logging.INFO, logger="optimize.audio"):
        wave = load_wav(tmp_path / "tone.wav", 16_000)
    assert wave.shape == (16_000,)
    assert "resampling" in caplog.text and "44100 Hz to 16000 Hz" in caplog.text
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 s at 16 kHz: bin = Hz


def test_unreadable_audio_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(AudioDecodeError, match="broken.wav"):
        load_wav(bad, 16_000)


def test_folder_with_labels(tmp_path: Path) -> None:
    data = synthetic_set(4, seconds=0.25, sample_rate=16_000, seed=1)
    for i, clip in enumerate(data.clips):
        write_wav(tmp_path / f"c{i}.wav", clip, 16_000)
    (tmp_path / "labels.csv").write_text(
        "file,label\n"
        + "".join(f"c{i}.wav,{'tonal' if i % 2 == 0 else 'noisy'}\n" for i in range(4))
    )
    loaded = load_folder(
        tmp_path,
        sample_rate=16_000,
        seconds=0.5,
        label_names=("tonal", "noisy"),
        labels_csv=tmp_path / "labels.csv",
    )
    assert loaded.clips.shape == (4, 8000)  # padded to 0.5 s
    assert loaded.labels is not None and loaded.labels.tolist() == [0, 1, 0, 1]
    (tmp_path / "labels.csv").write_text("c0.wav,tonal\nc1.wav,laughter\n")
    with pytest.raises(DatasetError, match="'laughter'.*not one of the model's labels"):
        load_folder(
            tmp_path,
            sample_rate=16_000,
            seconds=0.5,
            label_names=("tonal", "noisy"),
            labels_csv=tmp_path / "labels.csv",
        )


def test_empty_or_missing_folders_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holds no .wav"):
        load_folder(tmp_path, sample_rate=16_000, seconds=1, label_names=("a", "b"))
    with pytest.raises(DatasetError, match="does not exist"):
        load_folder(tmp_path / "nope", sample_rate=16_000, seconds=1, label_names=("a", "b"))
