"""The Wyoming TCP server (serve/wyoming.py) over real sockets on 127.0.0.1, with the `wyoming` package's own
`AsyncTcpClient` as the client (what Home Assistant uses): describe, one utterance per connection, any PCM
format, and bad clients that must not harm a concurrent good one."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
from server_process import free_port, running_server
from wyoming.asr import (
    Transcribe,
    Transcript,
    TranscriptChunk,
    TranscriptStart,
    TranscriptStop,
)
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe, Info, SelectProgram
from wyoming.ping import Ping, Pong

from streamasr.audio import read_audio, resample
from streamasr.cli import main
from streamasr.errors import StreamASRError
from streamasr.runtime.endpoint import EndpointConfig
from streamasr.serve.server import ServerThread
from streamasr.serve.wyoming import parse_wyoming_uri, pcm_to_mono

WYOMING = "tcp://127.0.0.1:0"


def _wyoming_server(make_server, **kw) -> tuple[ServerThread, int]:
    st, _ = make_server(wyoming=WYOMING, **kw)
    assert st.server.wyoming_port
    return st, st.server.wyoming_port


def _to_s16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


async def _request(port: int, pcm: bytes, rate: int = 16000, width: int = 2, channels: int = 1,
                   transcribe: Transcribe | None = None, before_stop=None) -> list[Event]:
    """One utterance on one connection, in 100 ms chunks; every event the server sends until it closes."""
    async with AsyncTcpClient("127.0.0.1", port, connect_timeout=5, read_timeout=60) as client:
        await client.write_event((transcribe or Transcribe(language="en")).event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        step = rate // 10 * width * channels
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=rate, width=width, channels=channels,
                                                audio=pcm[i : i + step]).event())
        if before_stop is not None:
            await before_stop()
        await client.write_event(AudioStop().event())
        events = []
        while (event := await client.read_event()) is not None:
            events.append(event)
        return events


def _check_streaming(events: list[Event]) -> str:
    """The streaming shape (transcript-start, chunks of new text, transcript, transcript-stop); the text."""
    kinds = [e.type for e in events]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"], kinds
    assert set(kinds[1:-2]) <= {"transcript-chunk"}, kinds
    assert TranscriptStart.is_type(events[0].type) and TranscriptStop.is_type(events[-1].type)
    text = Transcript.from_event(events[-2]).text
    chunks = [TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type)]
    assert "".join(chunks) == text  # each chunk carries only the new text
    return text


def _wait_idle(st: ServerThread) -> None:
    for _ in range(100):
        if st.server.active == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"{st.server.active} streams still open")


def test_describe_lists_the_model_and_its_latencies(serve_model, make_server):
    _, port = _wyoming_server(make_server)

    async def go():
        async with AsyncTcpClient("127.0.0.1", port, connect_timeout=5, read_timeout=30) as client:
            await client.write_event(Describe().event())
            info = await client.read_event()
            await client.write_event(Ping(text="hi").event())  # the connection stays open after describe
            pong = await client.read_event()
            return info, pong

    event, pong = asyncio.run(go())
    assert Info.is_type(event.type)
    assert Pong.from_event(pong).text == "hi"
    info = Info.from_event(event)
    assert len(info.asr) == 1
    program = info.asr[0]
    assert program.name == "streamasr" and program.installed and program.supports_transcript_streaming
    model_id = serve_model.config.model_id
    names = [m.name for m in program.models]
    assert names[0] == model_id  # the default latency mode
    default = serve_model.config.encoder.default_latency_ms
    assert sorted(names[1:]) == sorted(f"{model_id}@{ms}ms" for ms in serve_model.latency_modes if ms != default)
    for m in program.models:
        assert m.languages == ["en"] and m.installed and m.attribution.name == "NVIDIA"


def test_transcript_equals_transcribe(serve_model, make_server, short_speech, s16_roundtrip):
    """16 kHz 16-bit mono in 100 ms chunks -> the model's transcript of the same samples at the default
    latency; chunks of new text before it. Endpointing stays on (the server's default): the transcript is the
    whole request's text, whatever the endpoints."""
    st, port = _wyoming_server(make_server)
    x = short_speech[0]
    events = asyncio.run(_request(port, _to_s16(x).tobytes()))
    text = _check_streaming(events)
    assert text == serve_model.transcribe(s16_roundtrip(x)).text.strip()
    assert text  # the tiny random model says something for real speech
    _wait_idle(st)


def test_text_streams_before_audio_stop(serve_model, make_server, short_speech, s16_roundtrip):
    """transcript-chunks arrive while the audio is still coming (as chunks decode), not only at the end."""
    _, port = _wyoming_server(make_server)
    x = short_speech[0]
    pcm = _to_s16(x).tobytes()
    early = len(pcm) - 16000  # all but the last 0.5 s

    async def go():
        async with AsyncTcpClient("127.0.0.1", port, connect_timeout=5, read_timeout=30) as client:
            await client.write_event(SelectProgram(name="streamasr").event())
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            for i in range(0, early, 3200):
                await client.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                                    audio=pcm[i : min(i + 3200, early)]).event())
            first = [await client.read_event(), await client.read_event()]  # before audio-stop is sent
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[early:]).event())
            await client.write_event(AudioStop().event())
            return first + [e async for e in _until_eof(client)]

    events = asyncio.run(go())
    assert [e.type for e in events[:2]] == ["transcript-start", "transcript-chunk"]
    assert _check_streaming(events) == serve_model.transcribe(s16_roundtrip(x)).text.strip()


