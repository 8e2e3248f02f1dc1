"""Reading audio files, raw PCM and the microphone into float32 mono at the model's sample rate.

Resampling uses soxr (high-quality polyphase/sinc), never linear interpolation, which would alias and
cost accuracy. Channels are averaged to mono. Integer PCM is scaled by 1/32768, as NeMo's reader does.
"""

from __future__ import annotations

import os
import queue
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from streamasr.errors import AudioError

#: the lowest sample rate taken from a file header: below it a header is corrupt, not audio (a 1 Hz header on
#: a 100 KB file would otherwise be resampled into gigabytes)
MIN_SAMPLE_RATE = 1000


def _check_rate(rate: int, path: Path | None = None) -> None:
    if rate < MIN_SAMPLE_RATE:
        where = f"{path}: " if path is not None else ""
        raise AudioError(f"{where}sample rate {rate} Hz is not audio (at least {MIN_SAMPLE_RATE} Hz); corrupt header?")


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    _check_rate(from_rate)
    return soxr.resample(samples.astype(np.float32, copy=False), from_rate, to_rate, quality="HQ").astype(np.float32)


def stream_resample(blocks, from_rate: int, to_rate: int):
    """Resample a stream of float32 blocks continuously (one soxr filter state across block boundaries;
    resampling each block on its own would put an edge artefact at every boundary)."""
    if from_rate == to_rate:
        yield from blocks
        return
    _check_rate(from_rate)
    resampler = soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality="HQ")
    for block in blocks:
        yield resampler.resample_chunk(block.astype(np.float32, copy=False))
    yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def to_mono(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32) if samples.ndim == 2 else samples


def _check_path(path: Path) -> None:
    """The path problems libsndfile would report obscurely, as one line naming the file."""
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: not readable (permission denied)")


def read_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Read WAV/FLAC/OGG (anything libsndfile reads) as float32 mono at `sample_rate`."""
    path = Path(path)
    open_audio_file(path).close()  # the checks: path, format, rate, samples
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc
    if data.size == 0:
        raise AudioError(f"{path}: contains no audio samples")
    return resample(to_mono(data), int(rate), sample_rate)


def open_audio_file(path: str | Path) -> sf.SoundFile:
    """An open soundfile.SoundFile (only its header read), or one line naming the problem: a missing,
    unreadable or non-audio file, a directory, an impossible sample rate, a file without samples. Callers
    use it to check inputs before slow work."""
    path = Path(path)
    _check_path(path)
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc
    try:
        _check_rate(int(f.samplerate), path)
        if f.frames == 0:
            raise AudioError(f"{path}: contains no audio samples")
    except AudioError:
        f.close()
        raise
    return f


def iter_audio(path: str | Path, sample_rate: int = 16000, block_s: float = 0.1) -> Iterator[np.ndarray]:
    """Yield a file as float32 mono blocks at `sample_rate`, read `block_s` seconds at a time, so memory does
    not grow with the file's length (read_audio holds the whole file, its mono mix and its resampled copy:
    an hour of 48 kHz stereo is gigabytes).

    The file is opened and checked here, before the first block is asked for, so a bad path fails at once
    with read_audio's one-line messages. Channels are averaged per block (the same sums as to_mono on the
    whole file) and one soxr HQ stream resamples across block boundaries (the filter read_audio's one-shot
    resample runs), so the samples, and the transcript, are read_audio's."""
    path = Path(path)
    f = open_audio_file(path)
    block = max(1, round(f.samplerate * block_s))
    return _drop_empty(stream_resample(_mono_blocks(f, path, block), int(f.samplerate), sample_rate))


def _mono_blocks(f, path: Path, block: int) -> Iterator[np.ndarray]:
    """The open file's blocks mixed to mono; closes the file when done (or when the consumer stops)."""
    got = 0
    with f:
        try:
            while True:
                # read(), unlike blocks(), trims a short read: a truncated file ends early, not with garbage
                data = f.read(block, dtype="float32", always_2d=False)
                if not len(data):
                    break
                got += len(data)
                yield to_mono(data)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioError(f"{path}: not a readable audio file ({exc})") from exc
    if got == 0:  # a header that promised frames the data does not hold
        raise AudioError(f"{path}: contains no audio samples")


def _drop_empty(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The resampler yields empty arrays while its filter fills; a consumer need not see them."""
    return (b for b in blocks if b.size)


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
