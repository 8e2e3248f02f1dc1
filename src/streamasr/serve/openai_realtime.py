"""OpenAI Realtime transcription sessions: `GET /v1/realtime?intent=transcription` (WebSocket).

Voice-agent frameworks and dictation apps speak OpenAI's Realtime API, not streamasr's own `/v1/stream`, so
this route lets them point the `openai` SDK (or any Realtime client) at `streamasr serve` unchanged. Both
dialects are spoken, on the same route:

- GA: `session.update` with `session.type == "transcription"` and the nested `audio.input.{format,
  transcription, turn_detection, noise_reduction}`; the first event is `session.created`.
- beta (header `OpenAI-Beta: realtime=v1`, or a `transcription_session.update` event): the flat
  `input_audio_format`, `input_audio_transcription`, `turn_detection`; events `transcription_session.created`
  / `.updated`, and `conversation.item.created` instead of `conversation.item.added`.

Audio arrives as `input_audio_buffer.append` events carrying base64 PCM16 (24 kHz mono by default; any rate
from 8 to 48 kHz declared in `audio.input.format.rate` is accepted as an extension). It is resampled to the
model's 16 kHz by one soxr stream per turn (a filter state across appends, so no edge artefact at every
event) and recognised by a `StreamSession` on the server's batching scheduler, so realtime connections share
the CPU fairly with `/v1/stream` and every other route.

Turns. With server-side turn detection (the default, `turn_detection: {"type": "server_vad", ...}`) a turn is
one utterance of streamasr's endpointer (silence of `silence_duration_ms`, Silero VAD when the server runs
it, or the maximum utterance length): `speech_started` when its first text appears, a `delta` with only the
new text whenever it grows, then `speech_stopped`, `committed`, `conversation.item.added` and `completed`
with the turn's transcript, its words with times (`words: [{word, start, end, confidence}]`, seconds since
the connection's first audio) and why it ended (`reason`: silence | vad | max_length | commit | end), both
extensions the SDK exposes as extra fields. With `turn_detection: null` the client's
`input_audio_buffer.commit` closes the turn (deltas still stream as audio is decoded). A commit in either
mode ends the turn's recognition stream: its tail is encoded and decoded, and the next audio starts a fresh
stream, so a committed turn's text is exactly `Model.transcribe` of its audio. `input_audio_buffer.clear`
drops the uncommitted audio (the turn's stream is discarded, its item never completes).

Errors are `{"type": "error", "error": {"type", "code", "message", "param", "event_id"}}` and never close the
connection (bad base64, unknown events, unsupported settings); only the server's own limits do (the close
codes of `/v1/stream`: 1001 shutdown, 1008 idle, 1011 internal error), and those first complete the turn in
progress. A full, busy or stopping server refuses the handshake itself with HTTP 503 and `Retry-After`, as
`/v1/stream` does, so a load balancer can send the client to another replica.

Why one recognition stream per committed turn: a commit says "this audio is the whole utterance", and the
only way to decode the last word without waiting for audio that may never come is to finish the stream (its
tail is padded, as at the end of `/v1/stream`). Server-detected turns do not restart the stream (endpoints
never reset the encoder caches), so the tokens of a connection without commits equal those of the whole
audio transcribed at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import soxr
from aiohttp import WSMsgType, web

from streamasr.audio import pcm_to_float
from streamasr.errors import StreamASRError
from streamasr.runtime.endpoint import EndpointConfig
from streamasr.runtime.stream import Model
from streamasr.serve.languages import client_language, reported_language
from streamasr.serve.scheduler import Scheduler
from streamasr.serve.session import StreamSession

log = logging.getLogger("streamasr.serve")

PATH = "/v1/realtime"
DEFAULT_RATE = 24000  # OpenAI's only PCM rate; others are accepted as an extension
MIN_RATE, MAX_RATE = 8000, 48000
MIN_COMMIT_S = 0.1  # OpenAI refuses to commit less than 100 ms of audio
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_BAD_DATA, CLOSE_POLICY = 1000, 1001, 1007, 1008
CLOSE_INTERNAL = 1011
#: the `protocol` label of these sessions in /metrics
PROTOCOL = "openai_realtime"
_DONE = {"type": "_done"}
_conn_ids = itertools.count(1)


class ServerLike(Protocol):
    """What this route uses of `serve.server.Server` (typed structurally: server.py imports this module)."""

    model: Model
    config: Any  # ServerConfig
    scheduler: Scheduler
    metrics: Any  # Metrics
    active: int
    accepting: bool
    _open: dict

    def _refusal(self) -> Any: ...  # Refusal | None, with .response(**error_fields): the 503 before upgrade

    def stream_endpoint(self, query) -> EndpointConfig: ...


def add_routes(app: web.Application, server: ServerLike) -> None:
    """Register the Realtime route on the server's app (called from `Server.app`)."""

    async def handle(request: web.Request) -> web.WebSocketResponse:
        return await RealtimeConnection(server, request).run()

    app.router.add_get(PATH, handle)


