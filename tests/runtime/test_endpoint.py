"""Direct unit tests of the Endpointer (runtime/endpoint.py) on a fake stream.

The server tests (tests/serve/test_endpointing.py, tests/serve/test_vad.py) check endpointing end to end
with a random-weight model, where token frames are whatever the model emits. Here a fake stream is driven
by hand (tokens appended, `frames_decoded` advanced, then `update()`/`finish()` as a caller does after each
decoded chunk), so each rule is checked at its exact frame: silence, max_length, the VAD cut and the end of
stream, the word times and confidence of a final, its event, and EndpointConfig validation. No model, no
audio, no wall clock.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from streamasr.errors import StreamASRError
from streamasr.runtime.decoder import Token
from streamasr.runtime.endpoint import EndpointConfig, Endpointer

FRAME_S = 0.08
PIECES = {1: "\u2581he", 2: "llo", 3: "\u2581world", 4: "\u2581yes"}


class FakeText:
    def piece(self, i: int) -> str:
        return PIECES[i]

    def decode(self, ids) -> str:  # like SentencePiece: join the pieces, the word marker becomes a space
        return "".join(PIECES[i] for i in ids).replace("\u2581", " ")


class FakeStream:
    def __init__(self) -> None:
        self.tokens: list[Token] = []
        self.frames_decoded = 0
        self.model = SimpleNamespace(config=SimpleNamespace(frame_seconds=FRAME_S), sample_rate=16000,
                                     text=FakeText())

    def emit(self, tid: int, frame: int, logprob: float = -0.1) -> None:
        self.tokens.append(Token(tid, frame, logprob))
        self.frames_decoded = max(self.frames_decoded, frame + 1)


def _make(**cfg) -> tuple[FakeStream, Endpointer]:
    s = FakeStream()
    return s, Endpointer(s, EndpointConfig(**cfg))


def _advance(s: FakeStream, ep: Endpointer, upto: int) -> list:
    """Decode frame by frame up to `upto`, calling update after each, as a caller does per chunk."""
    finals = []
    while s.frames_decoded < upto:
        s.frames_decoded += 1
        finals += ep.update()
    return finals


def test_silence_rule_fires_after_silence_ms_with_words_times_and_confidence():
    s, ep = _make(silence_ms=800)  # 10 frames of 80 ms
    s.emit(1, 2, -0.1), s.emit(2, 3, -0.3), s.emit(3, 5, -0.5)
    assert ep.update() == []
    assert _advance(s, ep, 15) == []  # 9 blank frames after the last token's frame 5: not yet
    s.frames_decoded = 16
    [final] = ep.update()
    assert (final.reason, final.text) == ("silence", "hello world")
    assert [w.word for w in final.words] == ["hello", "world"]
    hello, world = final.words
    assert hello.start_s == pytest.approx(2 * FRAME_S) and hello.end_s == pytest.approx(4 * FRAME_S)
    assert world.start_s == pytest.approx(5 * FRAME_S) and world.end_s == pytest.approx(6 * FRAME_S)
    assert hello.confidence == round(math.exp(-0.2), 4) and world.confidence == round(math.exp(-0.5), 4)
    assert (final.start_s, final.end_s) == (hello.start_s, world.end_s)
    # the next segment starts empty: more silence gives no second final, later tokens form the next one
    assert ep.partial_text() == "" and _advance(s, ep, 40) == []
    s.emit(4, 40)
    assert ep.partial_text() == "yes"
    [nxt] = _advance(s, ep, 51)
    assert (nxt.reason, nxt.text, nxt.start_s) == ("silence", "yes", pytest.approx(40 * FRAME_S))
    assert ep.finals == 2


def test_zero_disables_the_silence_and_max_length_rules():
    s, ep = _make(silence_ms=0, max_utterance_s=0)
    s.emit(4, 0)
    assert _advance(s, ep, 2000) == []
    [final] = ep.finish()
    assert (final.reason, final.text) == ("end", "yes")


def test_max_length_closes_a_segment_with_tokens_even_without_silence():
    s, ep = _make(silence_ms=800, max_utterance_s=0.8)  # 10 frames
    finals = []
    for f in range(9):  # a token on every frame: never a blank frame
        s.emit(4, f)
        finals += ep.update()
    assert finals == [] and s.frames_decoded == 9
    s.emit(4, 9)
    [final] = ep.update()
    assert final.reason == "max_length" and len(final.words) == 10


def test_leading_silence_does_not_start_the_max_length_count():
    s, ep = _make(silence_ms=0, max_utterance_s=0.8)
    assert _advance(s, ep, 100) == []  # 100 frames without tokens: no empty final
    s.emit(1, 100), s.emit(2, 101)
    assert ep.update() == []  # the segment started at frame 100, not 0
    assert _advance(s, ep, 109) == []
    [final] = _advance(s, ep, 110)
    assert (final.reason, final.text, final.start_s) == ("max_length", "hello", pytest.approx(100 * FRAME_S))


def test_finish_gives_exactly_one_end_final_even_when_empty():
    s, ep = _make(silence_ms=800)
    s.emit(1, 0), s.emit(2, 1)
    [first] = _advance(s, ep, 12)
    assert first.reason == "silence" and s.frames_decoded == 12
    s.frames_decoded = 20  # decoded without an update since the final
    [last] = ep.finish()
    assert (last.reason, last.text, last.words) == ("end", "", [])
    assert last.start_s == pytest.approx(12 * FRAME_S) and last.end_s == pytest.approx(20 * FRAME_S)
    # with tokens: the end final carries them
    s, ep = _make()
    s.emit(3, 4)
    [last] = ep.finish()
    assert (last.reason, last.text, last.end_s) == ("end", "world", pytest.approx(5 * FRAME_S))


def test_final_event_has_exactly_the_protocol_keys():
    s, ep = _make()
    s.emit(1, 0, -0.2), s.emit(2, 1, -0.2)
    [final] = ep.finish()
    event = final.to_event()
    assert set(event) == {"type", "text", "start_s", "end_s", "reason", "words"}
    assert event["type"] == "final" and event["text"] == "hello" and event["reason"] == "end"
    assert event["words"] == [{"word": "hello", "start_s": 0.0, "end_s": pytest.approx(2 * FRAME_S),
                               "confidence": round(math.exp(-0.2), 4)}]


@pytest.mark.parametrize("bad", [{"vad": "webrtc"}, {"vad_threshold": 0.0}, {"vad_threshold": 1.0},
                                 {"vad_threshold": 1.5}, {"vad_silence_ms": 0}, {"vad_silence_ms": -10},
                                 {"silence_ms": -1}, {"max_utterance_s": -1.0}])
def test_config_validation_rejects_bad_values(bad):
    with pytest.raises(StreamASRError):
        EndpointConfig(**bad)


def test_config_accepts_zero_rules_and_silero():
    assert EndpointConfig(silence_ms=0, max_utterance_s=0, vad="silero", vad_threshold=0.3).vad == "silero"


# The VAD cut tests push encoder-frame cut indices straight into the Endpointer's private `_vad_cuts`, as
# `accept_audio` would after the Silero model found a speech end: this bypasses the VAD model (covered end
# to end by tests/serve/test_vad.py) to test only how the cuts split the tokens.

def test_vad_cut_waits_for_the_decoder_and_splits_the_tokens():
    s, ep = _make(silence_ms=0, max_utterance_s=0)
    s.emit(1, 2), s.emit(2, 3), s.emit(3, 6)
    ep._vad_cuts.append(8)
    assert ep.update() == [] and list(ep._vad_cuts) == [8]  # decoded 7 frames: the cut is not reached yet
    s.emit(4, 8), s.emit(3, 9)  # at and after the cut: the next utterance
    [final] = ep.update()
    assert (final.reason, final.text) == ("vad", "hello world")
    assert final.start_s == pytest.approx(2 * FRAME_S) and final.end_s == pytest.approx(7 * FRAME_S)
    assert not ep._vad_cuts and ep.partial_text() == "yes world"
    ep._vad_cuts.append(10)  # exactly at frames_decoded: applied now
    [second] = ep.update()
    assert (second.reason, second.text, second.start_s) == ("vad", "yes world", pytest.approx(8 * FRAME_S))
    assert [(f.reason, f.text) for f in ep.finish()] == [("end", "")]


def test_vad_cut_without_tokens_before_it_gives_no_final():
    s, ep = _make(silence_ms=0, max_utterance_s=0)
    ep._vad_cuts.extend([3, 5])
    s.emit(4, 5)  # only a token at the second cut, none before either
    assert ep.update() == [] and not ep._vad_cuts
    assert ep.partial_text() == "yes" and ep.finals == 0


def test_finish_applies_pending_vad_cuts_before_the_end_final():
    s, ep = _make(silence_ms=0, max_utterance_s=0)
    s.emit(1, 1), s.emit(2, 2), s.emit(3, 12)
    ep._vad_cuts.extend([10, 30])  # the second lies beyond the decoded audio
    s.frames_decoded = 14
    finals = ep.finish()
    assert [(f.reason, f.text) for f in finals] == [("vad", "hello"), ("end", "world")]
    assert list(ep._vad_cuts) == [30]


def test_partial_text_is_the_current_segment_stripped():
    s, ep = _make(silence_ms=800)
    assert ep.partial_text() == ""
    s.emit(1, 0), s.emit(2, 1)
    assert ep.partial_text() == "hello"  # decode gives " hello": stripped
    s.emit(3, 2)
    assert ep.partial_text() == "hello world"
    _advance(s, ep, 13)
    s.emit(2, 13)  # a segment that opens with a continuation piece
    assert ep.partial_text() == "llo"
