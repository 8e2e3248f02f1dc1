"""What a load balancer reads: `/ready` (admit a stream now or not), a refusal as HTTP 503 before the
WebSocket upgrade (so it can retry another replica), and `/metrics` as valid Prometheus text with per-protocol
stream counts and the open-stream gauge (least-connections balancing)."""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.error
import urllib.request

import aiohttp
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from streamasr.runtime.endpoint import EndpointConfig
from streamasr.serve.client import (
    ServerBusy,
    encode_pcm,
    file_blocks,
    stream_blocks,
    stream_url,
)


def _get(url: str) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a GET, 503 included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics body, parsed by prometheus_client's own parser: (name, labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _metrics(http: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{http}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return _samples(r.read().decode())


def _wait(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_ready_follows_max_streams(make_server, short_speech):
    """Idle: ready. One open stream at --max-streams 1: 503 with a reason and Retry-After. After it: ready."""
    st, base = make_server(endpoint=EndpointConfig(0, 0), max_streams=1)
    http = base.replace("ws://", "http://")
    status, _, body = _get(f"{http}/ready")
    assert status == 200 and body["ready"] is True and body["open_streams"] == 0 and body["max_streams"] == 1

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(stream_url(base, 160)) as ws:
                await ws.send_bytes(encode_pcm(short_speech[0][:8000]))
                busy = await asyncio.to_thread(_get, f"{http}/ready")
                health = await asyncio.to_thread(_get, f"{http}/health")
                await ws.send_str(json.dumps({"type": "end"}))
                async for _ in ws:
                    pass
                return busy, health, ws.close_code

    (status, headers, body), (_, _, health), code = asyncio.run(main())
    assert status == 503 and body["ready"] is False and body["reason"] == "full", body
    assert int(headers["Retry-After"]) >= 1 and body["open_streams"] == 1
    assert health["open_streams"] == 1 and code == 1000
    assert _wait(lambda: _get(f"{http}/ready")[0] == 200)
    assert _get(f"{http}/ready")[2]["ready"] is True


def test_ready_is_false_while_shutting_down(serve_model, make_server):
    """A stopping replica leaves the balancer's pool at once (and /ready says why)."""
    st, base = make_server()
    server = st.server
    assert server.ready
    server.accepting = False  # what _on_shutdown sets first
    try:
        status, headers, body = _get(f"{base.replace('ws://', 'http://')}/ready")
    finally:
        server.accepting = True
    assert status == 503 and body["reason"] == "shutting_down" and int(headers["Retry-After"]) >= 1


def test_a_refused_websocket_connect_is_an_http_503_before_the_upgrade(make_server, short_speech):
    """At --max-streams the handshake itself is refused (a load balancer can retry elsewhere), and the
    reference client turns that into one clear error naming the wait."""
    st, base = make_server(endpoint=EndpointConfig(0, 0), max_streams=1)

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(stream_url(base, 160)) as ws:
                await ws.send_bytes(encode_pcm(short_speech[0][:8000]))
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(stream_url(base, 160))
                with pytest.raises(ServerBusy) as busy:
                    await stream_blocks(stream_url(base, 160), file_blocks(short_speech[1], 100), timeout=10)
                await ws.send_str(json.dumps({"type": "end"}))
                async for _ in ws:
                    pass
                return refused.value, busy.value

    refused, busy = asyncio.run(main())
    assert refused.status == 503 and int(refused.headers["Retry-After"]) == 1
    assert busy.retry_after_s == 1 and "server busy, retry after 1 s" in str(busy)
    m = _metrics(base.replace("ws://", "http://"))
    assert m[("streamasr_streams_rejected_total", (("protocol", "websocket"),))] == 2
    assert m[("streamasr_streams_total", (("protocol", "websocket"),))] == 1


def test_metrics_parse_and_count_per_protocol(serve_model, make_server, short_speech):
    """One stream of each HTTP-side kind (WebSocket, OpenAI upload, OpenAI Realtime): each is counted under
    its protocol, the others stay at zero, and the names `streamasr bench serve` reads are all there."""
    st, base = make_server(endpoint=EndpointConfig(0, 0))
    http = base.replace("ws://", "http://")
    before = _metrics(http)
    for protocol in ("websocket", "openai_http", "openai_realtime", "wyoming"):
        assert before[("streamasr_streams_total", (("protocol", protocol),))] == 0
        assert before[("streamasr_streams_rejected_total", (("protocol", protocol),))] == 0
    assert before[("streamasr_open_streams", ())] == 0

    result = asyncio.run(stream_blocks(stream_url(base, 160), file_blocks(short_speech[0], 100), timeout=30))
    assert result.close_code == 1000 and result.finals

    wav = io.BytesIO()
    sf.write(wav, short_speech[1], 16000, format="WAV", subtype="PCM_16")

    async def upload_and_realtime():
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            form.add_field("file", wav.getvalue(), filename="a.wav", content_type="audio/wav")
            form.add_field("model", "whisper-1")
            async with session.post(f"{http}/v1/audio/transcriptions", data=form) as r:
                assert r.status == 200, await r.text()
                text = (await r.json())["text"]
            async with session.ws_connect(f"{base}/v1/realtime?intent=transcription") as ws:
                assert json.loads((await ws.receive()).data)["type"] == "session.created"
        return text

    assert isinstance(asyncio.run(upload_and_realtime()), str)
    assert _wait(lambda: st.server.active == 0)
    m = _metrics(http)
    for protocol, n in (("websocket", 1), ("openai_http", 1), ("openai_realtime", 1), ("wyoming", 0)):
        assert m[("streamasr_streams_total", (("protocol", protocol),))] == n, protocol
        assert m[("streamasr_streams_rejected_total", (("protocol", protocol),))] == 0, protocol
    assert m[("streamasr_open_streams", ())] == 0 and m[("streamasr_active_streams", ())] == 0
    audio = (short_speech[0].size + short_speech[1].size) / 16000
    assert abs(m[("streamasr_audio_seconds_total", ())] - audio) < 0.05
    assert m[("streamasr_compute_seconds_total", ())] > 0 and m[("streamasr_encoder_seconds_total", ())] > 0
    assert m[("streamasr_encoder_batch_size_count", ())] > 0 and m[("streamasr_encoder_batch_size_sum", ())] > 0
    assert m[("streamasr_chunk_latency_seconds_count", ())] > 0
    assert ("streamasr_scheduler_load", ()) in m and ("streamasr_rtfx", ()) in m
    assert m[("streamasr_client_errors_total", ())] == 0


def test_two_servers_in_one_process_keep_separate_metrics(make_server, short_speech):
    """Each server has its own registry: a stream on one does not show on the other (nor does building a
    second server clash with the first's metric names)."""
    _, base_a = make_server()
    _, base_b = make_server()
    asyncio.run(stream_blocks(stream_url(base_a, 160), file_blocks(short_speech[2], 100), timeout=30))
    key = ("streamasr_streams_total", (("protocol", "websocket"),))
    assert _metrics(base_a.replace("ws://", "http://"))[key] == 1
    assert _metrics(base_b.replace("ws://", "http://"))[key] == 0
