"""GreedyDecoder on its own, against a scripted fake backend (no model, no ONNX).

Elsewhere the decoder is exercised only through the stream and the server, where a wrong rule (a lost
label, a frame index off by a chunk, a missed repeat on a frame) shows up as a changed transcript at
best. Here the fake's joint picks each frame's label from a table keyed by (frame value, labels emitted
so far), the latter read from the fake prediction output, so NeMo's greedy_batch semantics fix exactly
which tokens must come out: blank advances the frame, a label is emitted at its global frame and the
same frame is tried again, at most `max_symbols_per_frame` labels per frame (then the frame advances
without evaluating blank), the prediction network is primed once with blank from a zero state and run
once per emitted label, with its state carried from chunk to chunk.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamasr.model_config import DecoderConfig
from streamasr.runtime.decoder import GreedyDecoder, Token

BLANK = 5
LAYERS, HIDDEN = 2, 4


def _cfg(max_symbols: int = 10) -> DecoderConfig:
    return DecoderConfig(vocab_size=5, blank_id=BLANK, pred_hidden=HIDDEN, pred_layers=LAYERS, joint_hidden=8,
                         max_symbols_per_frame=max_symbols)


def _logp(frame: int, emitted: int) -> float:
    return float(np.float32(-0.5 - 0.25 * frame - 0.125 * emitted))


class ScriptedBackend:
    """predict: h counts the calls along the chain, c holds the last label; the projected output is
    (labels emitted since priming, last label). joint: frame t's label is script[(frame value, emitted)],
    blank when absent; the frame value is encoded_proj[t, 0]."""

    def __init__(self, script: dict[tuple[int, int], int]):
        self.script = script
        self.predict_calls: list[tuple[int, float, float]] = []  # (label, h in, c in)
        self.joint_calls: list[tuple[int, int]] = []  # (first frame value, emitted)

    def predict(self, label, h, c):
        assert label.shape == (1,) and label.dtype == np.int64
        assert h.shape == c.shape == (LAYERS, 1, HIDDEN)
        self.predict_calls.append((int(label[0]), float(h[0, 0, 0]), float(c[0, 0, 0])))
        h2, c2 = h + 1, np.full_like(c, label[0])
        return np.array([[h2[0, 0, 0] - 1, label[0]]], dtype=np.float32), h2, c2

    def joint(self, encoded_proj, pred_proj):
        assert encoded_proj.ndim == 3 and encoded_proj.shape[0] == 1 and pred_proj.shape == (1, 2)
        emitted = int(pred_proj[0, 0])
        frames = [int(v) for v in encoded_proj[0, :, 0]]
        self.joint_calls.append((frames[0], emitted))
        best = np.array([[self.script.get((f, emitted), BLANK) for f in frames]], dtype=np.int64)
        logp = np.array([[_logp(f, emitted) for f in frames]], dtype=np.float32)
        return best, logp


def _frames(first: int, n: int) -> np.ndarray:
    """(n, 2) encoder projections whose first column is the global frame index."""
    out = np.zeros((n, 2), dtype=np.float32)
    out[:, 0] = np.arange(first, first + n)
    out[:, 1] = 7.0
    return out


def _as_tuples(tokens: list[Token]) -> list[tuple[int, int, float]]:
    return [(t.id, t.frame, t.logprob) for t in tokens]


def test_primed_once_with_blank_from_a_zero_state():
    backend = ScriptedBackend({})
    GreedyDecoder(backend, _cfg())
    assert backend.predict_calls == [(BLANK, 0.0, 0.0)]
    assert backend.joint_calls == []


def test_all_blank_emits_nothing_and_counts_the_frames():
    backend = ScriptedBackend({})
    dec = GreedyDecoder(backend, _cfg())
    assert dec.decode_chunk(_frames(0, 6)) == []
    assert dec.frames_decoded == 6
    assert dec.decode_chunk(_frames(6, 3)) == []
    assert dec.frames_decoded == 9 and dec.tokens == []
    assert len(backend.predict_calls) == 1  # the priming call only
    assert len(backend.joint_calls) == 2  # one call per chunk scores all its frames


def test_token_gets_its_global_frame_and_the_joint_logprob():
    backend = ScriptedBackend({(6, 0): 3})
    dec = GreedyDecoder(backend, _cfg())
    assert dec.decode_chunk(_frames(0, 4)) == []
    new = dec.decode_chunk(_frames(4, 4))
    assert _as_tuples(new) == [(3, 6, _logp(6, 0))]
    assert dec.tokens == new and dec.frames_decoded == 8


def test_several_labels_on_one_frame_then_blank():
    backend = ScriptedBackend({(1, 0): 2, (1, 1): 4, (1, 2): 0, (3, 3): 1})
    dec = GreedyDecoder(backend, _cfg())
    new = dec.decode_chunk(_frames(0, 5))
    assert _as_tuples(new) == [(2, 1, _logp(1, 0)), (4, 1, _logp(1, 1)), (0, 1, _logp(1, 2)), (1, 3, _logp(3, 3))]
    # the frame is tried again after each label: the joint sees frame 1 with 1, 2 and 3 labels emitted
    assert backend.joint_calls[:4] == [(0, 0), (1, 1), (1, 2), (1, 3)]


def test_max_symbols_per_frame_advances_without_evaluating_blank():
    script = {(1, n): 2 for n in range(10)}  # frame 1 would emit forever
    script[(2, 3)] = 4
    backend = ScriptedBackend(script)
    dec = GreedyDecoder(backend, _cfg(max_symbols=3))
    new = dec.decode_chunk(_frames(0, 4))
    assert [(t.id, t.frame) for t in new] == [(2, 1), (2, 1), (2, 1), (4, 2)]
    # after the third label the next joint call starts at frame 2: frame 1 is never scored with 3 emitted
    assert (1, 3) not in backend.joint_calls
    assert backend.joint_calls == [(0, 0), (1, 1), (1, 2), (2, 3), (2, 4)]


def test_max_symbols_on_the_last_frame_ends_the_chunk():
    backend = ScriptedBackend({(2, n): 1 for n in range(10)})
    dec = GreedyDecoder(backend, _cfg(max_symbols=2))
    assert [(t.id, t.frame) for t in dec.decode_chunk(_frames(0, 3))] == [(1, 2), (1, 2)]
    assert dec.frames_decoded == 3
    assert dec.decode_chunk(_frames(3, 2)) == []  # the next chunk starts fresh at frame 3


@pytest.mark.parametrize("max_symbols", [1, 2, 3])
def test_symbol_count_resets_on_a_later_frame(max_symbols):
    # frame 0 takes one label (then blank); every later frame would take labels without end
    script = {(0, 0): 1}
    for frame in (1, 2):
        script.update({(frame, n): 3 for n in range(1, 20)})
    backend = ScriptedBackend(script)
    dec = GreedyDecoder(backend, _cfg(max_symbols=max_symbols))
    frames = [t.frame for t in dec.decode_chunk(_frames(0, 3))]
    assert frames == [0] + [1] * max_symbols + [2] * max_symbols


def test_prediction_runs_once_per_label_with_its_state_carried_across_chunks():
    backend = ScriptedBackend({(0, 0): 1, (0, 1): 2, (3, 2): 4, (5, 3): 0})
    dec = GreedyDecoder(backend, _cfg())
    dec.decode_chunk(_frames(0, 2))
    dec.decode_chunk(_frames(2, 2))
    dec.decode_chunk(_frames(4, 2))
    assert [(t.id, t.frame) for t in dec.tokens] == [(1, 0), (2, 0), (4, 3), (0, 5)]
    # (label, h in, c in): primed with blank from zeros, then each label fed once, the state continuing
    assert backend.predict_calls == [(BLANK, 0.0, 0.0), (1, 1.0, BLANK), (2, 2.0, 1.0), (4, 3.0, 2.0),
                                     (0, 4.0, 4.0)]
    assert len(backend.joint_calls) == len(dec.tokens) + 3  # once per label plus once per chunk


SPLIT_SCRIPT = {(0, 0): 1, (2, 1): 2, (2, 2): 3, (3, 3): 4, (5, 4): 0, (5, 5): 0, (5, 6): 0, (6, 6): 3,
                (6, 7): 2, (7, 8): 1, (7, 9): 1}


@pytest.mark.parametrize("max_symbols", [2, 10])
def test_one_chunk_equals_the_same_frames_in_two_chunks(max_symbols):
    n = 8
    whole_backend = ScriptedBackend(SPLIT_SCRIPT)
    whole = GreedyDecoder(whole_backend, _cfg(max_symbols))
    whole.decode_chunk(_frames(0, n))
    assert len(whole.tokens) >= 8  # the script must make the comparison meaningful
    for split in range(1, n):
        backend = ScriptedBackend(SPLIT_SCRIPT)
        dec = GreedyDecoder(backend, _cfg(max_symbols))
        dec.decode_chunk(_frames(0, split))
        dec.decode_chunk(_frames(split, n - split))
        assert _as_tuples(dec.tokens) == _as_tuples(whole.tokens), f"split at {split}"
        assert backend.predict_calls == whole_backend.predict_calls
        assert dec.frames_decoded == n
