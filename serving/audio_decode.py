"""Audio uploads -> mono float32 at the model's sample rate (WAV/FLAC, or raw PCM)."""

from __future__ import annotations

import io

import numpy as np
import soundfile
from numpy.typing import NDArray

from optimize.audio import resample
from serving.errors import BadRequest, PayloadTooLarge

PCM_TYPES = {"audio/l16": "<i2", "audio/pcm": "<i2", "audio/pcm-f32le": "<f4"}


def decode_audio(
    body: bytes, content_type: str, *, sample_rate: int, max_seconds: float
) -> NDArray[np.float32]:
    """Decode an upload. Raw PCM is ``audio/l16`` (16-bit) or ``audio/pcm-f32le`` (float),
    mono, with its rate as ``;rate=N`` (default: the model's rate)."""
    kind, _, params = content_type.partition(";")
    kind = kind.strip().lower()
    if not body:
        raise BadRequest("the request body is empty: send a WAV file or raw PCM")
    if kind in PCM_TYPES:
        rate = sample_rate
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "rate":
                if not value.isdigit() or int(value) <= 0:
                    raise BadRequest(f"content-type rate {value!r} is not a positive integer")
                rate = int(value)
        dtype = np.dtype(PCM_TYPES[kind])
        if len(body) % dtype.itemsize:
            raise BadRequest(f"{len(body)} bytes is not a whole number of {kind} samples")
        samples = np.frombuffer(body, dtype=dtype).astype(np.float32)
        if dtype.kind == "i":
            samples /= 32768.0
    else:
        try:
            data, rate = soundfile.read(io.BytesIO(body), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
            raise BadRequest(
                f"the upload is not readable audio ({exc}); send WAV or FLAC, or raw PCM "
                "with content-type audio/l16;rate=16000"
            ) from exc
        samples = data.mean(axis=1).astype(np.float32)
    seconds = samples.shape[0] / rate
    if seconds > max_seconds:
        raise PayloadTooLarge(f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s")
    if samples.shape[0] == 0:
        raise BadRequest("the audio holds no samples")
    return resample(samples, int(rate), sample_rate)