def test_model_name_picks_the_latency(serve_model, make_server, short_speech, s16_roundtrip):
    _, port = _wyoming_server(make_server)
    x = short_speech[1]
    ms = min(serve_model.latency_modes)
    name = f"{serve_model.config.model_id}@{ms}ms"
    events = asyncio.run(_request(port, _to_s16(x).tobytes(), transcribe=Transcribe(name=name, language="en-US")))
    assert _check_streaming(events) == serve_model.transcribe(s16_roundtrip(x), ms).text.strip()


def test_48k_stereo_equals_transcribing_the_wav(serve_model, make_server, short_speech, tmp_path):
    """48 kHz stereo s16: the server averages the channels and resamples with one soxr HQ stream, which gives
    exactly the samples `read_audio` (what `streamasr transcribe` uses) reads from a WAV of the same audio, so
    the transcript equals transcribing that WAV."""
    _, port = _wyoming_server(make_server)
    x48 = resample(short_speech[2], 16000, 48000)
    stereo = _to_s16(np.stack([x48, 0.5 * x48 + 0.01 * np.sin(np.arange(x48.size) / 7.0)], axis=1))
    wav = tmp_path / "stereo48k.wav"
    sf.write(wav, stereo, 48000, subtype="PCM_16")
    events = asyncio.run(_request(port, stereo.tobytes(), rate=48000, width=2, channels=2))
    assert _check_streaming(events) == serve_model.transcribe(read_audio(wav, 16000)).text.strip()


def test_audio_stop_without_audio_is_an_empty_transcript(make_server):
    _, port = _wyoming_server(make_server)

    async def go():
        async with AsyncTcpClient("127.0.0.1", port, connect_timeout=5, read_timeout=30) as client:
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStop().event())
            return [e async for e in _until_eof(client)]

    events = asyncio.run(go())
    assert [e.type for e in events] == ["transcript"] and Transcript.from_event(events[0]).text == ""


async def _until_eof(client: AsyncTcpClient):
    while (event := await client.read_event()) is not None:
        yield event


def _header(kind: str, **fields) -> bytes:
    return json.dumps({"type": kind, **fields}).encode() + b"\n"


