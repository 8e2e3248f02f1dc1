"""The server's WebSocket message handling fuzzed with Hypothesis (issue 18), end to end over a real socket.

Generated connection scripts mix random query strings with binary frames of arbitrary bytes (whole samples,
odd lengths, empty, NaN floats, over-size), text frames of arbitrary text and JSON (random objects, lists,
numbers, deep nesting, random "type" values, `{"type": "end"}` anywhere) and invalid UTF-8. Whatever they
send, the server answers as the README's protocol says:

- bad query parameters: one `error` message and close 1008;
- a frame that is not whole finite samples, or a text frame that is not UTF-8: an `error` and close 1007;
- a frame over --max-frame-bytes: close 1009;
- any other text message: one `error` each, and the stream stays open;
- `{"type": "end"}`: the last message is a `final`, close 1000;
- otherwise the stream stays open and answers;

every server message is strict JSON (no NaN) with a "type" of partial / final / error, no connection hangs,
a good stream of real speech sent meanwhile gets exactly `transcribe`'s text, `/health` still answers and no
stream is left behind. Deterministic (derandomize, no example database) and bounded: a few dozen generated
examples of 1-3 concurrent connections of at most 8 messages each.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from aiohttp import WSCloseCode
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from yarl import URL

from streamasr.runtime.endpoint import EndpointConfig
from streamasr.serve.client import encode_pcm, file_blocks, stream_blocks, stream_url
from streamasr.serve.server import ENCODINGS

#: small limits keep the over-size frames cheap; every generated text frame stays under them
MAX_FRAME = 1 << 15
STEP_TIMEOUT_S = 20.0  # how long a script waits for an answer or a close it expects (a hang detector)
CONNECTION_TIMEOUT_S = 60.0  # per generated example, all its connections: far above what any script needs
EVENT_TYPES = {"partial", "final", "error"}
CLOSE_CODES = {1000, 1007, 1008, 1009, 1011}  # refusals (full, busy) are HTTP 503 before the upgrade
FINAL_REASONS = {"silence", "max_length", "vad", "end"}

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: every example opens real sockets
                suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------------------------- strategies

_chars = st.characters(codec="utf-8")  # str that can be sent (no lone surrogates)
_text = st.text(_chars, max_size=40)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4), max_leaves=12)


#: each parameter: values the protocol accepts, and values it refuses
PARAMS = {
    "latency": (["80", "160", "560", "1120", " 160", "١٦٠", "1_60", "+80"],  # what int() reads
                ["123", "0", "-160", "1e3", "160.0", "0x10", "", "9" * 5000]),
    "sample_rate": (["16000", "016000"], ["8000", "44100", "0", "", "16k"]),
    "encoding": (sorted(ENCODINGS), ["mp3", "PCM_S16LE", "pcm_s24le", ""]),
    "vad": (["off", "silero"], ["on", "", "webrtc"]),
    "every_chunk": (["1", "true", "0"], []),
}


@st.composite
def queries(draw):
    """(key, value) pairs of the stream's query string: mostly valid; else one parameter is broken."""
    broken = draw(st.sampled_from([None] * 10 + list(PARAMS)))
    pairs = []
    for key, (valid, invalid) in PARAMS.items():
        if key != broken:
            value = draw(st.sampled_from([None, *valid]))  # None: omitted, the server's default
        else:
            value = draw(st.one_of(st.sampled_from(invalid or valid), _text, st.integers(-(10**6), 10**6).map(str)))
        if value is not None:
            pairs.append((key, value))
    pairs += draw(st.lists(st.tuples(_text, _text), max_size=2))  # random keys
    if draw(st.sampled_from([False] * 9 + [True])):  # a repeated key: the first value counts
        pairs.append((draw(st.sampled_from(list(PARAMS))), draw(_text)))
    return draw(st.permutations(pairs))


_audio = [
    st.tuples(st.just("bytes"), st.binary(max_size=3200)),  # cut to whole samples when sent
    st.tuples(st.just("floats"), st.lists(st.floats(width=32), max_size=64)),  # NaN, infinities, huge
    st.tuples(st.just("speech"), st.integers(0, 40000), st.integers(1, 16000)),  # real speech
    st.just(("empty",)),
]
_texts = [
    st.tuples(st.just("text"), st.text(_chars, max_size=200)),
    st.tuples(st.just("json"), _json_values),
    st.tuples(st.just("json"), st.fixed_dictionaries({"type": _json_values}, optional={"data": _json_values})),
    st.tuples(st.just("json"), st.fixed_dictionaries({"type": st.sampled_from(["END", "end ", "End", "stop", "",
                                                                              "partial", "final", "error"])})),
    st.tuples(st.just("text"), st.sampled_from(['"end"', '["end"]', '{"type": ["end"]}', '{"Type": "end"}',
                                                '{"type": "end", "type": "x"}', "{'type': 'end'}", "end",
                                                '{"type": "end"', "NaN", "1" * 5000, "\x00"])),
    st.tuples(st.just("nested"), st.integers(1, 6000), st.sampled_from(["[", '{"a":'])),  # json.loads' recursion
]
_breaking = [  # each ends the stream: rarer, so that scripts go on long enough to exercise the rest
    st.tuples(st.just("raw"), st.binary(min_size=1, max_size=64)),  # as is: odd lengths are malformed
    st.tuples(st.just("oversize"), st.integers(1, MAX_FRAME)),
    st.tuples(st.just("invalid_utf8"), st.binary(min_size=1, max_size=8).map(lambda b: b"\xff" + b)),
]
_messages = st.sampled_from(2 * _audio + _texts + _breaking).flatmap(lambda strategy: strategy)


