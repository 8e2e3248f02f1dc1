"""OpenAI Realtime transcription (`/v1/realtime?intent=transcription`) over real sockets on 127.0.0.1, driven
by the official `openai` SDK in both dialects (GA `client.realtime.connect`, beta
`client.beta.realtime.connect`).

Reference text: the server resamples the 24 kHz PCM16 it receives with one soxr HQ stream per turn, so the
tests resample the same int16 chunks with the same soxr stream (`_server_view`) and transcribe that with
`Model.transcribe`. One recognition stream per committed turn means a committed turn's transcript equals
that reference exactly (token-for-token, same text). Server-detected turns split one stream's tokens into
utterances whose texts are joined; a turn may begin inside a word of the random test model's output, so
those are compared without spaces (the tokens are the same; only the joining space can differ).
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import soxr
from openai import AsyncOpenAI

RATE = 24000
CHUNK = RATE // 10  # 100 ms per append, as a microphone client sends


def _pcm24_chunks(x16: np.ndarray) -> list[bytes]:
    """16 kHz float speech as the PCM16 24 kHz appends a Realtime client sends."""
    x24 = soxr.resample(x16.astype(np.float32), 16000, RATE, quality="HQ")
    pcm = (np.clip(x24, -1, 32767 / 32768) * 32768).astype("<i2")
    return [pcm[i : i + CHUNK].tobytes() for i in range(0, pcm.size, CHUNK)]


def _server_view(chunks: list[bytes]) -> np.ndarray:
    """What the server's recognizer sees of these appends: each decoded and fed through one soxr stream,
    flushed at the commit."""
    rs = soxr.ResampleStream(RATE, 16000, 1, dtype="float32", quality="HQ")
    out = [rs.resample_chunk(np.frombuffer(c, "<i2").astype(np.float32) / 32768.0) for c in chunks]
    out.append(rs.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(out)


def _client(port: int, beta: bool = False) -> AsyncOpenAI:
    kw = {"websocket_base_url": f"ws://127.0.0.1:{port}/v1"} if beta else {}  # beta always dials wss otherwise
    return AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, **kw)


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def _stream(conn, chunks: list[bytes], speed: float) -> None:
    """Append the chunks at `speed` times real time."""
    for c in chunks:
        await conn.input_audio_buffer.append(audio=base64.b64encode(c).decode())
        await asyncio.sleep(len(c) / 2 / RATE / speed)


async def _until_commit_completed(conn, events: list, timeout: float = 60.0) -> None:
    """Collect events until the completed transcript of the client's commit."""
    async def run():
        async for ev in conn:
            events.append(ev)
            if ev.type == "conversation.item.input_audio_transcription.completed" and ev.reason == "commit":
                return
    await asyncio.wait_for(run(), timeout)


def _types(events) -> list[str]:
    return [e.type for e in events]


def _check_items(events) -> dict[str, str]:
    """Per item: deltas concatenate to the completed transcript; speech_started before its first delta;
    committed before completed, and completed last. Returns item id -> transcript."""
    done: dict[str, str] = {}
    deltas: dict[str, str] = {}
    seen: dict[str, list[str]] = {}
    for ev in events:
        item = getattr(ev, "item_id", None)
        if item is None:
            continue
        assert item not in done, f"event {ev.type} after its item completed"
        seen.setdefault(item, []).append(ev.type)
        if ev.type.endswith(".delta"):
            deltas[item] = deltas.get(item, "") + ev.delta
        elif ev.type.endswith(".completed"):
            assert "input_audio_buffer.committed" in seen[item]
            assert ev.transcript == deltas.get(item, ""), (ev.transcript, deltas.get(item))
            done[item] = ev.transcript
    for item, kinds in seen.items():
        if "input_audio_buffer.speech_started" in kinds and any(k.endswith(".delta") for k in kinds):
            assert kinds.index("input_audio_buffer.speech_started") < \
                min(i for i, k in enumerate(kinds) if k.endswith(".delta"))
    assert set(done) == set(seen), "an item never completed"
    return done


