"""OpenAI-compatible HTTP routes: `POST /v1/audio/transcriptions`, `GET /v1/models`, `GET /v1/models/{id}`.

Clients written for OpenAI's audio API (the `openai` SDK, dictation apps, agent frameworks) work unchanged with
`base_url="http://HOST:PORT/v1"` and any api key. Shapes follow OpenAI's (see docs/protocols.md):

- the request is multipart: `file` (anything `streamasr transcribe` reads), `model` (any id; this server has one
  model and serves every request with it, so clients with a hard-coded `whisper-1` work), `language` (English models:
  `en` or absent; a multilingual model: a key of its prompt dictionary or an ISO code, `auto`, absent: its default), `prompt` and `temperature` (ignored), `response_format` (json | text | srt | vtt | verbose_json),
  `timestamp_granularities[]` (word, segment), `include[]` (logprobs), `stream` (true: server-sent events), and
  our `latency` (a latency mode in ms; also accepted as a query parameter; default: the model's);
- `stream=true` answers `data: {"type": "transcript.text.delta", "delta": ...}` events carrying only new text,
  then `transcript.text.done` with the whole text, then `data: [DONE]`;
- errors are `{"error": {"message", "type", "param", "code"}}`; a busy server (at `--max-streams` or
  `--max-load`, or shutting down) answers 503 with `Retry-After` and `x-should-retry: false`, so the SDK does
  not hammer a full server with its automatic retries.

Why the upload goes through a `StreamSession` on the server's batching scheduler rather than a private
`model.transcribe`: uploads then share the CPU with the live streams by the same rules (one chunk per stream
per round), count as open streams for admission, and give exactly the streaming transcript (the same tokens as
`streamasr transcribe` at the same latency). The upload is saved to a temporary file and read in blocks, fed
under the same flow control as a WebSocket client (at most `max_backlog_s` ahead of recognition), so an hour of
audio never sits in memory and does not starve the live streams.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import BodyPartReader, web

from streamasr.audio import iter_audio, open_audio_file
from streamasr.errors import AudioError, StreamASRError
from streamasr.formats import (
    EXTENSIONS,
    Segment,
    SegmentCollector,
    render,
    verbose_json,
)
from streamasr.runtime.stream import Model
from streamasr.serve.hotwords import hotwords_from_fields
from streamasr.serve.languages import client_language, reported_language
from streamasr.serve.scheduler import Scheduler
from streamasr.serve.session import StreamSession

#: the languages an English model transcribes (a multilingual model lists its own)
LANGUAGES = ("en",)
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
INCLUDES = ("logprobs",)
#: the largest upload taken (a temporary file, read in blocks: about 19 hours of 16 kHz s16 WAV)
MAX_UPLOAD_BYTES = 2 << 30
#: a form field other than the file is a short string; anything longer is a malformed request
MAX_FIELD_BYTES = 64 << 10
#: seconds of audio read from the upload per piece fed to the stream
FEED_BLOCK_S = 0.5
_CONTENT_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}
_DONE = object()
#: the `protocol` label of this route's streams in /metrics
PROTOCOL = "openai_http"


class _Server(Protocol):
    """What these routes use of `serve.server.Server` (typed here: importing it would be a cycle)."""

    model: Model
    config: Any  # ServerConfig: max_backlog_s, endpoint
    scheduler: Scheduler
    metrics: Any  # Metrics: stream_opened / stream_rejected
    active: int

    def _admission(self) -> str | None: ...

    def _refusal(self) -> Any: ...  # Refusal | None: reason, message, retry_after_s


class APIError(Exception):
    """A request answered with OpenAI's error envelope; the SDK raises its own exception type per status
    (400 BadRequestError, 404 NotFoundError, 413 APIStatusError, 503 InternalServerError)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


@dataclass
class TranscriptionRequest:
    """A validated transcription request."""

    path: Path
    filename: str
    response_format: str
    language: str | None  # the model's language key (None: an English model)
    latency_ms: int
    words: bool
    segments: bool
    logprobs: bool
    stream: bool
    hotwords: Any = None  # our `hotwords` form fields, compiled (serve/hotwords.py)


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    duration: float
    tokens: list[Any]  # the stream's tokens (.id, .frame, .logprob), for include[]=logprobs


def add_routes(app: web.Application, server: _Server) -> None:
    """Register the OpenAI-compatible routes on the server's application."""
    api = OpenAIRoutes(server)
    app.router.add_post("/v1/audio/transcriptions", api.transcriptions)
    app.router.add_get("/v1/models", api.models)
    app.router.add_get("/v1/models/{model_id:.+}", api.model_card)