@st.composite
def scripts(draw):
    """(query, messages) of one connection; most of them send `end` somewhere (often last)."""
    messages = draw(st.lists(_messages, max_size=7))
    if draw(st.sampled_from([True, True, True, False])):
        at = draw(st.one_of(st.just(len(messages)), st.integers(0, len(messages))))
        messages.insert(at, ("end", draw(st.dictionaries(_text.filter(lambda k: k != "type"), _json_values,
                                                         max_size=2))))
    return draw(queries()), messages


# ---------------------------------------------------------------------------------------------- the script


@dataclass
class Outcome:
    events: list = field(default_factory=list)
    raw: list = field(default_factory=list)  # (message type, data) of anything that was not a text frame
    close_code: int | None = None
    left_open: bool = False  # the server had not closed when the script was done


def _url(base: str, query: list) -> URL:
    return URL(f"{base}/v1/stream?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote), encoded=True)


def _server_query(query: list):
    """The query as the server reads it (the same parser: yarl; a repeated key's first value counts)."""
    return _url("ws://x", query).query


def _encoding(query: list) -> str:
    return ENCODINGS.get(_server_query(query).get("encoding", "pcm_s16le"), "s16le")


def _frame(msg, encoding: str, speech: np.ndarray) -> tuple[str, bytes]:
    """(opcode kind, payload) of one scripted message."""
    kind = msg[0]
    itemsize = 2 if encoding == "s16le" else 4
    if kind == "bytes":
        return "binary", msg[1][: len(msg[1]) - len(msg[1]) % itemsize]
    if kind == "raw":
        return "binary", msg[1]
    if kind == "floats":
        values = np.asarray(msg[1], dtype=np.float32)
        return "binary", values.astype("<f4").tobytes() if encoding == "f32le" else encode_pcm(
            np.nan_to_num(values), "pcm_s16le")
    if kind == "speech":
        return "binary", encode_pcm(speech[msg[1] : msg[1] + msg[2]], "pcm_" + encoding)
    if kind == "empty":
        return "binary", b""
    if kind == "oversize":
        n = MAX_FRAME + msg[1]
        return "binary", b"\x00" * (n - n % itemsize)
    if kind == "text":
        return "text", msg[1].encode()
    if kind == "json":
        return "text", json.dumps(msg[1]).encode()
    if kind == "nested":
        return "text", (msg[2] * msg[1]).encode()
    if kind == "invalid_utf8":
        return "text", msg[1]
    if kind == "end":
        return "text", json.dumps({**msg[1], "type": "end"}).encode()
    raise AssertionError(kind)


def _refused_params(query: list, model) -> bool:
    """Whether the README's protocol refuses these parameters (1008), read as the server reads them."""
    q = _server_query(query)
    try:
        latency = int(q.get("latency", model.config.encoder.default_latency_ms))
        rate = int(q.get("sample_rate", model.sample_rate))
    except ValueError:
        return True
    return (latency not in model.latency_modes or rate != model.sample_rate
            or q.get("encoding", "pcm_s16le") not in ENCODINGS or q.get("vad", "off") not in ("silero", "off"))


@dataclass
class Expected:
    close_code: int | None  # None: the stream stays open
    errors: int  # `error` answers to unknown text messages before the close
    cause: str = ""  # what closes it: params, audio, utf8, oversize, end
    at: int = 0  # the frame that closes it


def _expected(query: list, frames: list, model) -> Expected:
    """What the README's protocol says the server does with this script."""
    if _refused_params(query, model):
        return Expected(1008, 0, "params")
    encoding = _encoding(query)
    itemsize = 2 if encoding == "s16le" else 4
    errors = 0
    for i, (kind, payload) in enumerate(frames):
        if kind == "binary":
            if len(payload) > MAX_FRAME:
                return Expected(1009, errors, "oversize", i)
            if len(payload) % itemsize or (encoding == "f32le" and not np.isfinite(
                    np.frombuffer(payload, "<f4")).all()):
                return Expected(1007, errors, "audio", i)
            continue
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return Expected(1007, errors, "utf8", i)
        try:
            control = json.loads(text)
        except (ValueError, RecursionError):
            control = None
        if isinstance(control, dict) and control.get("type") == "end":
            return Expected(1000, errors, "end", i)
        errors += 1
    return Expected(None, errors)


async def _send(ws, kind: str, payload: bytes) -> None:
    if kind == "binary":
        await ws.send_bytes(payload)
    else:  # text frames as raw bytes, so that invalid UTF-8 goes out too
        await ws._writer.send_frame(payload, aiohttp.WSMsgType.TEXT)


def _error_count(events: list) -> int:
    n = 0
    for e in events:
        try:
            n += json.loads(e).get("type") == "error"
        except (ValueError, AttributeError):
            pass
    return n


async def _run_script(http, base: str, query: list, frames: list, expect: Expected) -> Outcome:
    code, errors = expect.close_code, expect.errors
    out = Outcome()
    async with http.ws_connect(_url(base, query), max_msg_size=0) as ws:
        async def read():
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    out.events.append(msg.data)
                else:
                    out.raw.append((msg.type, msg.data))

        reader = asyncio.create_task(read())
        for kind, payload in frames:
            if ws.closed or reader.done():
                break
            try:
                await _send(ws, kind, payload)
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                break  # the server closed the stream meanwhile
        if code is None:
            # a stream that stays open answers every unknown text message; then the client leaves
            deadline = time.monotonic() + STEP_TIMEOUT_S
            while not reader.done() and _error_count(out.events) < errors and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # time for a close the server may (wrongly) be sending
        else:
            await asyncio.wait({reader}, timeout=STEP_TIMEOUT_S)  # the server's close
        if not reader.done():
            out.left_open = True
            await ws.close()
        await reader
        out.close_code = ws.close_code
    return out


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_event(e: dict) -> None:
    assert isinstance(e, dict) and e.get("type") in EVENT_TYPES, e
    if e["type"] == "partial":
        assert isinstance(e["text"], str) and _number(e["audio_s"]), e
    elif e["type"] == "final":
        assert isinstance(e["text"], str) and e["reason"] in FINAL_REASONS, e
        assert _number(e["start_s"]) and _number(e["end_s"]), e
        for w in e["words"]:
            assert isinstance(w["word"], str) and all(_number(w[k]) for k in ("start_s", "end_s", "confidence")), w
    else:
        assert isinstance(e["message"], str) and e["message"], e


def _check_outcome(query, frames, out: Outcome, model) -> None:
    exp = _expected(query, frames, model)
    note(f"query={query!r} frames={[(k, p[:60], len(p)) for k, p in frames]!r}")
    note(f"expected {exp}; got close {out.close_code} left_open={out.left_open} "
         f"events={[e[:200] for e in out.events]!r} raw={out.raw!r}")
    events = [_strict_json(e) for e in out.events]
    for e in events:
        _check_event(e)
    if (exp.close_code is not None and out.close_code == WSCloseCode.ABNORMAL_CLOSURE
            and any(kind == "text" and not _utf8(p) for kind, p in frames[exp.at:])):
        # a text frame that is not UTF-8 breaks the WebSocket protocol itself: arriving while the server
        # closes the stream, it makes aiohttp drop the connection (RFC 6455 7.1.7, "fail the connection"),
        # and what was in flight may be lost
        return
    assert all(kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
               for kind, _ in out.raw), f"the server sent something other than JSON text frames: {out.raw}"
    errors = [e for e in events if e["type"] == "error"]
    if exp.close_code is None:
        assert out.left_open, f"the stream was closed ({out.close_code}) though nothing called for it"
        assert len(errors) == exp.errors, "each unknown text message is answered with one error"
        return
    assert not out.left_open, f"expected close {exp.close_code}, but the stream stayed open"
    assert out.close_code in CLOSE_CODES, out.close_code
    assert out.close_code == exp.close_code, f"close {out.close_code}, expected {exp.close_code}"
    if exp.cause == "params":
        assert [e["type"] for e in events] == ["error"], "bad parameters: one error, then the close"
    elif exp.cause == "audio":
        assert len(errors) == exp.errors + 1 and "malformed audio frame" in events[-1].get("message", "")
    elif exp.cause == "utf8":  # aiohttp's own close; the server's error message may not get out before it
        assert exp.errors <= len(errors) <= exp.errors + 1
    elif exp.cause == "end":
        assert len(errors) == exp.errors and events[-1]["type"] == "final"
    else:  # oversize
        assert len(errors) >= exp.errors


def _utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ---------------------------------------------------------------------------------------------- the tests


def _good_streams(base: str, samples: np.ndarray, stop: threading.Event) -> list:
    """Real speech streamed at real-time pace, again and again until `stop`: the stream that the fuzzed
    clients beside it must not harm."""
    results = []
    while not stop.is_set():
        results.append(asyncio.run(stream_blocks(stream_url(base, 160), file_blocks(samples, 100), realtime=True,
                                                 timeout=60)))
    return results


def _health(base: str) -> dict:
    with urllib.request.urlopen(base.replace("ws://", "http://") + "/health", timeout=10) as r:
        return json.loads(r.read())


def _wait(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_fuzzed_clients_get_the_protocols_answers_and_a_good_stream_is_unharmed(
        serve_model, make_server, short_speech, s16_roundtrip):
    # max_load off: admission must not depend on how busy this machine happens to be
    server, base = make_server(endpoint=EndpointConfig(0, 0), max_load=1.0, max_frame_bytes=MAX_FRAME)
    good_samples, fuzz_speech = short_speech[0], np.concatenate(short_speech[1:])
    expected_text = serve_model.transcribe(s16_roundtrip(good_samples), 160).text.strip()
    stop = threading.Event()
    pool = ThreadPoolExecutor(1, thread_name_prefix="good-stream")
    good = pool.submit(_good_streams, base, good_samples, stop)

    @FUZZ
    @given(batch=st.lists(scripts(), min_size=1, max_size=3))
    def fuzz(batch):
        plans = []
        for query, messages in batch:
            frames = [_frame(m, _encoding(query), fuzz_speech) for m in messages]
            plans.append((query, frames, _expected(query, frames, serve_model)))

        async def main():
            async with aiohttp.ClientSession() as http:
                return await asyncio.wait_for(asyncio.gather(*(_run_script(http, base, *p) for p in plans)),
                                              CONNECTION_TIMEOUT_S)

        outcomes = asyncio.run(main())
        for (query, frames, expected), out in zip(plans, outcomes):
            seen[f"close {expected.close_code} ({expected.cause or 'open'})"] += 1
            _check_outcome(query, frames, out, serve_model)

    seen = collections.Counter()
    try:
        fuzz()
        print("fuzzed connections by expected outcome:", dict(seen))
    finally:
        stop.set()
        pool.shutdown(wait=True)
    results = good.result()
    assert results
    for res in results:
        assert res.close_code == 1000 and not res.errors, res.events[-3:]
        assert res.finals[-1]["text"] == expected_text
    assert _health(base)["status"] == "ok"
    # nothing is left behind: every fuzzed stream's state is gone from the server and the scheduler
    assert _wait(lambda: server.server.active == 0 and server.server.scheduler.active == 0)


def test_deeply_nested_json_is_answered_like_any_unknown_text_message(make_server):
    """json.loads raises RecursionError (not a ValueError) past ~1000 levels of nesting: the server must
    answer it with an error as it does any other text that is not `end`, and keep the stream."""
    _, base = make_server(endpoint=EndpointConfig(0, 0))

    async def main():
        async with aiohttp.ClientSession() as http, http.ws_connect(stream_url(base, 160)) as ws:
            await ws.send_str("[" * 100000)
            await ws.send_bytes(b"\x00\x00" * 1600)
            await ws.send_str('{"type": "end"}')
            events = []
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    events.append(json.loads(msg.data))
            return events, ws.close_code

    events, code = asyncio.run(asyncio.wait_for(main(), CONNECTION_TIMEOUT_S))
    assert code == 1000, (code, events)
    assert events[0]["type"] == "error" and events[0]["message"], events
    assert events[-1]["type"] == "final"
    assert _health(base)["status"] == "ok"


def test_refusal_with_a_non_ascii_value_sends_a_valid_close_frame(make_server):
    """The close frame's reason is at most 123 bytes (RFC 6455 5.5: a control frame's payload is at most 125
    bytes, 2 of them the code). An error that quotes the client's non-ASCII value must be cut in bytes, not
    characters, or the client sees a protocol error (1002) instead of the 1008 and its message."""
    _, base = make_server()
    for query in ("latency=" + "%C3%A9" * 80, "encoding=" + "%E2%82%AC" * 60, "vad=" + "%F0%9F%8E%A4" * 40):

        async def main(query=query):
            async with aiohttp.ClientSession() as http, http.ws_connect(
                    URL(f"{base}/v1/stream?{query}", encoded=True)) as ws:
                return [msg async for msg in ws], ws.close_code

        messages, code = asyncio.run(asyncio.wait_for(main(), CONNECTION_TIMEOUT_S))
        assert code == 1008, (query, code, messages)
        assert [m.type for m in messages] == [aiohttp.WSMsgType.TEXT], messages
        assert _strict_json(messages[0].data)["type"] == "error"