# ------------------------------------------------------------------------------------------ configuration
@dataclass
class TranscriptionConfig:
    """The session's effective configuration, echoed in `session.created` / `session.updated`."""

    rate: int = DEFAULT_RATE
    model: str = ""
    language: str | None = "en"
    prompt: str = ""
    turn_detection: dict | None = field(default_factory=lambda: {"type": "server_vad"})
    noise_reduction: dict | None = None
    include: list = field(default_factory=list)

    def ga(self, session_id: str) -> dict:
        return {"type": "transcription", "object": "realtime.session", "id": session_id,
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.rate},
                                    "noise_reduction": self.noise_reduction,
                                    "transcription": {"model": self.model, "language": self.language,
                                                      "prompt": self.prompt},
                                    "turn_detection": self.turn_detection}},
                "include": list(self.include)}

    def beta(self, session_id: str) -> dict:
        return {"id": session_id, "object": "realtime.transcription_session", "modalities": ["text"],
                "input_audio_format": "pcm16" if self.rate == DEFAULT_RATE else f"pcm16@{self.rate}",
                "input_audio_transcription": {"model": self.model, "language": self.language, "prompt": self.prompt},
                "turn_detection": self.turn_detection, "input_audio_noise_reduction": self.noise_reduction,
                "include": list(self.include), "client_secret": None}