def test_ga_server_turns_at_real_time_equal_transcribe(serve_model, make_server, short_speech):
    """GA dialect through `client.realtime.connect`: two utterances and a pause at real-time pace with
    server turn detection; the client's commit flushes the last turn. The turns' transcripts, joined,
    are the transcription of everything the server heard."""
    _, base = make_server()
    pause = np.zeros(int(1.5 * 16000), np.float32)
    chunks = _pcm24_chunks(np.concatenate([short_speech[0], pause, short_speech[1]]))
    ref = serve_model.transcribe(_server_view(chunks), 160).text.strip()
    events: list = []

    async def main():
        async with _client(_port(base)).realtime.connect(extra_query={"intent": "transcription",
                                                                      "latency": "160"}) as conn:
            first = await conn.recv()
            assert first.type == "session.created" and first.session.type == "transcription"
            await conn.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "transcription": {"model": "streamasr", "language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
            collector = asyncio.create_task(_until_commit_completed(conn, events))
            await _stream(conn, chunks, speed=1.0)
            await conn.input_audio_buffer.commit()
            await collector

    asyncio.run(main())
    kinds = _types(events)
    assert kinds[0] == "session.updated", kinds[:3]
    updated = events[0].session
    assert updated.audio.input.turn_detection.silence_duration_ms == 500
    assert updated.audio.input.format.rate == RATE
    assert "error" not in kinds, [e for e in events if e.type == "error"]
    assert "conversation.item.input_audio_transcription.delta" in kinds
    assert "conversation.item.added" in kinds
    done = _check_items(events)
    completed = [e for e in events if e.type.endswith(".completed")]
    assert "".join(e.transcript for e in completed).replace(" ", "") == ref.replace(" ", "")
    assert ref, "the reference should not be empty"
    # server-detected turns announce speech_stopped; every non-empty turn has words that spell it
    for e in completed:
        if e.reason != "commit":
            assert e.reason in ("silence", "vad", "max_length")
            assert any(x.type == "input_audio_buffer.speech_stopped" and x.item_id == e.item_id for x in events)
        if e.transcript:
            assert "".join(w["word"] for w in e.words) == e.transcript.replace(" ", "")
            assert all(0 <= w["start"] <= w["end"] for w in e.words)
    assert len(done) == len(completed)


def test_beta_dialect_manual_commit_equals_transcribe(serve_model, make_server, short_speech):
    """Beta dialect through `client.beta.realtime.connect` (header `OpenAI-Beta: realtime=v1`) with turn
    detection off: the commit closes the turn, whose transcript is exactly `transcribe` of its audio."""
    st, base = make_server()
    chunks = _pcm24_chunks(short_speech[2])
    ref = serve_model.transcribe(_server_view(chunks), 160).text.strip()
    events: list = []

    async def main():
        client = _client(_port(base), beta=True)
        async with client.beta.realtime.connect(model="streamasr", extra_query={"intent": "transcription", "latency": "160"}) as conn:
            first = await conn.recv()
            assert first.type == "transcription_session.created"
            await conn.transcription_session.update(session={
                "input_audio_format": "pcm16", "input_audio_transcription": {"model": "streamasr", "language": "en"},
                "turn_detection": None})
            collector = asyncio.create_task(_until_commit_completed(conn, events))
            await _stream(conn, chunks, speed=1.0)
            await conn.input_audio_buffer.commit()
            await collector

    asyncio.run(main())
    kinds = _types(events)
    assert kinds[0] == "transcription_session.updated"
    assert events[0].session.turn_detection is None
    assert "error" not in kinds
    assert "input_audio_buffer.speech_started" not in kinds  # no server VAD: the client decides turns
    assert "conversation.item.created" in kinds
    done = _check_items(events)
    assert list(done.values()) == [ref]
    assert any(k.endswith(".delta") for k in kinds[: kinds.index("input_audio_buffer.committed")]), \
        "deltas should stream before the commit"
    assert st.server.active == 0 or _wait_idle(st)


def _wait_idle(st) -> bool:
    import time

    deadline = time.monotonic() + 5
    while st.server.active and time.monotonic() < deadline:
        time.sleep(0.05)
    return st.server.active == 0


def test_bad_events_are_errors_and_the_session_goes_on(serve_model, make_server, short_speech):
    """Unknown events, bad base64, odd byte counts, unsupported settings and an empty commit each get an
    `error` event (the client event's id echoed) and change nothing; `clear` drops the audio before it.
    Then a manual turn still transcribes exactly."""
    _, base = make_server()
    chunks = _pcm24_chunks(short_speech[0])
    ref = serve_model.transcribe(_server_view(chunks), 160).text.strip()
    noise = _pcm24_chunks(np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32))
    events: list = []

    async def main():
        async with _client(_port(base)).realtime.connect(extra_query={"intent": "transcription", "latency": "160"}) as conn:
            assert (await conn.recv()).type == "session.created"
            await conn.session.update(session={"type": "transcription", "audio": {"input": {"turn_detection": None}}})
            assert (await conn.recv()).type == "session.updated"
            bad = [
                {"type": "no.such.event", "event_id": "evt_unknown"},
                {"type": "input_audio_buffer.append", "audio": "not base64!", "event_id": "evt_b64"},
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode(), "event_id": "evt_odd"},
                {"type": "input_audio_buffer.commit", "event_id": "evt_empty"},
                {"type": "session.update", "event_id": "evt_fmt", "session": {"type": "transcription", "audio": {
                    "input": {"format": {"type": "audio/pcmu"}}}}},
                {"type": "session.update", "event_id": "evt_lang", "session": {"type": "transcription", "audio": {
                    "input": {"transcription": {"language": "de"}}}}},
                {"type": "session.update", "event_id": "evt_conv", "session": {"type": "realtime"}},
            ]
            for ev in bad:
                await conn.send(ev)
            errors = [await conn.recv() for _ in bad]
            assert [e.type for e in errors] == ["error"] * len(bad), errors
            assert [e.error.event_id for e in errors] == [ev["event_id"] for ev in bad]
            assert errors[3].error.code == "input_audio_buffer_commit_empty"
            assert errors[0].error.type == "invalid_request_error" and errors[0].error.param == "type"
            # raw text that is not JSON: an error too (sent below the SDK)
            await conn._connection.send("{not json")
            assert (await conn.recv()).type == "error"
            # audio appended then cleared is not part of the next turn
            await _stream(conn, noise, speed=20.0)
            await conn.input_audio_buffer.clear()
            collector = asyncio.create_task(_until_commit_completed(conn, events))
            await _stream(conn, chunks, speed=3.0)
            await conn.input_audio_buffer.commit()
            await collector

    asyncio.run(main())
    kinds = _types(events)
    assert "input_audio_buffer.cleared" in kinds and "error" not in kinds
    completed = [e for e in events if e.type.endswith(".completed")]
    assert [e.transcript for e in completed] == [ref]
    assert completed[0].usage.seconds > 0


