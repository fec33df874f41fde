"""Audio uploads -> mono float32 at the model's sample rate (WAV/FLAC, or raw PCM)."""

from __future__ import annotations

import io

import numpy as np
import soundfile
from numpy.typing import NDArray

from optimize.audio import resample
from serving.errors import BadRequest, PayloadTooLarge

PCM_TYPES = {"audio/l16": "<i2", "audio/pcm": "<i2", "audio/pcm-f32le": "<f4"}


MIN_RATE, MAX_RATE = 8_000, 192_000  # Hz: telephone to studio; the resampler's filter
# grows with the rates' ratio: an odd rate far outside costs seconds and gigabytes


def _check_rate(rate: int, where: str) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise BadRequest(
            f"{where} sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz; "
            "resample the audio before sending it"
        )


def _check_length(frames: int, rate: int, max_seconds: float) -> None:
    seconds = frames / rate
    if seconds > max_seconds:
        raise PayloadTooLarge(f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s")
    if frames == 0:
        raise BadRequest("the audio holds no samples")


def decode_audio(
    body: bytes, content_type: str, *, sample_rate: int, max_seconds: float
) -> NDArray[np.float32]:
    """Decode an upload. Raw PCM is ``audio/l16`` (16-bit) or ``audio/pcm-f32le`` (float),
    mono, with its rate as ``;rate=N`` (default: the model's rate). Rate and length are
    checked from the header before anything is decoded."""
    kind, _, params = content_type.partition(";")
    kind = kind.strip().lower()
    if not body:
        raise BadRequest("the request body is empty: send a WAV file or raw PCM")
    if kind in PCM_TYPES:
        rate = sample_rate
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "rate":
                if not value.isascii() or not value.isdigit() or int(value) <= 0:
                    raise BadRequest(f"content-type rate {value!r} is not a positive integer")
                rate = int(value)
        _check_rate(rate, "content-type")
        dtype = np.dtype(PCM_TYPES[kind])
        if len(body) % dtype.itemsize:
            raise BadRequest(f"{len(body)} bytes is not a whole number of {kind} samples")
        _check_length(len(body) // dtype.itemsize, rate, max_seconds)
        samples = np.frombuffer(body, dtype=dtype).astype(np.float32)
        if dtype.kind == "i":
            samples /= 32768.0
    else:
        unreadable = (
            "the upload is not readable audio ({}); send WAV or FLAC, or raw PCM with "
            "content-type audio/l16;rate=16000"
        )
        try:
            with soundfile.SoundFile(io.BytesIO(body)) as sound:
                rate = sound.samplerate
                _check_rate(rate, "the file's")
                _check_length(sound.frames, rate, max_seconds)
                data = sound.read(dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
            raise BadRequest(unreadable.format(exc)) from exc
        samples = data.mean(axis=1).astype(np.float32)
    _check_length(samples.shape[0], rate, max_seconds)
    return resample(samples, int(rate), sample_rate)
