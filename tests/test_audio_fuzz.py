"""The audio decoders fuzzed with Hypothesis (issue 18): whatever bytes arrive, raw PCM or a file, the result
is float32 mono audio or a one-line AudioError, never another exception.

Bounded and deterministic (derandomize, no example database): each test runs a fixed set of a few hundred
small inputs in a few seconds.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamasr.audio import pcm_to_float, read_audio
from streamasr.errors import AudioError

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: a decoded file holds at most this many samples per byte of the file (8 covers every WAV codec libsndfile
#: reads, down to GSM 6.10's 1.6 bits a sample) ...
MAX_SAMPLES_PER_BYTE = 8
#: ... and is stored at a sample rate of at least this (telephone audio is 8 kHz; nothing is sampled slower)
MIN_PLAUSIBLE_RATE = 1000


def _check_samples(x, what: str) -> np.ndarray:
    assert isinstance(x, np.ndarray), (what, type(x))
    assert x.dtype == np.float32 and x.ndim == 1, (what, x.dtype, x.shape)
    return x


# ---------------------------------------------------------------------------------------------- raw PCM


def _floats_bytes():
    """f32le frames built from floats, NaN and infinities included (random bytes hit them only rarely)."""
    return st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=64).map(
        lambda v: np.asarray(v, dtype="<f4").tobytes())


@FUZZ
@given(raw=st.binary(max_size=4096))
@example(raw=b"")
@example(raw=b"\x00")
@example(raw=b"\x00\x80\xff\x7f")  # -32768 and 32767: the ends of the range
def test_s16le_decoder_on_arbitrary_bytes(raw):
    try:
        x = pcm_to_float(raw, "s16le")
    except AudioError as exc:
        assert len(raw) % 2, f"{len(raw)} whole s16le samples refused: {exc}"
        assert str(exc)
        return
    assert len(raw) % 2 == 0, f"{len(raw)} bytes decoded as s16le"
    _check_samples(x, "s16le")
    assert x.size == len(raw) // 2
    assert np.isfinite(x).all() and (x >= -1.0).all() and (x < 1.0).all()
    np.testing.assert_array_equal(x, np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=4096), _floats_bytes(),
                     st.tuples(_floats_bytes(), st.binary(min_size=1, max_size=3)).map(b"".join)))
@example(raw=b"")
@example(raw=np.array([0.25, np.nan], "<f4").tobytes())
@example(raw=np.array([np.inf], "<f4").tobytes())
@example(raw=np.array([-np.inf, 0.0], "<f4").tobytes())
@example(raw=b"\x00\x00\x80")
def test_f32le_decoder_on_arbitrary_bytes(raw):
    whole = len(raw) % 4 == 0
    values = np.frombuffer(raw[: len(raw) - len(raw) % 4], "<f4")
    try:
        x = pcm_to_float(raw, "f32le")
    except AudioError as exc:
        assert not whole or not np.isfinite(values).all(), f"finite whole f32le samples refused: {exc}"
        assert str(exc)
        return
    assert whole, f"{len(raw)} bytes decoded as f32le"
    assert np.isfinite(values).all(), "NaN or infinity accepted as audio"
    _check_samples(x, "f32le")
    assert x.size == len(raw) // 4
    # finite float samples are passed on as sent (float PCM may exceed [-1, 1]; it is not clipped)
    np.testing.assert_array_equal(x, values)


@FUZZ
@given(encoding=st.text(max_size=12).filter(lambda e: e not in ("s16le", "f32le")), raw=st.binary(max_size=16))
def test_unknown_pcm_encoding_is_an_audio_error(encoding, raw):
    with pytest.raises(AudioError):
        pcm_to_float(raw, encoding)


# ---------------------------------------------------------------------------------------------- files


def _real_wavs() -> list[Path]:
    # the workplace's speech; tests/conftest.py sets the variable (to ../shared/data/speech by default)
    wavs = sorted(Path(os.environ["STREAMASR_SPEECH_DIR"]).glob("*.wav"))[:8]
    assert wavs, "no WAV files in $STREAMASR_SPEECH_DIR"
    return wavs


def _short_wav() -> bytes:
    """A real 16-bit WAV cut to its first 0.1 s (header sizes fixed): small, so a mutation that makes
    libsndfile read it at a very different rate stays cheap."""
    raw = _real_wavs()[0].read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:16] == b"WAVEfmt " and raw[36:40] == b"data", "expected a 44-byte header"
    data = raw[44 : 44 + 3200]
    return raw[:4] + struct.pack("<I", 36 + len(data)) + raw[8:40] + struct.pack("<I", len(data)) + data


#: (offset, struct format) of the canonical WAV header's fields after "RIFF": sizes, format tag, channels,
#: sample rate, byte rate, block align, bits per sample, data size
WAV_FIELDS = [(4, "<I"), (16, "<I"), (20, "<H"), (22, "<H"), (24, "<I"), (28, "<I"), (32, "<H"), (34, "<H"),
              (40, "<I")]


def _edge_ints():
    return st.one_of(st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32, 255, 256, 8000, 16000, 44100, 0x7FFF, 0x8000,
                                      0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]),
                     st.integers(0, 0xFFFFFFFF))


@st.composite
def wav_mutations(draw):
    """Edits to the short real WAV: header fields overwritten (edge values), bytes flipped (mostly in the
    header), and possibly a cut. Applied by _mutate, so the examples below are readable."""
    fields = [(offset, fmt, draw(_edge_ints()) & ((1 << 8 * struct.calcsize(fmt)) - 1))
              for offset, fmt in draw(st.lists(st.sampled_from(WAV_FIELDS), max_size=3))]
    flips = draw(st.lists(st.tuples(st.one_of(st.integers(0, 63), st.integers(0, 3243)), st.integers(1, 255)),
                          max_size=6))
    cut = draw(st.one_of(st.none(), st.integers(0, 3244)))
    return fields, flips, cut


def _mutate(fields, flips, cut) -> bytes:
    b = bytearray(_short_wav())
    for offset, fmt, value in fields:
        struct.pack_into(fmt, b, offset, value)
    for pos, xor in flips:
        b[pos % len(b)] ^= xor
    return bytes(b if cut is None else b[:cut])


def _read_fuzzed(tmp_path_factory, contents: bytes, suffix: str = ".wav") -> None:
    path = tmp_path_factory.mktemp("fuzz", numbered=True) / f"input{suffix}"
    path.write_bytes(contents)
    try:
        x = read_audio(path)
    except AudioError as exc:
        assert str(exc)
        return
    finally:
        path.unlink()
    _check_samples(x, "read_audio")
    assert x.size > 0, "read_audio returned no samples instead of an AudioError"
    # a small corrupt file must not decode into hours of audio (memory, and the time to transcribe it):
    # past this bound the header's sample rate is implausibly low
    bound = MAX_SAMPLES_PER_BYTE * len(contents) * 16000 // MIN_PLAUSIBLE_RATE
    assert x.size <= bound, (f"a {len(contents)}-byte file read as {x.size} samples ({x.size / 16000:.0f} s at "
                             f"16 kHz), more than {bound}: an implausible sample rate was resampled instead of "
                             "being refused")


@settings(FUZZ, max_examples=150)
@given(contents=st.one_of(
    st.binary(max_size=2048),
    # past the magic numbers, so libsndfile's WAV / FLAC / OGG parsers see the garbage
    st.tuples(st.sampled_from([b"RIFF\x24\x08\x00\x00WAVEfmt ", b"RIFF", b"fLaC", b"OggS", b"FORM", b"RIFX"]),
              st.binary(max_size=2048)).map(b"".join)))
@example(contents=b"")
def test_read_audio_on_random_bytes(tmp_path_factory, contents):
    _read_fuzzed(tmp_path_factory, contents)


@settings(FUZZ, max_examples=60)
@given(index=st.integers(0, 7), cut=st.floats(0.0, 1.0))
@example(index=0, cut=0.0)
@example(index=0, cut=43 / 124206)
def test_read_audio_on_truncated_real_wavs(tmp_path_factory, index, cut):
    wavs = _real_wavs()
    raw = wavs[index % len(wavs)].read_bytes()
    contents = raw[: int(cut * len(raw))]
    _read_fuzzed(tmp_path_factory, contents)


@FUZZ
@given(mutation=wav_mutations())
@example(mutation=([], [], None))  # the short WAV as it is
@example(mutation=([(24, "<I", 1)], [], None))  # a sample rate of 1 Hz
@example(mutation=([(22, "<H", 0)], [], None))  # no channels
@example(mutation=([(20, "<H", 3)], [], None))  # 16-bit data declared as IEEE float
@example(mutation=([(40, "<I", 0xFFFFFFFF)], [], None))  # a data chunk larger than the file
def test_read_audio_on_corrupted_real_wav(tmp_path_factory, mutation):
    _read_fuzzed(tmp_path_factory, _mutate(*mutation))