#: (what a bad client sends, the error code the server answers with before it closes the connection)
BAD_INPUTS = {
    "garbage": (b"\x00\xff\xfe not json at all\n", "bad-request"),
    "json_not_object": (b"[1, 2, 3]\n", "bad-request"),
    "no_type": (b'{"data": {}}\n', "bad-request"),
    "huge_data_length": (_header("transcribe", data_length=1 << 40), "too-large"),
    "negative_data_length": (_header("transcribe", data_length=-5), "bad-request"),
    "huge_payload": (_header("audio-chunk", data={"rate": 16000, "width": 2, "channels": 1},
                             payload_length=1 << 30), "too-large"),
    "data_not_json": (_header("transcribe", data_length=4) + b"\xff{[x", "bad-request"),
    "chunk_before_start": (_header("audio-chunk", data={"rate": 16000, "width": 2, "channels": 1},
                                   payload_length=4) + b"\x00\x00\x00\x00", "bad-request"),
    "unknown_event": (_header("synthesize", data={"text": "hello"}), "unknown-event"),
    "language": (_header("transcribe", data={"language": "de"}), "unsupported-language"),
    "model_name": (_header("transcribe", data={"name": "whisper-large"}), "unknown-model"),
    "program_name": (_header("select-program", data={"name": "faster-whisper"}), "unknown-program"),
    "bad_rate": (_header("audio-start", data={"rate": 10, "width": 2, "channels": 1}), "bad-audio"),
    "bad_width": (_header("audio-start", data={"rate": 16000, "width": 8, "channels": 1}), "bad-audio"),
    "odd_payload": (_header("audio-start", data={"rate": 16000, "width": 2, "channels": 1})
                    + _header("audio-chunk", data={"rate": 16000, "width": 2, "channels": 1}, payload_length=3)
                    + b"\x01\x02\x03", "bad-audio"),
    "format_changes": (_header("audio-start", data={"rate": 16000, "width": 2, "channels": 1})
                       + _header("audio-chunk", data={"rate": 8000, "width": 2, "channels": 1}, payload_length=2)
                       + b"\x01\x02", "bad-audio"),
    "long_header": (b'{"type": "' + b"x" * 100_000 + b'"}\n', "bad-request"),
}


