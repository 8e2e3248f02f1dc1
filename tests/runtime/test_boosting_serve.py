"""Per-stream hotwords on the WebSocket server: streams batched together, each with its own phrase set (from
the query string or a config message), each final equal to the stream decoded alone with its phrases."""

from __future__ import annotations

import asyncio
import json
import threading
from urllib.parse import quote

import numpy as np
import pytest

from streamasr.audio import pcm_to_float
from streamasr.runtime.endpoint import EndpointConfig
from streamasr.serve.client import encode_pcm, stream_url, transcribe_url
from streamasr.serve.server import ServerConfig, ServerThread


@pytest.fixture(scope="module")
def server(loaded_tiny):
    st = ServerThread(loaded_tiny, ServerConfig(port=0, host="127.0.0.1",
                                                endpoint=EndpointConfig(silence_ms=0, max_utterance_s=0)))
    port = st.start()
    yield st, f"ws://127.0.0.1:{port}"
    st.stop()


@pytest.fixture(scope="module")
def phrase_sets(loaded_tiny, speech):
    words = loaded_tiny.transcribe(speech["jfk_inaugural_1961.wav"], 160).text.split()
    pieces = [p[1:] for p in loaded_tiny.text.pieces if p.startswith("\u2581") and p[1:].isalpha()]
    distinct = list(dict.fromkeys(w for w in words if len(w) >= 3))
    return [distinct[0::2][:4] + pieces[0::2], distinct[1::2][:4] + pieces[1::2]]


def _s16(x: np.ndarray) -> np.ndarray:
    return pcm_to_float(encode_pcm(x, "pcm_s16le"), "s16le")


def test_streams_in_one_batch_keep_their_own_phrases(server, loaded_tiny, speech, phrase_sets):
    _, base = server
    x = speech["arctic_slt_a0002.wav"]
    plans = [phrase_sets[0], phrase_sets[1], []]
    results: list = [None] * len(plans)

    def client(i: int) -> None:
        query = "".join(f"&hotwords={quote(p)}" for p in plans[i]) + ("&hotword_score=1.5" if plans[i] else "")
        results[i] = transcribe_url(stream_url(base, 160) + query, x, block_ms=100, timeout=60)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    texts = []
    for res, phrases in zip(results, plans):
        assert res.close_code == 1000 and not res.errors
        kwargs = {"hotwords": phrases, "hotword_score": 1.5} if phrases else {}
        expected = loaded_tiny.transcribe(_s16(x), 160, **kwargs)
        assert res.finals[-1]["text"] == expected.text.strip()
        texts.append(res.finals[-1]["text"])
    assert len(set(texts)) == 3, "each phrase set should change this stream's text differently"


def test_config_message_sets_and_refuses_hotwords(server, loaded_tiny, speech, phrase_sets):
    import aiohttp

    _, base = server
    x = speech["arctic_slt_a0002.wav"]

    async def run() -> tuple[list[dict], str]:
        events: list[dict] = []
        async with aiohttp.ClientSession() as http, http.ws_connect(stream_url(base, 160)) as ws:
            await ws.send_str(json.dumps({"type": "config", "hotwords": "not a list"}))
            events.append(await ws.receive_json())
            await ws.send_str(json.dumps({"type": "config", "hotwords": phrase_sets[0], "hotword_score": -2}))
            events.append(await ws.receive_json())
            await ws.send_str(json.dumps({"type": "config", "hotwords": phrase_sets[0] + [""]}))
            events.append(await ws.receive_json())
            await ws.send_bytes(encode_pcm(x, "pcm_s16le"))
            await ws.send_str(json.dumps({"type": "end"}))
            final = ""
            async for msg in ws:
                event = json.loads(msg.data)
                if event["type"] == "final":
                    final = event["text"]
            return events, final

    events, final = asyncio.run(run())
    assert events[0]["type"] == "error" and "list" in events[0]["message"]
    assert events[1]["type"] == "error" and "hotword_score" in events[1]["message"]
    assert events[2] == {"type": "config", "hotwords": phrase_sets[0]}
    assert final == loaded_tiny.transcribe(_s16(x), 160, hotwords=phrase_sets[0]).text.strip()


def test_bad_query_hotwords_refuse_the_stream(server):
    _, base = server
    res = transcribe_url(stream_url(base, 160) + "&hotwords=abc&hotword_score=oops", np.zeros(1600, np.float32),
                         timeout=30)
    assert res.close_code == 1008
    assert any("hotword_score" in e["message"] for e in res.errors)


def test_openai_transcription_takes_hotwords_fields(server, loaded_tiny, speech, phrase_sets, tmp_path):
    import aiohttp
    import soundfile as sf

    _, base = server
    url = base.replace("ws://", "http://") + "/v1/audio/transcriptions"
    wav = tmp_path / "a.wav"
    x = speech["arctic_slt_a0002.wav"]
    sf.write(wav, x, 16000, subtype="PCM_16")

    async def post(fields: list[tuple[str, str]]) -> tuple[int, dict]:
        form = aiohttp.FormData()
        form.add_field("file", wav.read_bytes(), filename="a.wav", content_type="audio/wav")
        form.add_field("model", "whisper-1")
        form.add_field("latency", "160")
        for key, value in fields:
            form.add_field(key, value)
        async with aiohttp.ClientSession() as http, http.post(url, data=form) as resp:
            return resp.status, await resp.json()

    status, body = asyncio.run(post([("hotwords", p) for p in phrase_sets[1]] + [("hotword_score", "2")]))
    assert status == 200, body
    expected = loaded_tiny.transcribe(_s16(x), 160, hotwords=phrase_sets[1], hotword_score=2.0).text.strip()
    assert body["text"] == expected != loaded_tiny.transcribe(_s16(x), 160).text.strip()
    status, body = asyncio.run(post([("hotwords", "abc"), ("hotword_score", "-1")]))
    assert status == 400 and body["error"]["param"] == "hotwords"
