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


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"\x00\x00" * 400, "audio/l16;rate=1999993", "sample rate 1999993 Hz is outside"),
        (b"\x00\x00" * 400, "audio/l16;rate=4000", "sample rate 4000 Hz is outside"),
        (b"\x00\x00" * 400, "audio/l16;rate=\u0661\u0666", "not a positive integer"),
    ],
)
def test_a_sample_rate_outside_8_to_192_khz_is_refused_before_resampling(
    body: bytes, content_type: str, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_audio(body, content_type, sample_rate=16_000, max_seconds=5)


def test_a_file_is_refused_from_its_header_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flac = io.BytesIO()
    soundfile.write(flac, np.zeros(16_000 * 3, np.float32), 16_000, format="FLAC")
    decoded: list[int] = []
    original = soundfile.SoundFile.read

    def counting_read(self: soundfile.SoundFile, *args: object, **kwargs: object) -> object:
        decoded.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "read", counting_read)
    with pytest.raises(PayloadTooLarge, match="3.0 s long; the limit is 1 s"):
        decode_audio(flac.getvalue(), "audio/flac", sample_rate=16_000, max_seconds=1)
    assert decoded == []  # the header said 3 s: nothing was decoded
    odd = io.BytesIO()
    soundfile.write(odd, np.zeros(400, np.float32), 1_000_000, format="WAV", subtype="PCM_16")
    with pytest.raises(BadRequest, match="the file's sample rate 1000000 Hz is outside"):
        decode_audio(odd.getvalue(), "audio/wav", sample_rate=16_000, max_seconds=5)
