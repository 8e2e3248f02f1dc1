"""What a server people leave running owes its clients: nothing lost, nobody starved.

Each test here failed on the server before this hardening: tiny frames made per-frame work grow with the
inbox, an idle server refused streams after a busy spell, a fast client was refused instead of paced, and
server-initiated closes (idle timeout, over-size frame, shutdown) dropped the stream's last sentence.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import numpy as np
from server_process import running_server

from streamasr.runtime.endpoint import EndpointConfig
from streamasr.serve.client import encode_pcm, file_blocks, stream_blocks, stream_url
from streamasr.serve.server import Server, ServerConfig
from streamasr.serve.session import COALESCE_S, StreamSession


async def _stream_then(url: str, pcm: bytes, then, timeout: float = 30.0) -> tuple[list[dict], int | None]:
    """Send `pcm` in 100 ms frames as fast as possible, run `then(ws)`, collect every event until the close."""
    events: list[dict] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for i in range(0, len(pcm), 3200):
            await ws.send_bytes(pcm[i : i + 3200])
        await then(ws)

        async def read():
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    events.append(json.loads(msg.data))

        await asyncio.wait_for(read(), timeout)
        return events, ws.close_code


def test_tiny_frames_are_coalesced_and_give_the_same_frames(serve_model, short_speech):
    """10,000 one-sample frames arriving together make a handful of inbox items, and the front end then
    yields exactly the mel frames of the same audio fed whole."""
    x = short_speech[0][:10000]
    tiny = StreamSession(serve_model, 160, EndpointConfig(0, 0))
    whole = StreamSession(serve_model, 160, EndpointConfig(0, 0))
    t = 100.0
    for i in range(x.size):
        tiny.feed(x[i : i + 1], arrival=t + i * 1e-7)  # 1 ms of arrivals in all
    assert len(tiny._inbox) <= 1 + int(1e-3 / COALESCE_S)
    whole.feed(x, arrival=t)
    assert tiny.drain() == whole.drain() == x.size
    np.testing.assert_array_equal(tiny.stream.encoder._pending, whole.stream.encoder._pending)
    # frames further apart than the window stay separate items (their arrival times are kept)
    spaced = StreamSession(serve_model, 160, EndpointConfig(0, 0))
    for i in range(5):
        spaced.feed(x[i * 100 : (i + 1) * 100], arrival=t + i * 2 * COALESCE_S)
    assert len(spaced._inbox) == 5


def test_tiny_frame_clients_beside_a_normal_stream(serve_model, make_server, short_speech, s16_roundtrip):
    """Clients sending 1 ms frames in real time keep up and get their exact transcript, and a normal stream
    beside them still gets its own exact transcript with chunk latencies of the same order as alone."""
    st, base = make_server(endpoint=EndpointConfig(0, 0))
    url = stream_url(base, 160)
    normal_x, tiny_x = short_speech[0], short_speech[1][: 16000 * 3]

    async def run(n_tiny: int):
        normal = asyncio.create_task(stream_blocks(url, file_blocks(normal_x, 100), realtime=True, timeout=60))
        tiny = [asyncio.create_task(stream_blocks(url, file_blocks(tiny_x, 1), realtime=True, timeout=60))
                for _ in range(n_tiny)]
        t0 = time.perf_counter()
        tiny_results = await asyncio.gather(*tiny)
        tiny_s = time.perf_counter() - t0
        return await normal, tiny_results, tiny_s

    alone, _, _ = asyncio.run(run(0))
    beside, tiny_results, tiny_s = asyncio.run(run(2))
    expected = serve_model.transcribe(s16_roundtrip(normal_x), 160).text.strip()
    assert alone.finals[-1]["text"] == beside.finals[-1]["text"] == expected
    tiny_expected = serve_model.transcribe(s16_roundtrip(tiny_x), 160).text.strip()
    for r in tiny_results:
        assert r.close_code == 1000 and r.finals[-1]["text"] == tiny_expected
    assert tiny_s < 3.0 + 2.0, f"3 s of audio in 1 ms frames took {tiny_s:.1f} s: the tiny clients fell behind"
    p50 = lambda r: float(np.median(r.chunk_latencies_s))  # noqa: E731
    assert p50(beside) < 2 * p50(alone) + 0.1, (p50(alone), p50(beside))


def test_an_idle_server_admits_after_a_busy_spell(serve_model):
    """The load window still holds a busy spell of streams that have left: an idle server admits anyway."""
    server = Server(serve_model, ServerConfig(max_load=0.8))
    now = time.perf_counter()
    with server.scheduler._recent_lock:
        server.scheduler._recent.extend([(now, 4.9, 1)])  # 98% busy with one stream, just now
    assert server.scheduler.projected_load(0) > 0.8
    assert server._admission() is None
    server.active = 1
    assert "capacity" in server._admission()


def test_a_fast_client_is_paced_not_refused(serve_model, make_server, speech, s16_roundtrip):
    """A client sending a long file as fast as it can is held back by flow control (the server stops reading
    its socket) and gets its whole transcript; before, it was refused once 60 s were waiting."""
    st, base = make_server(endpoint=EndpointConfig(0, 0), max_backlog_s=1.0)
    x = np.concatenate([speech[n] for n in sorted(speech) if n.startswith("arctic")][:4])  # ~12 s
    result = asyncio.run(stream_blocks(stream_url(base, 160), file_blocks(x, 100), realtime=False, timeout=60))
    assert result.close_code == 1000 and not result.errors, result.events[-2:]
    assert result.finals[-1]["text"] == serve_model.transcribe(s16_roundtrip(x), 160).text.strip()


def test_idle_timeout_flushes_the_last_final(serve_model, make_server, short_speech, s16_roundtrip):
    st, base = make_server(endpoint=EndpointConfig(0, 0), idle_timeout_s=1.0)
    x = short_speech[2]

    async def go_quiet(ws):
        pass  # say nothing more: the idle timeout closes the stream

    events, code = asyncio.run(_stream_then(stream_url(base, 160), encode_pcm(x), go_quiet))
    finals = [e for e in events if e["type"] == "final"]
    assert code == 1008 and events[-1]["type"] == "error" and "no data" in events[-1]["message"]
    assert finals[-1]["text"] == serve_model.transcribe(s16_roundtrip(x), 160).text.strip() != ""


def test_oversize_frame_after_audio_flushes_and_an_exact_size_frame_is_accepted(serve_model, make_server,
                                                                               short_speech, s16_roundtrip):
    st, base = make_server(endpoint=EndpointConfig(0, 0), max_frame_bytes=64000)
    x = short_speech[0]

    async def too_big(ws):
        await ws.send_bytes(b"\x00" * 64002)

    events, code = asyncio.run(_stream_then(stream_url(base, 160), encode_pcm(x), too_big))
    finals = [e for e in events if e["type"] == "final"]
    assert code == 1009 and "limit of 64000" in events[-1]["message"]
    assert finals[-1]["text"] == serve_model.transcribe(s16_roundtrip(x), 160).text.strip()
    exact = x[:32000]  # exactly 64000 bytes of s16le
    result = asyncio.run(stream_blocks(stream_url(base, 160), [exact], timeout=30))
    assert result.close_code == 1000 and not result.errors
    assert result.finals[-1]["text"] == serve_model.transcribe(s16_roundtrip(exact), 160).text.strip()


def test_sigterm_flushes_open_streams_and_exits(tiny_model_dir, serve_model, short_speech, s16_roundtrip):
    """SIGTERM with a stream open: the client gets the final of all the audio it sent, then 1001, and the
    process exits within a few seconds."""
    x = short_speech[1]
    with running_server(tiny_model_dir, "--warmup-batches", "0", "--endpoint-ms", "0") as (proc, port):
        async def main():
            async def terminate(ws):
                await asyncio.sleep(1.0)  # the server has read and processed everything sent
                proc.send_signal(signal.SIGTERM)

            return await _stream_then(stream_url(f"ws://127.0.0.1:{port}", 160), encode_pcm(x), terminate)

        events, code = asyncio.run(main())
        t0 = time.perf_counter()
        proc.wait(10)
        exit_s = time.perf_counter() - t0
    finals = [e for e in events if e["type"] == "final"]
    assert code == 1001 and "shutting down" in events[-1]["message"]
    assert finals[-1]["text"] == serve_model.transcribe(s16_roundtrip(x), 160).text.strip()
    assert exit_s < 5.0 and proc.returncode is not None
