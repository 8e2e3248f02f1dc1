"""Parity with NeMo for multilingual prompt models (NeMo's `EncDecRNNTBPEModelWithPrompt`).

Two random-weight prompt models of different configurations (tiny-ml-a: joint dropout, two LSTM layers, layer norm,
untied biases; tiny-ml-b: none of those, xscaling, left context 28) are built, saved and restored by NeMo and
converted by streamasr. In every trained mode and for several languages (auto included) the token ids equal
those of NeMo's `conformer_stream_step` loop after `set_inference_prompt`, and the prompt's output (what the
joint sees) is within 1e-3 of NeMo's for every chunk. The prompt is first shown to matter: different
languages give different tokens, or these comparisons would prove nothing about it.
"""

from __future__ import annotations

import re

import pytest

from streamasr.eval.nemo_reference import nemo_streaming
from streamasr.eval.verify import max_chunk_difference, run_with_encodings
from streamasr.runtime.batch import decode_streams

FILES = ["jfk_inaugural_1961.wav", "ls_2412-153948-0000.wav", "arctic_slt_a0005.wav"]
LANGUAGES = ["en-US", "de-DE", "auto"]
#: NeMo's `strip_lang_tags` rule: what our text does to the tags the model emits in auto mode
TAG = re.compile(r"\s*<[a-z]{2}-[A-Z]{2}>")


def test_prompt_model_is_speech_like_and_the_language_matters(nemo_prompt_built, speech):
    model = nemo_prompt_built["model"]
    assert model.languages["auto"] == 101 and model.languages["no"] == 27 and model.default_language == "en-US"
    assert model.latency_modes == [80, 320, 560, 1120] and model.config.encoder.default_latency_ms == 320
    differ = 0
    tokens = dict.fromkeys(LANGUAGES + ["fr-FR"], 0)
    frames = 0.0
    for name in FILES:
        outputs = {}
        for language in tokens:
            result = model.transcribe(speech[name], language=language)
            assert result.token_ids, (name, language)  # every language decodes every file into something
            tokens[language] += len(result.token_ids)
            outputs[language] = tuple(result.token_ids)
        frames += result.audio_s / model.config.frame_seconds
        differ += len(set(outputs.values())) == len(outputs)
    for language, n in tokens.items():  # a few tenths of a token per frame in every language
        assert 0.05 <= n / frames <= 1.5, (language, n, frames)
    assert differ >= 2, "the language prompt must change the tokens on most files"


@pytest.mark.parametrize("latency_ms", [80, 320, 560, 1120])
def test_prompt_streaming_matches_nemo(nemo_prompt_built, speech, latency_ms):
    model, nemo = nemo_prompt_built["model"], nemo_prompt_built["nemo"]
    mode = model.config.encoder.mode(latency_ms)
    total_tokens = 0
    for language in LANGUAGES:
        for name in FILES:
            ref = nemo_streaming(nemo, speech[name], mode.right_context, language=language)
            result, encodings = run_with_encodings(model, speech[name], latency_ms, nemo_compat=True,
                                                   language=language)
            assert max_chunk_difference(encodings, ref.chunk_encodings) < 1e-3, (language, name)
            assert result.token_ids == ref.token_ids, (language, name)
            frame_s = model.config.frame_seconds
            assert result.token_times_s == [round(f * frame_s, 3) for f in ref.token_frames], (language, name)
            assert result.text == TAG.sub("", ref.text), (language, name)
            total_tokens += len(ref.token_ids)
    assert total_tokens >= 30


def test_language_switched_mid_stream_matches_nemo(nemo_prompt_built, speech):
    """The language changed between two chunks equals NeMo with the prompt changed before the same step."""
    model, nemo = nemo_prompt_built["model"], nemo_prompt_built["nemo"]
    latency_ms = 320
    mode = model.config.encoder.mode(latency_ms)
    x = speech["ls_2412-153948-0000.wav"]
    switch_step = 6
    ref = nemo_streaming(nemo, x, mode.right_context, language="de-DE", switch={switch_step: "fr-FR"})
    stream = model.stream(latency_ms, nemo_compat=True, language="de-DE")
    hop = model.config.frontend.hop_length
    first = 1 + model.config.encoder.subsampling_factor * mode.right_context  # mel frames of the first step
    later = model.config.encoder.subsampling_factor * (mode.right_context + 1)
    cut = (first + later * (switch_step - 1)) * hop  # the samples that complete exactly switch_step steps
    stream.accept(x[:cut])
    assert stream.steps == switch_step - 1 or stream.steps == switch_step
    while stream.steps < switch_step:  # (the frontend's look-ahead may hold the last frame back)
        stream.accept(x[cut : cut + hop])
        cut += hop
    assert stream.steps == switch_step
    stream.set_language("fr-FR")
    stream.accept(x[cut:])
    result = stream.finish()
    assert result.token_ids == ref.token_ids
    unswitched = nemo_streaming(nemo, x, mode.right_context, language="de-DE")
    assert unswitched.token_ids != ref.token_ids, "the switch must change the output, or this proves nothing"


def test_streams_of_different_languages_share_a_batch(nemo_prompt_built, speech):
    model = nemo_prompt_built["model"]
    x = speech["jfk_inaugural_1961.wav"][: 16000 * 6]
    alone = {lang: model.transcribe(x, 560, language=lang).token_ids for lang in LANGUAGES}
    streams = [model.stream(560, language=lang) for lang in LANGUAGES]
    for s in streams:
        s.feed(x)
    while any(s.is_ready for s in streams):
        decode_streams(streams)
    batched = {s.language: s.finish().token_ids for s in streams}
    assert batched == alone
    assert len({tuple(v) for v in alone.values()}) == len(LANGUAGES)


def test_auto_mode_reports_the_tagged_language(nemo_prompt_built):
    """Tags are kept in the token ids, never in the text, and name the result's language."""
    model = nemo_prompt_built["model"]
    text = model.text
    tag = next(i for i, p in enumerate(text.pieces) if p.strip("\u2581") == "<de-DE>")
    word = next(i for i, p in enumerate(text.pieces) if p.startswith("\u2581") and len(p) > 1 and p[1:].isalpha())
    assert text.language_of(tag) == "de-DE" and text.language_of(word) is None
    ids = [word, tag, word]
    assert "<" not in text.decode(ids) and text.decode(ids) == text.decode([word]) + " " + text.decode([word]).strip()
    assert text.last_language(ids) == "de-DE" and text.last_language([word]) is None
