"""Reading audio files, raw PCM and the microphone into float32 mono at the model's sample rate.

Resampling uses soxr (high-quality polyphase/sinc), never linear interpolation, which would alias and
cost accuracy. Channels are averaged to mono. Integer PCM is scaled by 1/32768, as NeMo's reader does.
"""

from __future__ import annotations

import queue
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np

from streamasr.errors import AudioError


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    if from_rate <= 0:
        raise AudioError(f"invalid sample rate {from_rate}")
    import soxr

    return soxr.resample(samples.astype(np.float32, copy=False), from_rate, to_rate, quality="HQ").astype(np.float32)


def stream_resample(blocks, from_rate: int, to_rate: int):
    """Resample a stream of float32 blocks continuously (one soxr filter state across block boundaries;
    resampling each block on its own would put an edge artefact at every boundary)."""
    if from_rate == to_rate:
        yield from blocks
        return
    if from_rate <= 0:
        raise AudioError(f"invalid sample rate {from_rate}")
    import soxr

    resampler = soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality="HQ")
    for block in blocks:
        yield resampler.resample_chunk(block.astype(np.float32, copy=False))
    yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def to_mono(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32) if samples.ndim == 2 else samples


def read_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Read WAV/FLAC/OGG (anything libsndfile reads) as float32 mono at `sample_rate`."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc
    if data.size == 0:
        raise AudioError(f"{path}: contains no audio samples")
    return resample(to_mono(data), int(rate), sample_rate)


PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


def pcm_to_float(raw: bytes, encoding: str = "s16le") -> np.ndarray:
    """Raw little-endian PCM bytes to float32 samples in [-1, 1]."""
    dtype = PCM_FORMATS.get(encoding)
    if dtype is None:
        raise AudioError(f"unknown PCM encoding {encoding!r}; use one of {', '.join(PCM_FORMATS)}")
    if len(raw) % dtype.itemsize:
        raise AudioError(f"{len(raw)} bytes is not a whole number of {encoding} samples")
    x = np.frombuffer(raw, dtype=dtype)
    if dtype.kind == "i":
        return x.astype(np.float32) / 32768.0
    if x.size and not np.isfinite(x).all():
        raise AudioError("f32le audio contains NaN or infinity")
    return x.astype(np.float32)


def iter_pcm(stream: BinaryIO | None = None, block_bytes: int = 3200, encoding: str = "s16le"):
    """Yield float32 blocks from a raw PCM byte stream (stdin by default) as they arrive."""
    stream = stream or sys.stdin.buffer
    itemsize = PCM_FORMATS[encoding].itemsize if encoding in PCM_FORMATS else 1
    carry = b""
    while True:
        block = stream.read1(block_bytes) if hasattr(stream, "read1") else stream.read(block_bytes)
        if not block:
            break
        block = carry + block
        whole = len(block) - len(block) % itemsize
        carry = block[whole:]
        if whole:
            yield pcm_to_float(block[:whole], encoding)
    if carry:
        raise AudioError(f"raw input ended in the middle of a {encoding} sample")


def open_microphone(sample_rate: int, block: int) -> tuple[object, queue.Queue]:
    """A started sounddevice input stream (mono float32, `block` samples per callback) and the queue its
    blocks arrive in; a StreamASRError naming what is missing (the package, PortAudio, a device)."""
    try:
        import sounddevice as sd  # optional: the `mic` extra, which needs PortAudio
    except (ImportError, OSError) as exc:
        raise AudioError(f"microphone input needs the sounddevice package and PortAudio "
                         f"(pip install 'streamasr[mic]'; Debian: apt install libportaudio2) ({exc})") from None
    try:
        sd.query_devices(kind="input")
    except Exception as exc:
        raise AudioError(f"no audio input device found ({exc})") from None
    blocks: queue.Queue = queue.Queue()
    try:
        stream = sd.InputStream(samplerate=sample_rate, channels=1, dtype="float32", blocksize=block,
                                callback=lambda data, frames, t, status: blocks.put(data[:, 0].copy()))
        stream.start()
    except Exception as exc:
        raise AudioError(f"cannot open the microphone: {exc}") from None
    return stream, blocks
