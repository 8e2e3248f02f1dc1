"""Fused decoding against NeMo 3.0.0 itself: phrase boosting (`greedy.boosting_tree` +
`boosting_tree_alpha`) and n-gram LM fusion (`greedy.ngram_lm_model` + `ngram_lm_alpha`) on NeMo's
cache-aware streaming loop (`conformer_stream_step`, label-looping `greedy_batch`), on the random models of
the parity suite, in every latency mode.

The phrases are words the random model itself writes for other audio, and the LM is trained on its own
transcripts, so that fusion has candidates to promote: every fused comparison also asserts that the output
changed compared with unfused decoding, or token equality would prove nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamasr.eval.nemo_boosting import fused_decoding, write_token_arpa
from streamasr.eval.nemo_reference import nemo_streaming
from streamasr.runtime.batch import decode_streams

FILES = ["ls_2412-153948-0000.wav", "arctic_slt_a0002.wav"]
PHRASE_SOURCES = ["ls_1272-128104-0000.wav", "jfk_inaugural_1961.wav"]
LM_SOURCES = ["ls_1272-141231-0002.wav", "ls_3536-23268-0010.wav", "librivox_sense_and_sensibility_0870.wav",
              "librivox_sense_and_sensibility_0890.wav", "jfk_inaugural_1961.wav"]

_cache: dict = {}


def _phrases(built, speech, which: int) -> list[str]:
    """Pieces the model nearly emits: words it writes for other utterances (multi-piece phrases, set 0 also a
    two-word one) and every other word-initial piece of its vocabulary spelled as a word."""
    key = ("phrases", built["name"], which)
    if key not in _cache:
        model = built["model"]
        words = [w for name in PHRASE_SOURCES for w in model.transcribe(speech[name], latency_ms=160).text.split()]
        distinct = list(dict.fromkeys(w for w in words if len(w) >= 3))
        assert len(distinct) >= 4, words
        pieces = [p[1:] for p in model.text.pieces if p.startswith("\u2581") and p[1:].isalpha()]
        assert len(pieces) >= 6, pieces
        _cache[key] = (distinct[which::2][:6] + ([" ".join(words[:2])] if which == 0 else [])
                       + pieces[which::2])
    return _cache[key]


def _nemo(built, speech, name: str, latency_ms: int, **fusion):
    """NeMo's fused streaming output (memoised: the batch test reuses the single-stream references)."""
    key = ("nemo", built["name"], name, latency_ms, repr(sorted(fusion.items())))
    if key not in _cache:
        mode = built["model"].config.encoder.mode(latency_ms)
        with fused_decoding(built["nemo"], **fusion):
            _cache[key] = nemo_streaming(built["nemo"], speech[name], mode.right_context)
    return _cache[key]


def _changed(a: list[int], b: list[int]) -> int:
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def _assert_same(result, ref, model, what):
    assert result.token_ids == ref.token_ids, what
    frame_s = model.config.frame_seconds
    assert result.token_times_s == [round(f * frame_s, 3) for f in ref.token_frames], what
    assert result.text == ref.text, what


@pytest.mark.parametrize("latency_ms", [80, 160, 560, 1120])
def test_boosted_streaming_matches_nemo(nemo_built, speech, latency_ms):
    """Default knobs (context score 1, depth scaling 2, alpha 1): token-identical to NeMo in every mode,
    phrases spanning chunk boundaries (at 80 ms every chunk is one frame), and the output changed."""
    model = nemo_built["model"]
    name = FILES[0] if latency_ms in (560, 1120) else FILES[1]
    phrases = _phrases(nemo_built, speech, 0)
    ref = _nemo(nemo_built, speech, name, latency_ms, phrases=phrases, alpha=1.0)
    result = model.transcribe(speech[name], latency_ms, nemo_compat=True, hotwords=phrases)
    _assert_same(result, ref, model, (name, phrases))
    plain = model.transcribe(speech[name], latency_ms, nemo_compat=True)
    assert _changed(result.token_ids, plain.token_ids) > 0, "boosting changed nothing: the test would prove nothing"
    assert set(result.hotwords) <= set(phrases)


