"""ChunkSchedule and StreamingEncoder on their own, against a recording fake encoder (no model, no ONNX).

Elsewhere the chunk schedule is exercised only through the stream and the server, where a wrong width,
a missing pre-encode history or a lost tail changes the transcript without saying why. Here the fake's
`encode` records each step's mel input and drop count, and the mel frames carry their own index, so
NeMo's cache-aware schedule is checked exactly for each Nemotron latency mode (right context R = 13, 6,
1, 0; subsampling 8, 9 mel frames of pre-encode cache, 2 pre-encoded frames dropped): the first step
takes 1 + 8R frames with nothing prepended and drops nothing; every later step takes 8(R+1) new frames
after the last 9 frames seen (zeros where there were fewer) and drops 2; any piece sizes run the same
steps; `finish` encodes a short tail (NeMo's compat mode drops one under 8 frames) and always encodes a
stream shorter than the first chunk; `ready()` and `next_width()` agree with all of this.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamasr.model_config import EncoderConfig, LatencyMode
from streamasr.runtime.encoder import ChunkSchedule, StreamingEncoder

N_MELS, PROJ = 3, 2
MODES = (LatencyMode(80, 0), LatencyMode(160, 1), LatencyMode(560, 6), LatencyMode(1120, 13))
# Nemotron's geometry, as convert/architecture.py derives it for subsampling 8: pre-encode cache 8 + 1,
# drop 1 + (9 - 1) // 8; tiny layer sizes, since the fake encoder does no arithmetic.
ENC = EncoderConfig(n_layers=2, d_model=4, n_heads=2, subsampling_factor=8, left_context=70, conv_cache=3,
                    pre_encode_cache=9, drop_extra_pre_encoded=2, max_step_frames=14, latency_modes=MODES,
                    default_latency_ms=560)
BY_RIGHT = pytest.mark.parametrize("mode", MODES, ids=lambda m: f"R{m.right_context}")


class RecordingBackend:
    """encode() records (mel (W, n_mels), drop, cache_len) and returns outputs of the real shapes, with
    T = ceil(W / 8) - drop encoder frames (at least 1) whose values are the step number."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, int, int]] = []

    def encode(self, mel, drop, caches):
        assert mel.ndim == 3 and mel.shape[0] == 1 and mel.shape[2] == N_MELS and mel.dtype == np.float32
        self.calls.append((mel[0].copy(), int(drop), int(caches.cache_len[0])))
        t = max(1, -(-mel.shape[1] // 8) - drop)
        step = float(len(self.calls) - 1)
        dk = ENC.d_model // ENC.n_heads
        kv = np.full((1, ENC.n_layers, ENC.n_heads, t, dk), step, np.float32)
        return (np.full((1, t, ENC.d_model), step, np.float32), np.full((1, t, PROJ), step, np.float32), kv, kv,
                np.zeros((1, ENC.n_layers, ENC.conv_cache, ENC.d_model), np.float32))


def _mel(n: int) -> np.ndarray:
    """n mel frames; frame i holds i + 1 (never 0, so zero padding is told apart from frame 0)."""
    return np.repeat(np.arange(1, n + 1, dtype=np.float32)[:, None], N_MELS, axis=1)


def _encoder(mode, nemo_compat=False):
    backend = RecordingBackend()
    return StreamingEncoder(backend, ENC, mode, N_MELS, nemo_compat=nemo_compat), backend


def _expected_input(frames: np.ndarray, start: int, width: int) -> np.ndarray:
    """The last 9 frames before `start` (zero-padded in front) followed by `width` new frames."""
    history = np.zeros((9, N_MELS), np.float32)
    seen = frames[max(0, start - 9) : start]
    history[9 - len(seen) :] = seen
    return np.concatenate((history, frames[start : start + width]))


@BY_RIGHT
def test_schedule_for_mode(mode):
    r = mode.right_context
    assert ChunkSchedule.for_mode(ENC, mode) == ChunkSchedule(first_chunk=1 + 8 * r, chunk=8 * (r + 1),
                                                              pre_encode_cache=9, drop=2, min_tail=8)


@BY_RIGHT
def test_steps_take_nemo_widths_with_the_mel_history_prepended(mode):
    r = mode.right_context
    first, chunk = 1 + 8 * r, 8 * (r + 1)
    frames = _mel(first + 3 * chunk + chunk // 2)
    enc, backend = _encoder(mode)
    chunks = enc.push(frames)
    assert enc.steps == len(backend.calls) == len(chunks) == 4
    mel, drop, cache_len = backend.calls[0]
    np.testing.assert_array_equal(mel, frames[:first])  # no history, nothing dropped
    assert drop == 0 and cache_len == 0
    for k in range(1, 4):
        mel, drop, cache_len = backend.calls[k]
        start = first + (k - 1) * chunk
        assert mel.shape == (9 + chunk, N_MELS) and drop == 2
        np.testing.assert_array_equal(mel, _expected_input(frames, start, chunk))
        assert cache_len == min(sum(c.encoded.shape[0] for c in chunks[:k]), ENC.left_context)
    # each chunk's encoder frames follow the previous ones; the rest waits for more audio
    assert [c.first_frame for c in chunks] == list(np.cumsum([0] + [c.encoded.shape[0] for c in chunks[:-1]]))
    assert [float(c.encoded_proj[0, 0]) for c in chunks] == [0.0, 1.0, 2.0, 3.0]
    assert not enc.ready() and enc.next_width() == chunk


def test_history_is_zero_padded_while_fewer_than_9_frames_were_seen():
    enc, backend = _encoder(MODES[0])  # R = 0: the first step takes 1 frame, later ones 8
    frames = _mel(1 + 8 * 2)
    enc.push(frames)
    mel = backend.calls[1][0]
    np.testing.assert_array_equal(mel[:8], 0.0)
    np.testing.assert_array_equal(mel[8:], frames[:9])
    np.testing.assert_array_equal(backend.calls[2][0], frames[:17])  # 9 frames of history from then on


@BY_RIGHT
def test_any_piece_sizes_run_the_same_steps(mode):
    r = mode.right_context
    frames = _mel(1 + 8 * r + 5 * 8 * (r + 1) + 5)
    whole, whole_backend = _encoder(mode)
    whole_chunks = whole.push(frames) + whole.finish(frames[:0])
    rng = np.random.default_rng(r)
    for max_piece in (1, 7, 50):
        enc, backend = _encoder(mode)
        chunks, i = [], 0
        while i < len(frames) - 3:
            n = int(rng.integers(0, max_piece + 1))  # empty pieces included
            chunks += enc.push(frames[i : i + n])
            i += n
        chunks += enc.finish(frames[i:])
        assert len(backend.calls) == len(whole_backend.calls) == 7
        for (mel, drop, _), (ref_mel, ref_drop, _) in zip(backend.calls, whole_backend.calls):
            assert drop == ref_drop
            np.testing.assert_array_equal(mel, ref_mel)
        assert [c.first_frame for c in chunks] == [c.first_frame for c in whole_chunks]


@BY_RIGHT
@pytest.mark.parametrize("nemo_compat", [False, True])
def test_finish_encodes_the_tail_unless_nemo_drops_it(mode, nemo_compat):
    r = mode.right_context
    first, chunk = 1 + 8 * r, 8 * (r + 1)
    for tail in range(0, chunk):
        frames = _mel(first + chunk + tail)
        for split in (first + chunk, len(frames)):  # the tail given to finish, or pushed before it
            enc, backend = _encoder(mode, nemo_compat)
            enc.push(frames[:split])
            assert len(backend.calls) == 2
            enc.finish(frames[split:])
            kept = tail > 0 and (not nemo_compat or tail >= 8)
            assert len(backend.calls) == 2 + kept, f"tail {tail}"
            if kept:
                mel, drop, _ = backend.calls[-1]
                assert drop == 2
                np.testing.assert_array_equal(mel, _expected_input(frames, first + chunk, tail))
            assert not enc.ready() and enc.finish(frames[:0]) == []  # nothing left behind


@BY_RIGHT
@pytest.mark.parametrize("nemo_compat", [False, True])
def test_a_stream_shorter_than_the_first_chunk_gets_one_step(mode, nemo_compat):
    first = 1 + 8 * mode.right_context
    for n in range(1, first):
        frames = _mel(n)
        enc, backend = _encoder(mode, nemo_compat)
        assert enc.push(frames) == []
        chunks = enc.finish(frames[:0])
        assert len(chunks) == len(backend.calls) == 1 and chunks[0].first_frame == 0
        mel, drop, _ = backend.calls[0]
        assert drop == 0
        np.testing.assert_array_equal(mel, frames)
    enc, backend = _encoder(mode, nemo_compat)
    assert enc.finish(_mel(0)) == [] and backend.calls == []  # an empty stream runs no step


@BY_RIGHT
def test_ready_and_next_width_follow_the_schedule(mode):
    r = mode.right_context
    first, chunk = 1 + 8 * r, 8 * (r + 1)
    enc, backend = _encoder(mode)
    assert enc.next_width() == first and not enc.ready()
    enc.buffer(_mel(first - 1))
    assert not enc.ready() and backend.calls == []  # buffer never encodes
    enc.buffer(_mel(1))
    assert enc.ready()
    enc.push(_mel(0))
    assert enc.steps == 1 and enc.next_width() == chunk and not enc.ready()
    enc.buffer(_mel(chunk - 1))
    assert not enc.ready()
    enc.buffer(_mel(1 + 2 * chunk))
    assert enc.ready() and len(backend.calls) == 1
    enc.push(_mel(0))
    assert enc.steps == 4 and enc.next_width() == chunk and not enc.ready()
