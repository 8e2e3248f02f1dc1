"""Bad clients get a clear error or a clean close, and a concurrent good stream is unaffected."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import numpy as np

from streamasr.runtime.endpoint import EndpointConfig
from streamasr.serve.client import encode_pcm, file_blocks, stream_blocks, stream_url


async def _events_until_close(ws, timeout=10.0):
    events = []

    async def read():
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                events.append(json.loads(msg.data))

    await asyncio.wait_for(read(), timeout)
    return events


async def _bad(url, action, timeout=10.0):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            await action(ws)
            events = await _events_until_close(ws, timeout)
            return events, ws.close_code


async def _refused(url):
    """A connect the server refuses before the upgrade: (Retry-After seconds, the 503's JSON error)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url):
                raise AssertionError("the server upgraded a connection it should have refused")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 503, exc
            retry_after = int(exc.headers["Retry-After"])
        # the same refusal as plain HTTP, to read its body (aiohttp's handshake error does not keep it)
        async with http.get(url.replace("ws://", "http://")) as r:
            assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
            return retry_after, (await r.json())["error"]


def _check_good(model, result, samples, s16_roundtrip):
    assert result.close_code == 1000 and not result.errors, result.events[-3:]
    assert result.finals[-1]["text"] == model.transcribe(s16_roundtrip(samples), 160).text.strip()


def _with_good_stream(model, base, samples, bad_coros, s16_roundtrip):
    async def main():
        good = asyncio.create_task(stream_blocks(stream_url(base, 160), file_blocks(samples, 100),
                                                 realtime=True, timeout=30))
        await asyncio.sleep(0.3)  # the good stream is under way
        bad = await asyncio.gather(*bad_coros())
        return await asyncio.wait_for(good, 30), bad

    good, bad = asyncio.run(main())
    _check_good(model, good, samples, s16_roundtrip)
    return bad


def test_malformed_frames_and_parameters(serve_model, make_server, short_speech, s16_roundtrip):
    st, base = make_server(endpoint=EndpointConfig(0, 0))

    async def odd_length(ws):
        await ws.send_bytes(encode_pcm(short_speech[1][:1600]))
        await ws.send_bytes(b"\x01\x02\x03")

    async def nan_f32(ws):
        await ws.send_bytes(np.array([0.1, np.nan], dtype="<f4").tobytes())

    async def nothing(ws):
        pass

    async def garbage_text_then_end(ws):
        await ws.send_str("this is not json")
        await ws.send_bytes(encode_pcm(short_speech[2][:8000]))
        await ws.send_str(json.dumps({"type": "end"}))

    bad = _with_good_stream(serve_model, base, short_speech[0], lambda: [
        _bad(stream_url(base, 160), odd_length),
        _bad(stream_url(base, 160, "pcm_f32le"), nan_f32),
        _bad(stream_url(base, 160, "mp3"), nothing),
        _bad(stream_url(base, 123), nothing),
        _bad(stream_url(base, 160, sample_rate=8000), nothing),
        _bad(stream_url(base, 160), garbage_text_then_end),
    ], s16_roundtrip=s16_roundtrip)
    (odd, odd_code), (nan, nan_code), (enc, enc_code), (lat, lat_code), (rate, rate_code), (garb, garb_code) = bad
    assert odd_code == 1007 and odd[-1]["type"] == "error" and "whole number" in odd[-1]["message"]
    assert nan_code == 1007 and "NaN" in nan[-1]["message"]
    assert enc_code == 1008 and enc == [{"type": "error", "message": enc[0]["message"]}]
    assert "unknown encoding 'mp3'" in enc[0]["message"]
    assert lat_code == 1008 and "latency mode 123" in lat[0]["message"] and "160" in lat[0]["message"]
    assert rate_code == 1008 and "sample_rate=8000" in rate[0]["message"]
    # an unknown text message is answered with an error but does not end the stream
    assert garb[0]["type"] == "error" and garb[-1]["type"] == "final" and garb_code == 1000
    assert _wait(lambda: st.server.active == 0 and st.server.scheduler.active == 0)


def test_idle_timeout_and_disconnect_mid_utterance(serve_model, make_server, short_speech, s16_roundtrip):
    st, base = make_server(endpoint=EndpointConfig(0, 0), idle_timeout_s=1.0)

    async def go_quiet(ws):
        await ws.send_bytes(encode_pcm(short_speech[1][:16000]))

    async def vanish():
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(stream_url(base, 160))
        await ws.send_bytes(encode_pcm(short_speech[2][:24000]))
        await asyncio.sleep(0.2)
        await http.close()  # drops the TCP connection without a close handshake
        return None

    t0 = time.perf_counter()
    bad = _with_good_stream(serve_model, base, short_speech[0], lambda: [_bad(stream_url(base, 160), go_quiet),
                                                                          vanish()], s16_roundtrip=s16_roundtrip)
    (idle, idle_code), _ = bad
    assert idle_code == 1008 and "no data for 1 s" in idle[-1]["message"]
    assert time.perf_counter() - t0 < 20
    # nothing is left behind: the vanished stream's state is dropped by the scheduler
    assert _wait(lambda: st.server.active == 0 and st.server.scheduler.active == 0)
    text = _metrics(base)
    assert "streamasr_client_errors_total 1" in text  # the idle one; a vanished client is not an error


def test_more_streams_than_max_streams(serve_model, make_server, short_speech, s16_roundtrip):
    st, base = make_server(endpoint=EndpointConfig(0, 0), max_streams=2)

    async def main():
        goods = [asyncio.create_task(stream_blocks(stream_url(base, 160), file_blocks(x, 100), realtime=True,
                                                   timeout=30)) for x in short_speech[:2]]
        await asyncio.sleep(0.5)
        extra = await _refused(stream_url(base, 160))
        return await asyncio.wait_for(asyncio.gather(*goods), 30), extra

    goods, (retry_after, error) = asyncio.run(main())
    assert retry_after == 1 and error["reason"] == "full" and "server is full (2 streams)" in error["message"]
    for res, x in zip(goods, short_speech[:2]):
        _check_good(serve_model, res, x, s16_roundtrip)
    assert 'streamasr_streams_rejected_total{protocol="websocket"} 2.0' in _metrics(base)  # connect + GET
    # once they are done, a new stream is accepted again
    res = asyncio.run(stream_blocks(stream_url(base, 160), file_blocks(short_speech[2], 100), timeout=30))
    _check_good(serve_model, res, short_speech[2], s16_roundtrip)


def test_new_streams_refused_while_the_scheduler_is_at_capacity(serve_model, make_server, short_speech,
                                                                s16_roundtrip):
    """--max-load: past it every open stream would fall behind together, so a new stream is refused before
    the upgrade (HTTP 503, Retry-After) with a message naming the load, and the open stream is unharmed. (The tiny model never loads a
    scheduler near 90%, so the threshold is set below what one stream costs.)"""
    st, base = make_server(endpoint=EndpointConfig(0, 0), max_load=1e-4)

    async def main():
        good = asyncio.create_task(stream_blocks(stream_url(base, 160), file_blocks(short_speech[0], 100),
                                                 realtime=True, timeout=30))
        await asyncio.sleep(1.0)  # some rounds have run
        extra = await _refused(stream_url(base, 160))
        return await asyncio.wait_for(good, 30), extra

    good, (retry_after, error) = asyncio.run(main())
    assert 1 <= retry_after <= 5 and error["reason"] == "at_capacity", error
    assert "server is at capacity" in error["message"] and "--max-load 0.0001" in error["message"]
    _check_good(serve_model, good, short_speech[0], s16_roundtrip)
    metrics = _metrics(base)
    assert 'streamasr_streams_rejected_total{protocol="websocket"} 2.0' in metrics
    load = float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("streamasr_scheduler_load ")))
    assert 0 < load < 0.5
    # the load is measured over a window: once it has passed with nothing to do, streams are accepted again
    scheduler = st.server.scheduler
    assert scheduler.load(now=time.perf_counter() + 6.0) == 0.0


def test_oversized_frame(make_server):
    _, base = make_server(max_frame_bytes=64000)

    async def huge(ws):
        await ws.send_bytes(b"\x00\x00" * 40000)

    events, code = asyncio.run(_bad(stream_url(base, 160), huge))
    assert code == 1009  # aiohttp's "message too big" close


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _metrics(base):
    import urllib.request

    with urllib.request.urlopen(base.replace("ws://", "http://") + "/metrics", timeout=5) as r:
        return r.read().decode()