class OpenAIRoutes:
    def __init__(self, server: _Server):
        self.server = server
        self.created = int(time.time())

    # ---------------------------------------------------------------- models
    def _card(self) -> dict:
        """OpenAI's `Model` object, plus what a client needs to pick a mode: the latency modes, the default
        one, the languages and the sample rate the model runs at."""
        model = self.server.model
        return {"id": model.config.model_id, "object": "model", "created": self.created, "owned_by": "streamasr",
                "latency_modes_ms": model.latency_modes,
                "default_latency_ms": model.config.encoder.default_latency_ms,
                "languages": list(model.languages) or list(LANGUAGES), "sample_rate": model.sample_rate}

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._card()]})

    async def model_card(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        if model_id != self.server.model.config.model_id:
            return APIError(404, f"The model '{model_id}' does not exist; this server has "
                                 f"'{self.server.model.config.model_id}'", param="model",
                            code="model_not_found").response()
        return web.json_response(self._card())

    # ---------------------------------------------------------------- transcriptions
    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        with tempfile.TemporaryDirectory(prefix="streamasr-upload-") as tmp:
            try:
                fields, path, filename = await self._read_form(request, Path(tmp))
                req = self._validate(request, fields, path, filename)
                refusal = self.server._refusal()
                if refusal is not None:
                    raise APIError(503, refusal.message, code="server_overloaded", kind="server_error",
                                   headers={"Retry-After": str(refusal.retry_after_s), "x-should-retry": "false"})
            except APIError as exc:
                # a bad request or a refusal: no stream was opened (a load balancer counts both per protocol)
                self.server.metrics.stream_rejected(PROTOCOL)
                return exc.response()
            self.server.active += 1  # an upload is an open stream: admission, /health and /metrics count it
            self.server.metrics.stream_opened(PROTOCOL)
            try:
                if req.stream:
                    return await self._respond_stream(request, req)
                try:
                    transcript = await self._run(request, req, None)
                except APIError as exc:
                    return exc.response()
                except ConnectionError:  # the client went away: its stream is freed, nobody reads an answer
                    return web.Response(status=499, reason="Client Closed Request")
                return self._respond(req, transcript)
            finally:
                self.server.active -= 1

    async def _read_form(self, request: web.Request, tmp: Path) -> tuple[dict[str, list[str]], Path, str]:
        """The multipart form: text fields (repeated ones, such as `timestamp_granularities[]`, keep every
        value) and the `file` part streamed to a temporary file, never held in memory."""
        if request.content_type != "multipart/form-data":
            raise APIError(400, f"expected a multipart/form-data body with a 'file' part, got "
                                f"{request.content_type or 'no content type'}", code="invalid_request")
        fields: dict[str, list[str]] = {}
        path: Path | None = None
        filename = ""
        try:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    raise APIError(400, "nested multipart bodies are not supported", code="invalid_request")
                name = part.name or ""
                if name == "file":
                    if path is not None:
                        raise APIError(400, "more than one 'file' part; send one audio file per request",
                                       param="file", code="invalid_request")
                    filename = part.filename or "upload"
                    suffix = re.sub(r"[^A-Za-z0-9]", "", Path(filename).suffix)[:8]
                    path = tmp / ("upload." + suffix if suffix else "upload")
                    await _save_part(part, path)
                else:
                    data = await _read_field(part, name)
                    fields.setdefault(name, []).append(data)
        except APIError:
            raise
        except (ValueError, AssertionError, RuntimeError) as exc:  # aiohttp's parse errors
            raise APIError(400, f"malformed multipart body: {exc}", code="invalid_request") from None
        if path is None:
            raise APIError(400, "missing the 'file' part: the audio to transcribe", param="file",
                           code="missing_required_parameter")
        return fields, path, filename

    def _validate(self, request: web.Request, fields: dict[str, list[str]], path: Path,
                  filename: str) -> TranscriptionRequest:
        """Every parameter checked, each bad one its own 400 naming it, before any recognition."""
        def one(name: str) -> str | None:
            values = fields.get(name)
            return values[-1].strip() if values else None

        fmt = (one("response_format") or "json").lower()
        if fmt not in RESPONSE_FORMATS:
            raise APIError(400, f"response_format {fmt!r} is not supported; use one of "
                                f"{', '.join(RESPONSE_FORMATS)}", param="response_format", code="invalid_value")
        try:
            language = client_language(self.server.model, one("language"))
        except StreamASRError as exc:
            raise APIError(400, str(exc), param="language", code="unsupported_language") from None
        granularities = [g.strip().lower() for g in fields.get("timestamp_granularities[]", [])
                         + fields.get("timestamp_granularities", [])]
        bad = [g for g in granularities if g not in GRANULARITIES]
        if bad:
            raise APIError(400, f"timestamp_granularities {bad[0]!r} is not supported; use word and/or segment",
                           param="timestamp_granularities", code="invalid_value")
        include = [i.strip() for i in fields.get("include[]", []) + fields.get("include", [])]
        bad = [i for i in include if i not in INCLUDES]
        if bad:
            raise APIError(400, f"include {bad[0]!r} is not supported; the one supported value is logprobs",
                           param="include", code="invalid_value")
        stream_value = (one("stream") or "false").lower()
        if stream_value not in ("true", "false", "1", "0"):
            raise APIError(400, f"stream must be true or false, got {one('stream')!r}", param="stream",
                           code="invalid_value")
        latency_value = one("latency") or request.query.get("latency")
        try:
            latency = self.server.model.latency(latency_value or None)
        except StreamASRError as exc:
            raise APIError(400, str(exc), param="latency", code="invalid_value") from None
        try:
            hotwords = hotwords_from_fields(self.server.model, fields)
        except StreamASRError as exc:
            raise APIError(400, str(exc), param="hotwords", code="invalid_value") from None
        try:
            open_audio_file(path).close()
        except AudioError as exc:
            message = str(exc).replace(str(path), filename)
            raise APIError(400, f"{message}; send audio in a format libsndfile reads (WAV, FLAC, OGG, MP3)",
                           param="file", code="invalid_file_format") from None
        return TranscriptionRequest(path=path, filename=filename, response_format=fmt, language=language,
                                    latency_ms=latency, words=not granularities or "word" in granularities,
                                    segments=not granularities or "segment" in granularities,
                                    logprobs="logprobs" in include, stream=stream_value in ("true", "1"),
                                    hotwords=hotwords)

    # ---------------------------------------------------------------- recognition
    async def _run(self, request: web.Request, req: TranscriptionRequest,
                   on_delta: Callable[[str], Awaitable[None]] | None) -> Transcript:
        """The upload through a StreamSession on the shared scheduler. Deltas come from the session's
        partials and finals; with each event the emit hook (on the scheduler thread, the only one that
        touches the stream) snapshots the stream's whole text, so the deltas are exact suffixes of the
        final text, even where an endpoint falls inside a word."""
        server, model = self.server, self.server.model
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        session: StreamSession

        def emit(event: dict) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (event, session.stream.text))

        session = StreamSession(model, req.latency_ms, server.config.endpoint, emit=emit,
                                on_done=lambda: loop.call_soon_threadsafe(queue.put_nowait, _DONE),
                                language=req.language)
        if req.hotwords is not None:
            session.stream.set_hotwords(req.hotwords)
        # flow control must let at least one whole encoder step in (the first is the widest), or a small
        # --max-backlog would leave the stream waiting for audio that is never fed
        fe = model.config.frontend
        min_backlog = (session.stream.next_width + 2) * fe.hop_length + fe.n_fft
        server.scheduler.add(session)
        feeder = asyncio.create_task(self._feed(request, session, req.path, queue, min_backlog))
        finals: list[dict] = []
        sent = ""
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                event, text = item
                kind = event.get("type")
                if kind == "_feed_error":
                    raise event["error"]
                if kind == "error":
                    raise APIError(500, event.get("message", "internal error"), code="internal_error",
                                   kind="server_error")
                if kind == "final":
                    finals.append(event)
                text = text.strip()
                if len(text) > len(sent) and text.startswith(sent):
                    delta, sent = text[len(sent) :], text
                    if on_delta is not None:
                        await on_delta(delta)
        finally:
            feeder.cancel()
            server.scheduler.remove(session)
        # the session has finished: the scheduler no longer touches its stream
        collector = SegmentCollector(model.config.frame_seconds)
        for final in finals:
            collector.add(final, session.stream.tokens)
        return Transcript(session.stream.text.strip(), collector.segments,
                          session.stream.samples_seen / model.sample_rate, list(session.stream.tokens))

    async def _feed(self, request: web.Request, session: StreamSession, path: Path, queue: asyncio.Queue,
                    min_backlog: int) -> None:
        """Read the file in blocks (off the event loop) and feed them, never more than `max_backlog_s` ahead
        of recognition (the WebSocket route's flow control); then end the stream. A read error, or the client
        going away, ends the request through the event queue."""
        server, loop = self.server, asyncio.get_running_loop()
        max_backlog = max(min_backlog, int(server.config.max_backlog_s * server.model.sample_rate))

        def client_gone() -> bool:
            return request.transport is None or request.transport.is_closing()

        try:
            blocks = iter_audio(path, server.model.sample_rate, block_s=FEED_BLOCK_S)
            while True:
                while session.unprocessed_samples() > max_backlog and not (session.failed or session.closed):
                    if client_gone():
                        raise ConnectionResetError("the client went away")
                    await asyncio.sleep(0.01)
                if client_gone():
                    raise ConnectionResetError("the client went away")
                block = await loop.run_in_executor(None, next, blocks, None)
                if block is None:
                    break
                session.feed(block)
                server.scheduler.wake()
            session.request_end()
            server.scheduler.wake()
        except asyncio.CancelledError:
            raise
        except AudioError as exc:
            error = APIError(400, str(exc).replace(str(path), "the uploaded file"), param="file",
                             code="invalid_file_format")
            queue.put_nowait(({"type": "_feed_error", "error": error}, ""))
        except Exception as exc:  # the client gone, or a bug: the request ends with it, the server carries on
            queue.put_nowait(({"type": "_feed_error", "error": exc}, ""))

    # ---------------------------------------------------------------- responses
    def _respond(self, req: TranscriptionRequest, transcript: Transcript) -> web.Response:
        fmt = req.response_format
        if fmt == "json":
            body: dict[str, Any] = {"text": transcript.text,
                                    "usage": {"type": "duration", "seconds": round(transcript.duration, 3)}}
            if req.logprobs:
                body["logprobs"] = self._logprobs(transcript.tokens)
            return web.json_response(body)
        if fmt == "verbose_json":
            return web.json_response(verbose_json(transcript.text, transcript.segments, transcript.duration,
                                                  reported_language(self.server.model, req.language),
                                                  words=req.words, with_segments=req.segments))
        assert fmt in EXTENSIONS
        return web.Response(text=render(fmt, transcript.text, transcript.segments, transcript.duration),
                            content_type=_CONTENT_TYPES[fmt], charset="utf-8")

    def _logprobs(self, tokens: list[Any]) -> list[dict]:
        """OpenAI's `logprobs` entries, one per token: its text (a SentencePiece word start as a space), the
        decoder's log-probability and the text's UTF-8 bytes."""
        text = self.server.model.text
        out = []
        for tok in tokens:
            piece = text.piece(tok.id).replace("\u2581", " ")
            out.append({"token": piece, "logprob": round(float(tok.logprob), 6), "bytes": list(piece.encode())})
        return out

    async def _respond_stream(self, request: web.Request, req: TranscriptionRequest) -> web.StreamResponse:
        """Server-sent events: a delta per change of the text, the done event, `[DONE]`. An error after the
        stream started goes out as a `data: {"error": ...}` event, which the SDK raises as APIError."""
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                       "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(data: dict | str) -> None:
            payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
            await resp.write(f"data: {payload}\n\n".encode())

        try:
            try:
                transcript = await self._run(request, req,
                                             lambda delta: send({"type": "transcript.text.delta", "delta": delta}))
            except APIError as exc:
                await send(exc.body())
            else:
                await send({"type": "transcript.text.done", "text": transcript.text,
                            "usage": {"type": "duration", "seconds": round(transcript.duration, 3)}})
                await send("[DONE]")
            await resp.write_eof()
        except ConnectionError:  # the client went away mid-stream: its stream is freed, nothing more to send
            pass
        return resp


async def _save_part(part: BodyPartReader, path: Path) -> None:
    size = 0
    with open(path, "wb") as f:
        while True:
            chunk = await part.read_chunk(1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise APIError(413, f"the file is over the upload limit of {MAX_UPLOAD_BYTES >> 20} MiB",
                               param="file", code="file_too_large")
            f.write(chunk)


async def _read_field(part: BodyPartReader, name: str) -> str:
    data = bytearray()
    while True:
        chunk = await part.read_chunk(8192)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise APIError(400, f"form field {name!r} is over {MAX_FIELD_BYTES >> 10} KiB", param=name,
                           code="invalid_value")
    return data.decode("utf-8", "replace")