class RealtimeError(Exception):
    """A client mistake answered with an `error` event; the connection stays up."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.param, self.kind = code, param, kind


def apply_update(cfg: TranscriptionConfig, session: dict, server_silence_ms: int,
                 model: Model | None = None) -> TranscriptionConfig:
    """A new config from a `session.update` (GA or beta shape) or `transcription_session.update`; the
    old one stays in force when anything is refused, as with OpenAI. `model` checks the language (without
    one only English is accepted)."""
    if not isinstance(session, dict):
        raise RealtimeError("session must be an object", param="session")
    new = replace(cfg, include=list(cfg.include))
    kind = session.get("type")
    if kind not in (None, "transcription"):
        raise RealtimeError(f"session.type {kind!r} is not supported: streamasr serves transcription sessions "
                            "only (connect with ?intent=transcription)", param="session.type")
    audio_in = session.get("audio", {}).get("input", {}) if isinstance(session.get("audio"), dict) else {}
    if not isinstance(audio_in, dict):
        raise RealtimeError("session.audio.input must be an object", param="session.audio.input")
    # GA nested keys, then the beta flat ones (either may come in either event, as speaches and LiteLLM send)
    if "format" in audio_in:
        new.rate = _ga_rate(audio_in["format"])
    if "input_audio_format" in session:
        new.rate = _beta_rate(session["input_audio_format"])
    transcription = audio_in.get("transcription", session.get("input_audio_transcription"))
    if transcription is not None:
        if not isinstance(transcription, dict):
            raise RealtimeError("the transcription settings must be an object", param="transcription")
        language = transcription.get("language", new.language)
        if model is not None:
            try:
                new.language = reported_language(model, client_language(model, language))
            except StreamASRError as exc:
                raise RealtimeError(str(exc), param="transcription.language") from None
        elif language not in (None, "") and not str(language).lower().startswith("en"):
            raise RealtimeError(f"language {language!r} is not supported: this model transcribes English ('en')",
                                param="transcription.language")
        else:
            new.language = language or "en"
        new.model = str(transcription.get("model") or new.model)
        new.prompt = str(transcription.get("prompt") or "")  # accepted, not used (no prompting in RNN-T)
    if "turn_detection" in audio_in or "turn_detection" in session:
        new.turn_detection = _turn_detection(audio_in.get("turn_detection", session.get("turn_detection")),
                                             server_silence_ms)
    if "noise_reduction" in audio_in or "input_audio_noise_reduction" in session:
        new.noise_reduction = audio_in.get("noise_reduction", session.get("input_audio_noise_reduction"))
    if "include" in session:
        include = session["include"] or []
        if not isinstance(include, list):
            raise RealtimeError("include must be a list", param="session.include")
        new.include = include
    return new


def _ga_rate(fmt: Any) -> int:
    if not isinstance(fmt, dict):
        raise RealtimeError("audio.input.format must be an object", param="session.audio.input.format")
    kind = fmt.get("type", "audio/pcm")
    if kind != "audio/pcm":
        raise RealtimeError(f"audio format {kind!r} is not supported; send audio/pcm (16-bit little-endian mono)",
                            param="session.audio.input.format.type")
    return _check_rate(fmt.get("rate", DEFAULT_RATE))


def _beta_rate(fmt: Any) -> int:
    if fmt != "pcm16":
        raise RealtimeError(f"input_audio_format {fmt!r} is not supported; send pcm16 (24 kHz 16-bit mono)",
                            param="session.input_audio_format")
    return DEFAULT_RATE


def _check_rate(rate: Any) -> int:
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
        raise RealtimeError(f"audio rate {rate!r} is not supported; use 24000 (or {MIN_RATE}-{MAX_RATE} Hz)",
                            param="session.audio.input.format.rate")
    return rate


def _turn_detection(td: Any, server_silence_ms: int) -> dict | None:
    if td is None:
        return None
    if not isinstance(td, dict) or td.get("type", "server_vad") not in ("server_vad", "semantic_vad"):
        raise RealtimeError("turn_detection must be null or {\"type\": \"server_vad\", ...}",
                            param="session.turn_detection")
    out = {"type": td.get("type", "server_vad"), "threshold": td.get("threshold", 0.5),
           "prefix_padding_ms": td.get("prefix_padding_ms", 300),
           "silence_duration_ms": td.get("silence_duration_ms", server_silence_ms)}
    silence = out["silence_duration_ms"]
    if not isinstance(silence, int) or isinstance(silence, bool) or not 0 < silence <= 60000:
        raise RealtimeError(f"silence_duration_ms must be a positive integer, not {silence!r}",
                            param="session.turn_detection.silence_duration_ms")
    threshold = out["threshold"]
    if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise RealtimeError(f"threshold must be between 0 and 1, not {threshold!r}",
                            param="session.turn_detection.threshold")
    return out


def turn_endpoint(base: EndpointConfig, td: dict | None) -> EndpointConfig:
    """The endpointer for a turn: server VAD's `silence_duration_ms` is the trailing-blank rule (and the
    Silero rule's silence when the server runs it), `threshold` the Silero threshold. Without turn detection
    the server's endpointer still runs (it shapes nothing the client sees: the commit closes the turn)."""
    if td is None:
        return base
    silence = int(td.get("silence_duration_ms") or base.silence_ms)
    return replace(base, silence_ms=silence, vad_silence_ms=silence or base.vad_silence_ms,
                   vad_threshold=float(td.get("threshold", base.vad_threshold)))


