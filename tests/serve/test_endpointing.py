"""Endpointing: finals at trailing silence and at the maximum utterance length; words and confidence."""

from __future__ import annotations

import math

import numpy as np
from session_run import run_session

from streamasr.runtime.decoder import Token
from streamasr.runtime.endpoint import EndpointConfig
from streamasr.runtime.words import assemble_words, trailing_blank_frames


def _run(model, samples, endpoint, latency=160):
    s, timed = run_session(model, [samples], endpoint, latency)
    events = [e for e, _ in timed]
    return s, [e for e in events if e["type"] == "final"], events


def _with_pauses(short_speech, pause_s=2.0):
    rng = np.random.default_rng(0)
    parts = []
    for x in short_speech:
        parts += [x, np.zeros(int(16000 * pause_s), np.float32)]
    x = np.concatenate(parts)
    return x + 1e-3 * rng.standard_normal(x.size).astype(np.float32)


def _threshold(gaps: list[int]) -> int | None:
    """A silence threshold (frames) that the longest gap exceeds by a chunk, with no gap within a chunk's
    rounding of it (which would make the expected split ambiguous)."""
    top = min(10, max(gaps, default=0) - 2)
    return next((t for t in range(top, 2, -1) if not any(t <= g < t + 2 for g in gaps)), None)


def test_pauses_split_into_utterances_at_the_rule(serve_model, speech):
    # a random-weight model does not fall silent in pauses as a trained one does, so look through groups of
    # real utterances joined by pauses for one whose token gaps give an unambiguous silence threshold; the
    # threshold comes from the unsegmented run, and the server must split exactly where the rule says
    frame_s = serve_model.config.frame_seconds
    names = sorted(speech)
    for i in range(0, len(names) - 2, 3):
        x = _with_pauses([speech[n][: 16000 * 6] for n in names[i : i + 3]])
        ref = serve_model.transcribe(x, 160)
        frames = [round(t / frame_s) for t in ref.token_times_s]
        gaps = [b - a - 1 for a, b in zip(frames, frames[1:])]
        silence = _threshold(gaps)
        if silence is not None:
            break
    assert silence is not None, "no group of utterances gives an unambiguous silence threshold"
    # expected split points from the unsegmented run's token frames: a gap longer than silence + one chunk
    # always ends the utterance, a gap shorter than the silence never does
    expected, cur = [], [ref.token_ids[0]]
    for g, tid in zip(gaps, ref.token_ids[1:]):
        if g >= silence + 2:
            expected.append(cur)
            cur = []
        cur.append(tid)
    expected.append(cur)
    endpoint_ms = round(silence * frame_s * 1000)
    s, finals, events = _run(serve_model, x, EndpointConfig(endpoint_ms, 60))
    texts = [f["text"] for f in finals if f["text"]]
    assert texts == [serve_model.text.decode(ids).strip() for ids in expected]
    assert len(texts) >= 2, "the test audio must produce at least one endpoint"
    # the stream went on after each endpoint: all tokens equal the unsegmented run's
    assert s.stream.result().token_ids == ref.token_ids
    # finals are ordered in time and the pause lies between them
    nonempty = [f for f in finals if f["text"]]
    for a, b in zip(nonempty, nonempty[1:]):
        assert b["start_s"] - a["end_s"] >= endpoint_ms / 1000 - 1e-6
    assert events[-1]["type"] == "final"  # the end of stream always closes with a final (empty here)
    assert [f["reason"] for f in finals] == ["silence"] * (len(finals) - 1) + ["end"]


def test_max_utterance_length_forces_finals(serve_model, short_speech):
    x = np.concatenate(short_speech)
    ref = serve_model.transcribe(x, 160)
    _, finals, _ = _run(serve_model, x, EndpointConfig(0, 0.4))
    spoken = [f for f in finals if f["text"]]
    assert len(spoken) >= 2
    assert {f["reason"] for f in finals[:-1]} == {"max_length"} and finals[-1]["reason"] == "end"
    for f in spoken:
        assert f["end_s"] - f["start_s"] <= 0.4 + 0.25  # the limit, plus a chunk and a frame
    assert "".join(f["text"] for f in finals).replace(" ", "") == ref.text.replace(" ", "")


def test_no_endpointing_gives_one_final(serve_model, short_speech):
    x = _with_pauses(short_speech)
    _, finals, _ = _run(serve_model, x, EndpointConfig(0, 0))
    assert len(finals) == 1 and finals[0]["text"] == serve_model.transcribe(x, 160).text.strip()


def test_words_from_pieces():
    pieces = ["\u2581hel", "lo", "\u2581wor", "ld", "\u2581"]
    toks = [Token(i, f, lp) for i, (f, lp) in enumerate([(3, -0.1), (4, -0.3), (10, 0.0), (10, -2.0), (12, -0.5)])]
    words = assemble_words(toks, pieces, lambda ids: "".join(pieces[i] for i in ids).replace("\u2581", " "), 0.08)
    assert [w.word for w in words] == ["hello", "world"]  # the lone '▁' makes no word
    assert (words[0].start_s, words[0].end_s) == (0.24, 0.4)
    assert (words[1].start_s, words[1].end_s) == (0.8, 0.88)
    assert math.isclose(words[0].confidence, math.exp(-0.2), rel_tol=1e-3)
    assert math.isclose(words[1].confidence, math.exp(-1.0), rel_tol=1e-3)
    assert trailing_blank_frames(20, 12, 0) == 7 and trailing_blank_frames(20, None, 5) == 15
