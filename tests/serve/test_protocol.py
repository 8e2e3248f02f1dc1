"""The protocol end to end over a real socket on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.request

import pytest

from streamasr.serve.client import stream_url, transcribe_url

NO_ENDPOINT = dict(silence_ms=0, max_utterance_s=0)


def _endpoint(**kw):
    from streamasr.runtime.endpoint import EndpointConfig

    return EndpointConfig(**kw)


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le"])
def test_partials_then_final_equal_transcribe(serve_model, make_server, short_speech, s16_roundtrip, encoding):
    st, base = make_server(endpoint=_endpoint(**NO_ENDPOINT))
    samples = short_speech[0]
    res = transcribe_url(stream_url(base, 160, encoding), samples, block_ms=100, encoding=encoding, timeout=30)
    assert res.close_code == 1000
    assert not res.errors
    kinds = [e["type"] for e in res.events]
    assert kinds[-1] == "final" and kinds.count("final") == 1
    assert kinds.count("partial") >= 2, kinds
    ref_in = s16_roundtrip(samples) if encoding == "pcm_s16le" else samples
    ref = serve_model.transcribe(ref_in, 160)
    final = res.finals[0]
    assert final["text"] == ref.text.strip()
    # partials grow towards the final text
    partials = [e["text"] for e in res.events if e["type"] == "partial"]
    assert ref.text.strip().startswith(partials[-1][: max(0, len(partials[-1]) - 8)])
    # words: ordered, inside the audio, confidence a probability; they spell the final
    words = final["words"]
    assert words and " ".join(w["word"] for w in words).replace(" ", "") == final["text"].replace(" ", "")
    audio_s = samples.size / serve_model.sample_rate
    for a, b in zip(words, words[1:]):
        assert a["start_s"] <= b["start_s"]
    for w in words:
        assert 0 <= w["start_s"] < w["end_s"] <= audio_s + 0.5
        assert 0 < w["confidence"] <= 1
    assert final["start_s"] == words[0]["start_s"] and final["end_s"] == words[-1]["end_s"]
    assert st.server.active == 0


def test_default_latency_and_other_modes(serve_model, make_server, short_speech, s16_roundtrip):
    _, base = make_server(endpoint=_endpoint(**NO_ENDPOINT))
    samples = short_speech[1]
    for latency in (None, 80):
        res = transcribe_url(stream_url(base, latency), samples, block_ms=37, timeout=30)
        ref = serve_model.transcribe(s16_roundtrip(samples), latency)
        assert res.finals[-1]["text"] == ref.text.strip()


def test_empty_stream_gets_empty_final(make_server):
    _, base = make_server()
    import numpy as np

    res = transcribe_url(stream_url(base, 160), np.zeros(0, dtype=np.float32), timeout=10)
    assert res.close_code == 1000
    assert [e["type"] for e in res.events] == ["final"] and res.finals[0]["text"] == ""


def test_health_and_metrics(serve_model, make_server, short_speech):
    st, base = make_server()
    http = base.replace("ws://", "http://")
    transcribe_url(stream_url(base, 160), short_speech[2], timeout=30)
    with urllib.request.urlopen(http + "/health", timeout=5) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok" and health["active_streams"] == 0 and 160 in health["latency_modes"]
    with urllib.request.urlopen(http + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for name in ("streamasr_active_streams 0", "streamasr_audio_seconds_total", "streamasr_rtfx",
                 'streamasr_chunk_latency_seconds_bucket{le="+Inf"}', "streamasr_encoder_batch_size_count",
                 'streamasr_streams_total{protocol="websocket"} 1.0', "streamasr_open_streams 0"):
        assert name in text, name
    audio = float(next(l for l in text.splitlines() if l.startswith("streamasr_audio_seconds_total")).split()[1])
    assert abs(audio - short_speech[2].size / 16000) < 0.01
    with urllib.request.urlopen(http + "/", timeout=5) as r:
        assert b"streamasr" in r.read()
