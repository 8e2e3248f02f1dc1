"""Parity with NeMo itself: random-weight models built, saved and restored by NeMo, converted by streamasr.

For every latency mode and several real utterances: token ids and timestamps identical to NeMo's own
cache-aware streaming loop, encoder outputs within 1e-3 of NeMo's for every chunk. The models are made
speech-like first (asserted below), or these comparisons would prove little.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamasr.eval.nemo_reference import nemo_offline_encoding, nemo_streaming
from streamasr.eval.verify import max_chunk_difference, run_with_encodings
from streamasr.model_config import ModelConfig

FILES = ["jfk_inaugural_1961.wav", "ls_2412-153948-0000.wav", "arctic_slt_a0005.wav", "pocketsphinx_goforward.wav"]


def test_random_model_is_speech_like(nemo_built, speech):
    report = nemo_built["report"]
    assert 0.1 <= report.tokens_per_frame <= 1.0
    assert report.distinct_tokens >= 20 and report.max_repeat_run <= 5
    model = nemo_built["model"]
    texts = set()
    for name in FILES:
        result = model.transcribe(speech[name], latency_ms=560)
        frames = result.audio_s / model.config.frame_seconds
        assert 5 <= len(result.token_ids) <= 2 * frames, (name, len(result.token_ids), frames)
        assert len(set(result.token_ids)) >= 3
        texts.add(result.text)
    assert len(texts) == len(FILES), "different audio must give different transcripts"


@pytest.mark.parametrize("latency_ms", [80, 160, 560, 1120])
def test_streaming_matches_nemo(nemo_built, speech, latency_ms):
    model, nemo = nemo_built["model"], nemo_built["nemo"]
    mode = model.config.encoder.mode(latency_ms)
    total_tokens = 0
    for name in FILES:
        ref = nemo_streaming(nemo, speech[name], mode.right_context)
        result, encodings = run_with_encodings(model, speech[name], latency_ms, nemo_compat=True)
        assert len(encodings) == len(ref.chunk_encodings), name
        assert max_chunk_difference(encodings, ref.chunk_encodings) < 1e-3, name
        assert result.token_ids == ref.token_ids, name
        frame_s = model.config.frame_seconds
        assert result.token_times_s == [round(f * frame_s, 3) for f in ref.token_frames], name
        assert result.text == ref.text, name
        total_tokens += len(ref.token_ids)
    assert total_tokens >= 20


def test_default_tail_flush_encodes_every_frame(nemo_built, speech):
    """Without nemo_compat the final partial chunk is encoded: the stream then covers exactly the frames
    of NeMo's offline encoder, and for R >= 1 equals it (NeMo's streaming = offline property)."""
    model, nemo = nemo_built["model"], nemo_built["nemo"]
    x = speech["ls_2412-153948-0000.wav"]
    for latency_ms in (160, 560, 1120):
        mode = model.config.encoder.mode(latency_ms)
        offline = nemo_offline_encoding(nemo, x, mode.right_context)
        result, encodings = run_with_encodings(model, x, latency_ms, nemo_compat=False)
        ours = np.concatenate(encodings)
        assert ours.shape == offline.shape
        assert np.abs(ours - offline).max() < 1e-3
        compat, _ = run_with_encodings(model, x, latency_ms, nemo_compat=True)
        assert result.token_ids[: len(compat.token_ids)] == compat.token_ids


def test_verify_command_reports_pass(nemo_built, speech_manifest, capsys):
    from streamasr.cli import main

    audio = [str(it["path"]) for it in speech_manifest if it["audio"] in FILES[2:]]
    code = main(["verify", str(nemo_built["nemo_path"]), *audio, "--model-dir", str(nemo_built["model_dir"]),
                 "--latency", "160,560", "--quant", "int8,int4-kquant:128"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS" in out and "| 160 ms |" in out and "| 560 ms |" in out
    assert "NeMo:" in out and "streamasr:" in out
    # --quant: each variant against the fp32 conversion, side by side, made once beside it
    table = out.split("quantized variants against the fp32 conversion")[1]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| int")]
    assert [(r[0], r[2]) for r in rows] == [("| int8", "160 ms"), ("| int8", "560 ms"),
                                            ("| int4-kquant:128", "160 ms"), ("| int4-kquant:128", "560 ms")]
    for r in rows:
        assert r[3] == "-"  # no language: an English model
        assert 0 <= float(r[4]) <= 1 and 0 < float(r[8]) < 1 and 0.5 < float(r[9]) < 1  # agreement, rel err, cosine
    int8_err, int4_err = float(rows[1][8]), float(rows[3][8])
    assert int8_err < int4_err
    variant = nemo_built["model_dir"].with_name(nemo_built["model_dir"].name + ".int4-kquant-b128")
    assert ModelConfig.load(variant).quantization["block_size"] == 128