# ------------------------------------------------------------------------------------------ one turn's stream
class _Turn:
    """One recognition stream of a connection: a soxr resampler, its `StreamSession`, the turn mode it was
    started with, and where its audio sits on the connection's timeline."""

    def __init__(self, gen: int, session: StreamSession, rate: int, manual: bool, offset_s: float):
        self.gen = gen
        self.session = session
        self.rate = rate
        self.manual = manual
        self.offset_s = offset_s  # the connection's audio before this stream (seconds)
        self.resampler = self._resampler(rate, session.model.sample_rate)
        self.samples_in = 0  # at the client's rate, since the stream began
        self.samples_out = 0  # at the model's rate
        self.commit_requested = False  # ended by the client's commit (else by a close)

    @staticmethod
    def _resampler(rate: int, model_rate: int):
        return None if rate == model_rate else soxr.ResampleStream(rate, model_rate, 1, dtype="float32",
                                                                   quality="HQ")

    def resample(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self.resampler is None:
            return x
        return self.resampler.resample_chunk(x, last=last)

    def set_rate(self, rate: int) -> np.ndarray:
        """The client changed the format mid-turn: flush the old filter, start one at the new rate."""
        tail = self.resample(np.zeros(0, np.float32), last=True)
        self.rate = rate
        self.resampler = self._resampler(rate, self.session.model.sample_rate)
        return tail


@dataclass
class _Item:
    """The conversation item of the turn being recognised, as far as the client has been told."""

    item_id: str | None = None
    sent: str = ""  # text sent as deltas
    started: bool = False  # speech_started sent
    start_s: float | None = None
    words: list = field(default_factory=list)  # manual turns: the words of the stream's finals so far


# ------------------------------------------------------------------------------------------ the connection
class RealtimeConnection:
    """One WebSocket connection. The receive loop (this task) parses client events and feeds audio; one
    send task is the socket's only writer: it turns the sessions' `partial` / `final` events (from the
    scheduler thread) into OpenAI events, in order of the turns' streams, and sends the receive loop's
    acknowledgements and errors."""

    def __init__(self, server: ServerLike, request: web.Request):
        self.server = server
        self.request = request
        self.model = server.model
        self.id = next(_conn_ids)
        self.session_id = f"sess_streamasr_{self.id}"
        self.beta = "realtime=v1" in request.headers.get("OpenAI-Beta", "")
        cfg = server.config
        self.ws = web.WebSocketResponse(max_msg_size=4 * (cfg.max_frame_bytes * 4 // 3 + 65536))
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sender: asyncio.Task | None = None
        self.latency_ms = self.model.config.encoder.default_latency_ms
        self.endpoint = server.config.endpoint
        self.config = TranscriptionConfig(model=self.model.config.model_id, turn_detection=_turn_detection(
            {"type": "server_vad"}, self.endpoint.silence_ms or 500),  # on by default, echoing the server's rule
            language=reported_language(self.model, self.model.default_language))
        self._events = itertools.count(1)
        self._items = itertools.count(1)
        self._gens = itertools.count(1)
        self.turn: _Turn | None = None  # the stream taking audio now
        self.live: dict[int, _Turn] = {}  # every stream not yet done (the current one and committed ones)
        self._held: dict[int, deque] = defaultdict(deque)  # events of later streams, waiting for earlier ones
        self._dropped: set[int] = set()
        self._out_gen = 1  # the stream whose events go out now
        self._last_gen = 0
        self._item = _Item()
        self._previous_item: str | None = None
        self._boundary_s = 0.0  # where the last completed turn ended (usage)
        self.audio_s = 0.0  # the connection's audio so far at the model's rate (seconds)
        self.closing: tuple[int, str] | None = None
        self.close_code = CLOSE_NORMAL  # for Server._on_shutdown's handle (see close_with)
        self.loop = asyncio.get_running_loop()

    # ---------------------------------------------------------------- the server's open-stream handle
    @property
    def session(self) -> StreamSession | None:
        return self.turn.session if self.turn is not None else None

    def close_with(self, code: int, message: str) -> None:
        """Server shutdown (`Server._on_shutdown`): complete the turn in progress, then close with `code`."""
        if self.closing is None:
            self.closing = (code, message)
        self._end_turn(commit=False)
        self.queue.put_nowait((0, {"type": "_check_close"}))

    # ---------------------------------------------------------------- life cycle
    async def run(self) -> web.StreamResponse:
        """Admit (or refuse with a 503 before the upgrade), then serve the session until it closes."""
        server = self.server
        refusal = server._refusal()
        if refusal is not None:
            server.metrics.stream_rejected(PROTOCOL)
            return refusal.response(type="server_error", code="server_at_capacity")
        server.active += 1  # the slot is taken before the upgrade awaits, so concurrent handshakes cannot overfill
        try:
            return await self._serve()
        finally:
            server.active -= 1

    async def _serve(self) -> web.WebSocketResponse:
        server, ws = self.server, self.ws
        await ws.prepare(self.request)
        query = self.request.query
        try:
            intent = query.get("intent", "transcription")
            if intent != "transcription":
                raise StreamASRError(f"intent={intent!r} is not supported: streamasr serves transcription "
                                     "sessions only (?intent=transcription)")
            if "latency" in query:
                try:
                    self.latency_ms = int(query["latency"])
                except ValueError:
                    raise StreamASRError(f"latency must be an integer, not {query['latency']!r}") from None
                self.model.config.encoder.mode(self.latency_ms)  # ModelError naming the supported modes
            self.endpoint = server.stream_endpoint(query)
        except StreamASRError as exc:
            server.metrics.stream_rejected(PROTOCOL)
            await self._refuse(str(exc), CLOSE_POLICY, "invalid_request_error", "invalid_query")
            return ws
        server.metrics.stream_opened(PROTOCOL)
        key = f"realtime-{self.id}"
        server._open[key] = self
        self.sender = asyncio.create_task(self._send_loop())
        self._direct({"type": "transcription_session.created" if self.beta else "session.created",
                      "session": self._session_object(self.beta)})
        try:
            await self._receive_loop()
        finally:
            server._open.pop(key, None)
            for turn in list(self.live.values()):
                server.scheduler.remove(turn.session)
            if not self.sender.done():
                self.sender.cancel()
        return ws

    async def _refuse(self, message: str, code: int, kind: str, err_code: str) -> None:
        try:
            await self.ws.send_json(self._error_event(message, err_code, None, kind, None))
            await self.ws.close(code=code, message=message.encode()[:123].decode("utf-8", "ignore").encode())
        except (ConnectionError, RuntimeError):
            pass

    # ---------------------------------------------------------------- receiving
    async def _receive_loop(self) -> None:
        cfg = self.server.config
        max_backlog = int(cfg.max_backlog_s * self.model.sample_rate)
        while True:
            # flow control, as on /v1/stream: a client too far ahead of recognition is not read
            while any(t.session.unprocessed_samples() > max_backlog for t in self.live.values()) \
                    and not self.sender.done():
                await asyncio.sleep(0.01)
            receive = asyncio.ensure_future(self.ws.receive())
            done, _ = await asyncio.wait({receive, self.sender}, timeout=cfg.idle_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if self.sender in done:
                receive.cancel()
                return
            if not done:
                receive.cancel()
                self.server.metrics.count("client_errors")
                await self._finish_and_close(CLOSE_POLICY, f"no data for {cfg.idle_timeout_s:g} s; closing the "
                                             "session")
                return
            msg = receive.result()
            if msg.type == WSMsgType.TEXT:
                self._on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self._error("binary frames are not part of the Realtime API; send audio as "
                            "input_audio_buffer.append events (base64 PCM16)", "invalid_value", None, None)
            elif msg.type == WSMsgType.ERROR:
                self.server.metrics.count("client_errors")
                await self._finish_and_close(CLOSE_BAD_DATA, f"bad WebSocket frame: {self.ws.exception() or msg.data}")
                return
            else:  # the client went away: its streams are dropped (finally in run)
                return

    def _on_text(self, data: str) -> None:
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.server.metrics.count("client_errors")
            self._error("expected a JSON object with a string 'type'", "invalid_json", None, None)
            return
        kind, event_id = event["type"], event.get("event_id")
        handler = {
            "session.update": self._on_session_update,
            "transcription_session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
        }.get(kind)
        try:
            if handler is None:
                raise RealtimeError(f"Invalid value: {kind[:100]!r}. This transcription session accepts "
                                    "session.update, transcription_session.update, input_audio_buffer.append, "
                                    "input_audio_buffer.commit and input_audio_buffer.clear", param="type")
            handler(event)
        except RealtimeError as exc:
            self.server.metrics.count("client_errors")
            self._error(str(exc), exc.code, exc.param, event_id, exc.kind)

    def _on_session_update(self, event: dict) -> None:
        new = apply_update(self.config, event.get("session", {}), self.endpoint.silence_ms or 500, self.model)
        if self.turn is not None and new.rate != self.turn.rate:
            self._feed(self.turn, self.turn.set_rate(new.rate))
        # the turn mode and endpointing apply from the next turn's stream (a stream's endpointer is fixed)
        self.config = new
        beta = event["type"] == "transcription_session.update" or (self.beta and "audio" not in event.get("session", {}))
        self._direct({"type": "transcription_session.updated" if beta else "session.updated",
                      "session": self._session_object(beta)})

    def _on_append(self, event: dict) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise RealtimeError("input_audio_buffer.append needs 'audio': base64 PCM16", param="audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("audio is not valid base64", param="audio") from None
        if len(raw) > self.server.config.max_frame_bytes:
            raise RealtimeError(f"an append of {len(raw)} bytes is over the limit of "
                                f"{self.server.config.max_frame_bytes}; send smaller appends", param="audio")
        if len(raw) % 2:
            raise RealtimeError(f"{len(raw)} bytes is not a whole number of 16-bit samples", param="audio")
        if not raw or self.closing is not None:
            return
        turn = self._current_turn()
        x = pcm_to_float(raw, "s16le")
        turn.samples_in += x.size
        self._feed(turn, turn.resample(x))

    def _on_commit(self, event: dict) -> None:
        turn = self.turn
        have = turn.samples_in / turn.rate if turn is not None else 0.0
        if have < MIN_COMMIT_S:
            raise RealtimeError("Error committing input audio buffer: buffer too small. Expected at least 100ms "
                                f"of audio, but buffer only has {1000 * have:.2f}ms of audio.",
                                code="input_audio_buffer_commit_empty")
        self._end_turn(commit=True)

    def _on_clear(self, event: dict) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            self.live.pop(turn.gen, None)
            self._dropped.add(turn.gen)
            self.server.scheduler.remove(turn.session)
            self.audio_s = turn.offset_s + turn.samples_out / self.model.sample_rate
            self.queue.put_nowait((0, {"type": "_pump"}))  # output may wait on the dropped stream
        self._direct({"type": "input_audio_buffer.cleared"})

    # ---------------------------------------------------------------- the streams
    def _current_turn(self) -> _Turn:
        if self.turn is None:
            gen = next(self._gens)
            self._last_gen = gen
            manual = self.config.turn_detection is None
            holder: list[_Turn] = []
            session = StreamSession(self.model, self.latency_ms,
                                    turn_endpoint(self.endpoint, self.config.turn_detection),
                                    emit=lambda ev: self._from_scheduler(holder[0], ev),
                                    on_latency=self.server.metrics.observe_latency,
                                    on_done=lambda: self.loop.call_soon_threadsafe(self.queue.put_nowait,
                                                                                   (gen, _DONE)),
                                    language=self.config.language if self.model.languages else None)
            turn = _Turn(gen, session, self.config.rate, manual, self.audio_s)
            holder.append(turn)
            self.turn = self.live[gen] = turn
            self.server.scheduler.add(session)
        return self.turn

    def _feed(self, turn: _Turn, y: np.ndarray) -> None:
        if y.size:
            turn.samples_out += y.size
            self.audio_s = turn.offset_s + turn.samples_out / self.model.sample_rate
            turn.session.feed(y, time.perf_counter())
            self.server.scheduler.wake()

    def _end_turn(self, commit: bool) -> None:
        """Finish the current stream (the client's commit, or a close): its tail is decoded and its last
        final closes the turn; later audio starts a new stream."""
        turn, self.turn = self.turn, None
        if turn is None:
            return
        turn.commit_requested = commit
        self._feed(turn, turn.resample(np.zeros(0, np.float32), last=True))
        turn.session.request_end()
        self.server.scheduler.wake()

    def _from_scheduler(self, turn: _Turn, event: dict) -> None:
        """The session's emit, on the scheduler thread (which alone touches the stream): add what the turn
        logic needs from the stream, then hand the event to the event loop."""
        if event["type"] in ("partial", "final"):
            frame_s = self.model.config.frame_seconds
            if turn.manual:  # one stream is one turn: its whole text
                event["_text"] = turn.session.stream.text.strip()
                tokens = turn.session.stream.tokens
            else:  # one utterance of the endpointer is one turn
                event["_text"] = event["text"]
                tokens = turn.session.endpointer.segment_tokens if event["type"] == "partial" else []
            event["_start_s"] = tokens[0].frame * frame_s if tokens else event.get("start_s")
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (turn.gen, event))

    async def _finish_and_close(self, code: int, message: str) -> None:
        """Complete the turn in progress, then close with `code` (idle timeout, a bad frame)."""
        self.close_with(code, message)
        try:
            await asyncio.wait_for(asyncio.shield(self.sender), timeout=max(self.server.config.idle_timeout_s, 30.0))
        except asyncio.TimeoutError:
            await self._refuse("timed out finishing the session", CLOSE_INTERNAL, "server_error", "timeout")

    # ---------------------------------------------------------------- sending
    def _direct(self, event: dict) -> None:
        self.queue.put_nowait((0, event))

    def _error(self, message: str, code: str, param: str | None, event_id: Any,
               kind: str = "invalid_request_error") -> None:
        self._direct(self._error_event(message, code, param, kind, event_id))

    @staticmethod
    def _error_event(message: str, code: str, param: str | None, kind: str, event_id: Any) -> dict:
        return {"type": "error", "error": {"type": kind, "code": code, "message": message, "param": param,
                                           "event_id": event_id}}

    async def _send(self, event: dict) -> None:
        event = {"type": event["type"], "event_id": f"event_{self.id}_{next(self._events)}",
                 **{k: v for k, v in event.items() if k != "type"}}
        await self.ws.send_json(event)

    async def _send_loop(self) -> None:
        try:
            while True:
                gen, event = await self.queue.get()
                if gen == 0:
                    if not event["type"].startswith("_"):
                        await self._send(event)
                else:
                    self._held[gen].append(event)
                if await self._pump():
                    return
                if self.closing is not None and not self.live:
                    code, message = self.closing
                    if message:
                        await self._send(self._error_event(message, "session_closed", None, "server_error", None))
                    await self.ws.close(code=code, message=message.encode()[:123].decode("utf-8", "ignore").encode())
                    return
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            return

    async def _pump(self) -> bool:
        """Send the held events of the streams in order; True when the connection must close now."""
        while self._out_gen <= self._last_gen:
            gen = self._out_gen
            if gen in self._dropped:
                self._held.pop(gen, None)
                self._out_gen += 1
                self._item = _Item()
                continue
            queue = self._held[gen]
            if not queue:
                return False
            event = queue.popleft()
            if event is _DONE:
                self._held.pop(gen, None)
                self.live.pop(gen, None)
                self._out_gen += 1
                self._item = _Item()  # an item its stream never completed (a close) is abandoned
                continue
            if await self._on_session_event(self.live.get(gen), event):
                return True
        return False

    async def _on_session_event(self, turn: _Turn | None, event: dict) -> bool:
        if turn is None:
            return False
        kind = event["type"]
        if kind == "error":  # the scheduler failed this stream
            await self._send(self._error_event(event.get("message", "internal error"), "internal_error", None,
                                               "server_error", None))
            await self.ws.close(code=CLOSE_INTERNAL, message=b"internal error")
            return True
        if kind == "partial":
            await self._grow(turn, event["_text"], event["_start_s"])
        elif kind == "final":
            words = [{"word": w["word"], "start": round(turn.offset_s + w["start_s"], 3),
                      "end": round(turn.offset_s + w["end_s"], 3), "confidence": w["confidence"]}
                     for w in event["words"]]
            if turn.manual:
                self._item.words.extend(words)
                if event["reason"] != "end":
                    await self._grow(turn, event["_text"], event["_start_s"])
                    return False
            else:
                self._item.words = words
            end_s = turn.offset_s + event["end_s"]
            if event["reason"] == "end" and not event["_text"] and not turn.commit_requested:
                return False  # a close with nothing said: no item
            reason = event["reason"] if event["reason"] != "end" else "commit" if turn.commit_requested else "end"
            await self._complete(turn, event["_text"], event["_start_s"], end_s, reason)
        return False

    async def _grow(self, turn: _Turn, text: str, start_s: float | None) -> None:
        """A turn's text grew: open its item (speech_started with server turn detection), send the new text."""
        if not text:
            return
        item = self._item
        if item.item_id is None:
            item.item_id = f"item_{self.id}_{next(self._items)}"
            item.start_s = turn.offset_s + (start_s or 0.0)
            if not turn.manual:
                item.started = True
                await self._send({"type": "input_audio_buffer.speech_started",
                                  "audio_start_ms": round(1000 * item.start_s), "item_id": item.item_id})
        if text.startswith(item.sent) and len(text) > len(item.sent):
            await self._send({"type": "conversation.item.input_audio_transcription.delta",
                              "item_id": item.item_id, "content_index": 0, "delta": text[len(item.sent):]})
            item.sent = text
        # (text that is not an extension of what was sent can only come from a tokenizer merge; the
        # completed event carries the authoritative transcript)

    async def _complete(self, turn: _Turn, text: str, start_s: float | None, end_s: float, reason: str) -> None:
        """Close the turn: the rest of its text, speech_stopped (server turn detection), committed, the item,
        and the completed transcript with its words."""
        await self._grow(turn, text, start_s)
        item = self._item
        if item.item_id is None:
            item.item_id = f"item_{self.id}_{next(self._items)}"
        if item.started:
            await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": round(1000 * end_s),
                              "item_id": item.item_id})
        await self._send({"type": "input_audio_buffer.committed", "previous_item_id": self._previous_item,
                          "item_id": item.item_id})
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        await self._send({"type": added, "previous_item_id": self._previous_item,
                          "item": {"id": item.item_id, "object": "realtime.item", "type": "message",
                                   "status": "completed", "role": "user",
                                   "content": [{"type": "input_audio", "transcript": None}]}})
        await self._send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item.item_id,
                          "content_index": 0, "transcript": text,
                          "usage": {"type": "duration", "seconds": round(max(0.0, end_s - self._boundary_s), 3)},
                          "words": item.words, "reason": reason})
        self._previous_item = item.item_id
        self._boundary_s = end_s
        self._item = _Item()

    def _session_object(self, beta: bool) -> dict:
        return self.config.beta(self.session_id) if beta else self.config.ga(self.session_id)
