from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from serving.audio_decode import decode_audio
from serving.errors import BadRequest, PayloadTooLarge


def wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_wav_is_decoded_and_resampled() -> None:
    wave = decode_audio(
        wav(np.zeros(8000, np.float32), 8000), "audio/wav", sample_rate=16_000, max_seconds=5
    )
    assert wave.shape == (16_000,) and wave.dtype == np.float32


def test_raw_pcm_with_rate() -> None:
    pcm = (np.ones(16_000) * 16384).astype("<i2").tobytes()
    wave = decode_audio(pcm, "audio/l16;rate=16000", sample_rate=16_000, max_seconds=5)
    assert wave.shape == (16_000,) and wave[0] == pytest.approx(0.5)


def test_bad_audio_is_a_400_and_long_audio_a_413() -> None:
    with pytest.raises(BadRequest, match="not readable audio"):
        decode_audio(b"RIFF....WAVEjunk", "audio/wav", sample_rate=16_000, max_seconds=5)
    with pytest.raises(BadRequest, match="empty"):
        decode_audio(b"", "audio/wav", sample_rate=16_000, max_seconds=5)
    with pytest.raises(PayloadTooLarge, match="limit is 1 s"):
        decode_audio(
            wav(np.zeros(32_000, np.float32), 16_000),
            "audio/wav",
            sample_rate=16_000,
            max_seconds=1,
        )