def test_scores_and_tree_options_match_nemo(nemo_built, speech):
    """Other phrase sets, scores and tree parameters; score 0 is exactly unboosted decoding."""
    model = nemo_built["model"]
    name = FILES[0]
    other = _phrases(nemo_built, speech, 1)
    plain = model.transcribe(speech[name], 560, nemo_compat=True)
    for fusion in ({"phrases": other, "alpha": 2.0, "context_score": 1.5, "depth_scaling": 1.0},
                   {"phrases": _phrases(nemo_built, speech, 0) + other, "alpha": 0.5}):
        ref = _nemo(nemo_built, speech, name, 560, **fusion)
        result = model.transcribe(speech[name], 560, nemo_compat=True, hotwords=fusion["phrases"],
                                  hotword_score=fusion["alpha"],
                                  hotword_context_score=fusion.get("context_score", 1.0),
                                  hotword_depth_scaling=fusion.get("depth_scaling", 2.0))
        _assert_same(result, ref, model, fusion)
        assert _changed(result.token_ids, plain.token_ids) > 0, fusion
    zero = model.transcribe(speech[name], 560, nemo_compat=True, hotwords=other, hotword_score=0.0)
    assert zero.token_ids == plain.token_ids  # NeMo's boosting_tree_alpha=0 is unboosted (research §3)


def test_per_stream_phrase_sets_in_one_batch(nemo_built, speech):
    """Streams with different phrase sets (and one without) share batched encoder steps; each decodes as
    NeMo does with its own set alone."""
    model = nemo_built["model"]
    name = FILES[0]
    a, b = _phrases(nemo_built, speech, 0), _phrases(nemo_built, speech, 1)
    plans = [({"phrases": a, "alpha": 1.0}, {"hotwords": a}),
             ({"phrases": b, "alpha": 2.0, "context_score": 1.5, "depth_scaling": 1.0},
              {"hotwords": b, "hotword_score": 2.0, "hotword_context_score": 1.5, "hotword_depth_scaling": 1.0}),
             (None, {})]
    streams = [model.stream(560, nemo_compat=True, **kwargs) for _, kwargs in plans]
    x = speech[name]
    rng = np.random.default_rng(5)
    pos = 0
    while pos < x.size:
        n = int(rng.integers(800, 5000))
        for s in streams:
            s.feed(x[pos:pos + n])
        pos += n
        while any(s.is_ready for s in streams):
            decode_streams(streams)
    results = [s.finish() for s in streams]
    plain = model.transcribe(x, 560, nemo_compat=True)
    assert results[2].token_ids == plain.token_ids
    for result, (fusion, _) in zip(results[:2], plans[:2]):
        _assert_same(result, _nemo(nemo_built, speech, name, 560, **fusion), model, fusion)
        assert _changed(result.token_ids, plain.token_ids) > 0
    assert results[0].token_ids != results[1].token_ids


@pytest.fixture
def token_arpa(nemo_built, speech, tmp_path):
    """A trigram ARPA over the model's own transcripts of other audio, in NeMo's token encoding."""
    model = nemo_built["model"]
    return write_token_arpa([model.transcribe(speech[n], latency_ms=560).token_ids for n in LM_SOURCES],
                            tmp_path / "tokens.arpa", order=3)


@pytest.mark.parametrize("latency_ms", [160, 1120])
def test_ngram_lm_matches_nemo(nemo_built, speech, token_arpa, latency_ms):
    model = nemo_built["model"]
    name = FILES[1] if latency_ms == 160 else FILES[0]
    ref = _nemo(nemo_built, speech, name, latency_ms, lm_path=token_arpa, lm_alpha=0.3)
    result = model.transcribe(speech[name], latency_ms, nemo_compat=True, lm=token_arpa, lm_weight=0.3)
    _assert_same(result, ref, model, token_arpa)
    plain = model.transcribe(speech[name], latency_ms, nemo_compat=True)
    assert _changed(result.token_ids, plain.token_ids) > 0, "the LM changed nothing"


def test_lm_and_hotwords_together_match_nemo(nemo_built, speech, token_arpa):
    model = nemo_built["model"]
    name = FILES[1]
    phrases = _phrases(nemo_built, speech, 0)
    ref = _nemo(nemo_built, speech, name, 560, phrases=phrases, alpha=2.0, lm_path=token_arpa, lm_alpha=0.3)
    lm_only = model.transcribe(speech[name], 560, nemo_compat=True, lm=token_arpa, lm_weight=0.3)
    result = model.transcribe(speech[name], 560, nemo_compat=True, hotwords=phrases, hotword_score=2.0,
                              lm=token_arpa, lm_weight=0.3)
    _assert_same(result, ref, model, "lm + hotwords")
    assert _changed(result.token_ids, lm_only.token_ids) > 0, "the hotwords changed nothing on top of the LM"