async def _send_raw(port: int, raw: bytes) -> list[Event]:
    """Raw bytes on a fresh connection; the events the server sends until it closes (read with the
    package's own reader)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        events = []
        while (event := await asyncio.wait_for(async_read_event(reader), 30)) is not None:
            events.append(event)
        return events
    finally:
        writer.close()


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_an_error_and_the_connection_closed(make_server, case):
    st, port = _wyoming_server(make_server)
    raw, code = BAD_INPUTS[case]
    events = asyncio.run(_send_raw(port, raw))
    errors = [e for e in events if Error.is_type(e.type)]
    assert len(errors) == 1 and Error.from_event(errors[0]).code == code, events
    assert events[-1] is errors[0]  # the connection closed right after it
    _wait_idle(st)
    assert st.server.metrics.value("streamasr_client_errors_total") >= 1


def test_bad_clients_do_not_break_a_concurrent_request(serve_model, make_server, short_speech, s16_roundtrip):
    """While a good request streams its audio, other connections send garbage, a huge data_length, audio
    before audio-start and an unknown event, and one vanishes mid-request; the good one's transcript is intact
    and the server still answers."""
    st, port = _wyoming_server(make_server)
    x = short_speech[0]
    bad_answers: list[list[Event]] = []

    async def vanish():
        async with AsyncTcpClient("127.0.0.1", port, connect_timeout=5) as client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                                audio=_to_s16(x[:8000]).tobytes()).event())

    async def bad_clients():
        for case in ("garbage", "huge_data_length", "chunk_before_start", "unknown_event"):
            bad_answers.append(await _send_raw(port, BAD_INPUTS[case][0]))
        await vanish()

    async def go():
        return await _request(port, _to_s16(x).tobytes(), before_stop=bad_clients)

    events = asyncio.run(go())
    assert _check_streaming(events) == serve_model.transcribe(s16_roundtrip(x)).text.strip()
    assert all(Error.is_type(a[-1].type) for a in bad_answers), bad_answers
    _wait_idle(st)
    # and a fresh request afterwards still works
    events = asyncio.run(_request(port, _to_s16(short_speech[1]).tobytes()))
    assert _check_streaming(events) == serve_model.transcribe(s16_roundtrip(short_speech[1])).text.strip()


def test_full_server_refuses_with_an_error_event(make_server):
    st, port = _wyoming_server(make_server, max_streams=1)

    async def go():
        async with AsyncTcpClient("127.0.0.1", port, connect_timeout=5, read_timeout=30) as first:
            await first.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            assert TranscriptStart.is_type((await first.read_event()).type)
            return await _send_raw(port, _header("audio-start", data={"rate": 16000, "width": 2, "channels": 1}))

    events = asyncio.run(go())
    assert [Error.from_event(e).code for e in events] == ["server-busy"]
    assert "full" in Error.from_event(events[0]).text
    _wait_idle(st)
    # /metrics counts the admitted request and the refused one under the wyoming protocol
    assert st.server.metrics.value("streamasr_streams_rejected_total", protocol="wyoming") == 1
    assert st.server.metrics.value("streamasr_streams_total", protocol="wyoming") == 1


def test_idle_connection_is_closed(make_server):
    _, port = _wyoming_server(make_server, idle_timeout_s=0.5)

    async def go():
        async with AsyncTcpClient("127.0.0.1", port, connect_timeout=5, read_timeout=10) as client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            return [e async for e in _until_eof(client)]

    events = asyncio.run(go())
    assert [e.type for e in events] == ["transcript-start", "error"]
    assert Error.from_event(events[-1]).code == "timeout"


def test_stopping_the_server_drops_open_connections(serve_model):
    st = ServerThread(serve_model, _config(wyoming=WYOMING))
    st.start()
    port = st.server.wyoming_port

    async def go():
        async with AsyncTcpClient("127.0.0.1", port, connect_timeout=5, read_timeout=20) as client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.read_event()
            await asyncio.get_running_loop().run_in_executor(None, st.stop)
            return await client.read_event()

    assert asyncio.run(go()) is None  # closed, not hung


def _config(**kw):
    from streamasr.serve.server import ServerConfig

    return ServerConfig(host="127.0.0.1", port=0, endpoint=EndpointConfig(), **kw)


def test_pcm_formats_scale_like_libsndfile(tmp_path):
    """Every width the server takes reads as libsndfile reads the same PCM (the transcribe command's path; 8-bit
    is unsigned, as in WAV), channels averaged as `to_mono` does."""
    rng = np.random.default_rng(0)
    x = (rng.uniform(-0.9, 0.9, (800, 2))).astype(np.float32)
    for subtype, width in (("PCM_U8", 1), ("PCM_16", 2), ("PCM_24", 3), ("PCM_32", 4)):
        path = tmp_path / f"{subtype}.raw"
        sf.write(path, x, 16000, format="RAW", subtype=subtype, endian="LITTLE")
        raw = path.read_bytes()
        assert len(raw) == 800 * 2 * width, subtype
        read, _ = sf.read(path, dtype="float32", format="RAW", subtype=subtype, endian="LITTLE", channels=2,
                          samplerate=16000)
        ref = read.mean(axis=1, dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(pcm_to_mono(raw, width, 2), ref, err_msg=subtype)


def test_parse_uri():
    assert parse_wyoming_uri("tcp://127.0.0.1:10300") == ("127.0.0.1", 10300)
    assert parse_wyoming_uri("tcp://[::1]:0") == ("::1", 0)
    for bad in ("127.0.0.1:10300", "http://127.0.0.1:10300", "tcp://127.0.0.1", "tcp://:10300",
                "tcp://127.0.0.1:99999", "tcp://127.0.0.1:x", "tcp://127.0.0.1:10300/path", "unix:///tmp/s"):
        with pytest.raises(StreamASRError, match="--wyoming"):
            parse_wyoming_uri(bad)


def test_serve_command_with_wyoming(serve_model, short_speech, s16_roundtrip, capsys):
    """`streamasr serve --wyoming tcp://...` as a real process: describe and one request; a bad URI is one
    line before the model loads."""
    assert main(["serve", "--model", str(serve_model.directory), "--allow-random", "--wyoming",
                 "http://127.0.0.1:10300"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--wyoming 'http://127.0.0.1:10300': only tcp://" in err
    wport = free_port()
    with running_server(serve_model.directory, "--threads", "1", "--warmup-batches", "0", "--wyoming",
                        f"tcp://127.0.0.1:{wport}", stdout=subprocess.PIPE) as (proc, _):
        x = short_speech[1]
        events = asyncio.run(_request(wport, _to_s16(x).tobytes()))
        assert _check_streaming(events) == serve_model.transcribe(s16_roundtrip(x)).text.strip()