def test_raw_socket_admission_and_bad_query(make_server, short_speech):
    """Below the SDK: a full server refuses the handshake with HTTP 503, like /v1/stream; an unknown
    intent or latency is refused with 1008; binary frames get an error and the session stays."""
    import aiohttp

    _, base = make_server(max_streams=1)

    async def main():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{base}/v1/realtime?intent=transcription") as ws1:
                created = json.loads((await ws1.receive()).data)
                assert created["type"] == "session.created"
                try:
                    async with http.ws_connect(f"{base}/v1/realtime?intent=transcription"):
                        raise AssertionError("a full server upgraded the connection")
                except aiohttp.WSServerHandshakeError as exc:
                    assert exc.status == 503 and int(exc.headers["Retry-After"]) >= 1
                async with http.get(f"{base.replace('ws://', 'http://')}/v1/realtime") as r:
                    err = await r.json()
                    assert r.status == 503 and err["error"]["code"] == "server_at_capacity"
                    assert "full" in err["error"]["message"]
                await ws1.send_bytes(b"\0\0")
                err = json.loads((await ws1.receive()).data)
                assert err["type"] == "error" and "input_audio_buffer.append" in err["error"]["message"]
            for query in ("intent=conversation", "intent=transcription&latency=7"):
                async with http.ws_connect(f"{base}/v1/realtime?{query}") as ws:
                    err = json.loads((await ws.receive()).data)
                    assert err["type"] == "error"
                    assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008

    asyncio.run(main())



def test_shutdown_completes_the_turn_then_closes_1001(serve_model, short_speech):
    """A server shutting down completes the turn in progress (reason `end`) before closing with 1001."""
    import aiohttp

    from streamasr.serve.server import ServerConfig, ServerThread

    st = ServerThread(serve_model, ServerConfig(host="127.0.0.1", port=0))  # stopped by the test itself
    base = f"ws://127.0.0.1:{st.start()}"
    chunks = _pcm24_chunks(short_speech[1])

    async def main():
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(f"{base}/v1/realtime?intent=transcription&latency=160") as ws:
            assert json.loads((await ws.receive()).data)["type"] == "session.created"
            for c in chunks:
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append",
                                              "audio": base64.b64encode(c).decode()}))
            await asyncio.sleep(0.5)
            stopping = asyncio.get_running_loop().run_in_executor(None, st.stop)
            events = []
            async for msg in ws:
                events.append(json.loads(msg.data))
            await stopping
            return events, ws.close_code

    events, code = asyncio.run(main())
    assert code == 1001
    # every item that got text was completed before the close (by an endpoint or, for the tail, `end`)
    items = {e["item_id"] for e in events if e["type"].endswith(".delta")}
    completed = [e for e in events if e["type"].endswith(".completed")]
    assert items and items == {e["item_id"] for e in completed}
    assert all(e["reason"] in ("silence", "vad", "max_length", "end") for e in completed)
    assert events[-1]["type"] == "error" and "shutting down" in events[-1]["error"]["message"]
