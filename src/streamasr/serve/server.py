"""The WebSocket server (aiohttp): `/v1/stream`, `/health`, `/metrics` and the browser page at `/`.

Protocol (see README): the client opens `/v1/stream?latency=160&sample_rate=16000&encoding=pcm_s16le`
(optionally `&vad=silero` or `&vad=off` to override the server's VAD endpointing for this stream, and for a
multilingual model `&language=de-DE` or `auto`; finals then carry each utterance's `language`),
sends binary frames of little-endian PCM (any number of whole samples per frame) and receives JSON text
messages: `partial`, `final` (at each endpoint and once at the end) and `error`. It ends with the text
message `{"type": "end"}`; the server answers with the last final and closes with code 1000.

Close codes: 1000 normal end; 1001 the server is shutting down; 1007 a malformed audio frame; 1008 bad query
parameters or idle timeout; 1009 a frame over the size limit; 1011 internal error. Every close the server initiates once audio has arrived (idle timeout, shutdown, an over-size
frame) first flushes the stream: its last final is sent before the close.

Admission happens before the WebSocket upgrade: a server that is full (`--max-streams`), at capacity
(`--max-load`) or shutting down answers the handshake with a plain HTTP 503, a `Retry-After` header and a JSON
body `{"error": {"reason", "message"}}`, so a load balancer (or the client) can retry another replica; nothing
is upgraded to be closed at once. `GET /ready` answers the same question before connecting (200 or 503).

Flow control: a client may run at most `max_backlog_s` of audio ahead of recognition; beyond that the
server stops reading its socket until recognition catches up, so TCP paces a client that sends faster than
real time (a file sent with `client --fast`) instead of the stream being refused.

The network side runs on an asyncio loop; all recognition runs on the scheduler thread (serve/scheduler.py),
which batches the encoder steps of every stream. One task per connection sends its events, so a slow
reader only delays itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace

from aiohttp import WSMsgType, web

from streamasr.audio import pcm_to_float
from streamasr.errors import AudioError, StreamASRError
from streamasr.runtime.batch import warm_up
from streamasr.runtime.endpoint import EndpointConfig
from streamasr.runtime.stream import Model
from streamasr.runtime.vad import silero_session
from streamasr.serve import openai_http, openai_realtime
from streamasr.serve.hotwords import hotwords_from_config, hotwords_from_query
from streamasr.serve.metrics import CONTENT_TYPE, Metrics, Snapshot
from streamasr.serve.page import page_html
from streamasr.serve.scheduler import LOAD_WINDOW_S, Scheduler
from streamasr.serve.session import StreamSession
from streamasr.serve.wyoming import WyomingServer

log = logging.getLogger("streamasr.serve")

ENCODINGS = {"pcm_s16le": "s16le", "s16le": "s16le", "pcm_f32le": "f32le", "f32le": "f32le"}
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_BAD_DATA, CLOSE_POLICY = 1000, 1001, 1007, 1008
CLOSE_TOO_BIG, CLOSE_INTERNAL = 1009, 1011
#: Retry-After of a full server (--max-streams): a slot frees as soon as any stream ends
RETRY_FULL_S = 1
#: aiohttp drops a frame this many times over --max-frame-bytes itself, unread and without a flush (memory bound)
HARD_FRAME_FACTOR = 4
_DONE = {"type": "_done"}


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_streams: int = 32
    max_load: float = 0.8  # refuse a new stream that would make the scheduler busier than this (1: off)
    idle_timeout_s: float = 30.0  # a stream that sends nothing this long is closed
    max_frame_bytes: int = 1 << 20  # one binary frame at most (1 MiB = 32 s of s16le)
    max_backlog_s: float = 10.0  # audio a client may run ahead of recognition before its socket is not read
    shutdown_timeout_s: float = 5.0  # on shutdown, how long open streams get to flush their last final
    max_batch: int = 32
    batch_wait: float = 0.25  # fraction of a chunk a batch may wait for more streams (serve/scheduler.py)
    busy_batch_wait: float = 0.25  # the same near capacity: the window grows with load up to it
    #: batch sizes warmed up at start-up (runtime.batch.warm_up); None: every size the scheduler can form
    warmup_batches: int | None = None
    warmup_latency_ms: tuple[int, ...] = ()  # latency modes warmed up; empty: the model's default mode
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    wyoming: str | None = None  # tcp://HOST:PORT: also serve Wyoming there (serve/wyoming.py)


@dataclass(frozen=True)
class Refusal:
    """Why the server takes no new stream now: `reason` is a stable code (`shutting_down`, `full`,
    `at_capacity`, and for `/ready` only `starting`), `message` says it to a person, `retry_after_s` is the
    `Retry-After` to send (whole seconds, at least 1)."""

    reason: str
    message: str
    retry_after_s: int

    def response(self, **error_fields: str) -> web.Response:
        """The plain HTTP 503 a refused stream gets before any upgrade: `Retry-After` and a JSON body
        `{"error": {"reason", "message", **error_fields}}` (a protocol adds its own error fields)."""
        return web.json_response({"error": {"reason": self.reason, "message": self.message, **error_fields}},
                                 status=503, headers={"Retry-After": str(self.retry_after_s)})


class Server:
    def __init__(self, model: Model, config: ServerConfig | None = None):
        self.model = model
        self.config = config or ServerConfig()
        if self.config.endpoint.vad is not None:
            silero_session()  # a missing silero-vad package fails here, once, not on every stream
        self.metrics = Metrics(self._snapshot)
        self.scheduler = Scheduler(model, self.config.max_batch, on_step=self.metrics.observe_step,
                                   batch_wait=self.config.batch_wait, busy_batch_wait=self.config.busy_batch_wait)
        self.active = 0
        self.accepting = True
        self.ready = False  # set once the app has started (scheduler running); /ready says so
        self._open: dict[int, _OpenStream] = {}
        self.wyoming: WyomingServer | None = None

    # ---------------------------------------------------------------- app
    def app(self):
        app = web.Application()
        app.router.add_get("/v1/stream", self.handle_stream)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/ready", self.handle_ready)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/", self.handle_index)
        openai_http.add_routes(app, self)  # POST /v1/audio/transcriptions, GET /v1/models
        openai_realtime.add_routes(app, self)  # GET /v1/realtime?intent=transcription (WebSocket)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        if self.config.wyoming:  # the TCP listener lives on the same loop and feeds the same scheduler
            self.wyoming = WyomingServer(self, self.config.wyoming)
            app.on_startup.append(self.wyoming.on_startup)
            app.on_cleanup.append(self.wyoming.on_cleanup)
        return app

    @property
    def wyoming_port(self) -> int | None:
        """The bound Wyoming port once the app has started (`--wyoming tcp://HOST:0` picks one)."""
        return self.wyoming.port if self.wyoming is not None else None

    async def _on_startup(self, app) -> None:
        self.scheduler.start()
        # warm-up (run_server) is done before the app starts, so from here the server can take streams
        self.ready = True

    async def _on_shutdown(self, app) -> None:
        """SIGTERM / Ctrl+C (or ServerThread.stop): refuse new streams, flush every open stream to its last
        final and close it with 1001, waiting at most `shutdown_timeout_s`."""
        self.accepting = False
        self.ready = False
        open_streams = list(self._open.values())
        for o in open_streams:
            o.close_with(CLOSE_GOING_AWAY, "the server is shutting down")
        self.scheduler.wake()
        senders = [o.sender for o in open_streams if not o.sender.done()]
        if senders:
            await asyncio.wait(senders, timeout=self.config.shutdown_timeout_s)

    async def _on_cleanup(self, app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.scheduler.stop)

    # ---------------------------------------------------------------- plain HTTP
    async def handle_health(self, request):
        return web.json_response({
            "status": "ok", "model": self.model.config.model_id, "sample_rate": self.model.sample_rate,
            "latency_modes": self.model.latency_modes, "languages": list(self.model.languages),
            "default_language": self.model.default_language, "active_streams": self.active,
            "open_streams": self.active, "max_streams": self.config.max_streams, "vad": self.config.endpoint.vad,
        })

    async def handle_ready(self, request: web.Request) -> web.Response:
        """Readiness for a load balancer: 200 when a new stream would be admitted now, else 503 with the
        reason and `Retry-After`. Liveness is `/health` (it answers 200 even when the server is full)."""
        state = {"open_streams": self.active, "max_streams": self.config.max_streams,
                 "load": round(self.scheduler.load(), 3), "max_load": self.config.max_load}
        refusal = self._refusal()
        if refusal is None and not self.ready:
            refusal = Refusal("starting", "the server is starting", RETRY_FULL_S)
        if refusal is None:
            return web.json_response({"ready": True, **state})
        return web.json_response({"ready": False, "reason": refusal.reason, "message": refusal.message, **state},
                                 status=503, headers={"Retry-After": str(refusal.retry_after_s)})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def _snapshot(self) -> Snapshot:
        """What /metrics reads from the server and its scheduler at scrape time."""
        return Snapshot(open_streams=self.active, audio_s=self.scheduler.audio_samples / self.model.sample_rate,
                        busy_s=self.scheduler.busy_s, load=self.scheduler.load())

    async def handle_index(self, request):
        return web.Response(text=page_html(self.model.latency_modes, self.model.config.encoder.default_latency_ms,
                                           list(self.model.languages), self.model.default_language),
                            content_type="text/html", charset="utf-8")

    # ---------------------------------------------------------------- the stream
    def parse_params(self, query) -> tuple[int, str]:
        try:
            latency = int(query.get("latency", self.model.config.encoder.default_latency_ms))
            rate = int(query.get("sample_rate", self.model.sample_rate))
        except ValueError as exc:
            raise StreamASRError(f"latency and sample_rate must be integers ({exc})") from None
        self.model.config.encoder.mode(latency)  # ModelError naming the supported modes
        if rate != self.model.sample_rate:
            raise StreamASRError(f"sample_rate={rate} is not supported: send mono {self.model.sample_rate} Hz audio")
        encoding = query.get("encoding", "pcm_s16le")
        if encoding not in ENCODINGS:
            raise StreamASRError(f"unknown encoding {encoding!r}; use pcm_s16le or pcm_f32le")
        return latency, ENCODINGS[encoding]

    def stream_endpoint(self, query) -> EndpointConfig:
        """The server's endpointing, with the stream's `vad` query (silero | off) applied."""
        vad = query.get("vad")
        if vad is None:
            return self.config.endpoint
        if vad not in ("silero", "off"):
            raise StreamASRError(f"unknown vad={vad!r}; use vad=silero or vad=off")
        if vad == "silero":
            silero_session()  # StreamASRError when the package is missing
        return replace(self.config.endpoint, vad=None if vad == "off" else vad)

    async def _refuse(self, ws, message: str, code: int) -> None:
        try:
            await ws.send_json({"type": "error", "message": message})
            await ws.close(code=code, message=_close_reason(message))
        except (ConnectionError, RuntimeError):
            pass

    async def handle_stream(self, request: web.Request) -> web.StreamResponse:
        # admission before the upgrade: a refused client gets a plain 503 + Retry-After that a load balancer
        # can act on, and the slot is taken at once so that concurrent handshakes cannot overfill the server
        refusal = self._refusal()
        if refusal is not None:
            self.metrics.stream_rejected("websocket")
            return refusal.response()
        self.active += 1
        try:
            return await self._serve_stream(request)
        finally:
            self.active -= 1

    async def _serve_stream(self, request: web.Request) -> web.WebSocketResponse:
        """An admitted stream (its slot in `active` already taken): upgrade, check the query, recognise."""
        # aiohttp itself drops a frame past the hard bound, unread; between our limit and it, the stream is
        # flushed and closed with a message (see _receive_loop)
        ws = web.WebSocketResponse(max_msg_size=HARD_FRAME_FACTOR * self.config.max_frame_bytes + 1)
        await ws.prepare(request)
        try:
            latency, encoding = self.parse_params(request.query)
            endpoint = self.stream_endpoint(request.query)
            hotwords = hotwords_from_query(self.model, request.query)
            language = self.model.language(request.query.get("language"))  # one line naming the languages
        except StreamASRError as exc:
            self.metrics.stream_rejected("websocket")
            await self._refuse(ws, str(exc), CLOSE_POLICY)
            return ws
        self.metrics.stream_opened("websocket")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        session = StreamSession(self.model, latency, endpoint,
                                emit=lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev),
                                on_latency=self.metrics.observe_latency,
                                on_done=lambda: loop.call_soon_threadsafe(queue.put_nowait, _DONE),
                                language=language)
        session.every_chunk = request.query.get("every_chunk", "0") in ("1", "true")
        if hotwords is not None:
            session.stream.set_hotwords(hotwords)
        opened = _OpenStream(session, ws)
        opened.sender = asyncio.create_task(self._send_loop(ws, queue, opened))
        self._open[session.id] = opened
        self.scheduler.add(session)
        try:
            await self._receive_loop(ws, opened, encoding)
        finally:
            self._open.pop(session.id, None)
            self.scheduler.remove(session)
            if not opened.sender.done():
                opened.sender.cancel()
        return ws

    def _admission(self) -> str | None:
        """Why a new stream is refused now (a message for the client), or None to admit it."""
        refusal = self._refusal()
        return None if refusal is None else refusal.message

    def _refusal(self) -> Refusal | None:
        """Why a new stream is refused now, with its reason code and Retry-After, or None to admit it."""
        if not self.accepting:
            # this replica is going away: the client should go to another one, or come back after the restart
            return Refusal("shutting_down", "the server is shutting down", int(LOAD_WINDOW_S))
        if self.active >= self.config.max_streams:
            return Refusal("full", f"server is full ({self.config.max_streams} streams); try again later",
                           RETRY_FULL_S)
        projected = self.scheduler.projected_load(self.active)
        # an idle server always admits: the window may still hold the load of streams that have left
        if self.config.max_load < 1.0 and self.active > 0 and projected > self.config.max_load:
            # past this point every stream falls behind together (the scheduler is fair), so a new stream
            # is refused rather than making all the open ones late
            return Refusal("at_capacity", (
                f"server is at capacity: its scheduler was {100 * self.scheduler.load():.0f}% busy over the "
                f"last {LOAD_WINDOW_S:g} s with {self.active} streams, about {100 * projected:.0f}% with one "
                f"more (--max-load {self.config.max_load:g}); try again later"), self._load_retry_after_s(projected))
        return None

    def _load_retry_after_s(self, projected: float) -> int:
        """Seconds until the load window may have room: the further over --max-load, the longer (the window
        forgets a busy spell within LOAD_WINDOW_S), between 1 and LOAD_WINDOW_S."""
        over = (projected - self.config.max_load) / max(projected, 1e-9)
        return max(1, min(int(LOAD_WINDOW_S), math.ceil(over * LOAD_WINDOW_S)))

    async def _send_loop(self, ws: web.WebSocketResponse, queue: asyncio.Queue, opened: "_OpenStream") -> None:
        try:
            while True:
                event = await queue.get()
                if event is _DONE:
                    if opened.close_message:
                        await ws.send_json({"type": "error", "message": opened.close_message})
                    await ws.close(code=opened.close_code, message=_close_reason(opened.close_message))
                    return
                fatal = event.pop("fatal", False)
                await ws.send_json(event)
                if fatal:
                    await ws.close(code=CLOSE_INTERNAL, message=b"internal error")
                    return
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            return

    async def _receive_loop(self, ws: web.WebSocketResponse, opened: "_OpenStream", encoding: str) -> None:
        cfg = self.config
        session, sender = opened.session, opened.sender
        max_backlog = int(cfg.max_backlog_s * self.model.sample_rate)
        while True:
            # flow control: while the client is too far ahead of recognition its socket is not read
            while session.unprocessed_samples() > max_backlog and not sender.done():
                await asyncio.sleep(0.01)
            receive = asyncio.ensure_future(ws.receive())
            done, _ = await asyncio.wait({receive, sender}, timeout=cfg.idle_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if sender in done:  # the server closed the stream (end, shutdown, fatal error)
                receive.cancel()
                return
            if not done:
                receive.cancel()
                self.metrics.count("client_errors")
                await self._flush_and_close(opened, CLOSE_POLICY, f"no data for {cfg.idle_timeout_s:g} s; closing "
                                            "the stream")
                return
            msg = receive.result()
            if msg.type == WSMsgType.BINARY:
                if session.end_requested:
                    continue  # audio after "end" is ignored
                if len(msg.data) > cfg.max_frame_bytes:
                    self.metrics.count("client_errors")
                    await self._flush_and_close(opened, CLOSE_TOO_BIG, f"a frame of {len(msg.data)} bytes is over "
                                                f"the limit of {cfg.max_frame_bytes}; send smaller frames")
                    return
                try:
                    samples = pcm_to_float(msg.data, encoding)
                except AudioError as exc:
                    self.metrics.count("client_errors")
                    await self._refuse(ws, f"malformed audio frame: {exc}", CLOSE_BAD_DATA)
                    return
                if samples.size:
                    session.feed(samples, time.perf_counter())
                    self.scheduler.wake()
            elif msg.type == WSMsgType.TEXT:
                try:
                    control = json.loads(msg.data)
                    kind = control.get("type") if isinstance(control, dict) else None
                except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
                    kind = None
                if kind == "end":
                    await self._flush_and_close(opened, CLOSE_NORMAL, "")
                    return
                if kind == "config":  # per-stream hotwords, from the stream's next chunk on
                    try:
                        hotwords = session.stream.set_hotwords(hotwords_from_config(self.model, control))
                    except StreamASRError as exc:
                        await ws.send_json({"type": "error", "message": f"config: {exc}"})
                        continue
                    await ws.send_json({"type": "config", "hotwords": list(hotwords.phrases) if hotwords else []})
                    continue
                await ws.send_json({"type": "error", "message": "unknown text message; the control messages "
                                    'are {"type": "end"} and {"type": "config", "hotwords": [...]}; send audio '
                                    "as binary frames"})
            elif msg.type == WSMsgType.ERROR:
                self.metrics.count("client_errors")
                exc = ws.exception() or msg.data
                await self._refuse(ws, f"bad WebSocket frame: {exc}", CLOSE_BAD_DATA)
                return
            else:  # CLOSE / CLOSING / CLOSED: the client went away; its state is dropped
                return

    async def _flush_and_close(self, opened: "_OpenStream", code: int, message: str) -> None:
        """End the stream as if the client had sent `end` (its last final is sent), then close with `code`."""
        opened.close_with(code, message)
        self.scheduler.wake()
        try:
            await asyncio.wait_for(asyncio.shield(opened.sender), timeout=max(self.config.idle_timeout_s, 30.0))
        except asyncio.TimeoutError:
            await self._refuse(opened.ws, "timed out finishing the stream", CLOSE_INTERNAL)


def _close_reason(message: str) -> bytes:
    """A close frame's reason: at most 123 bytes of UTF-8 (a control frame carries 125 with the code),
    cut at a character boundary. The full message goes out as an error event before it."""
    return message.encode()[:123].decode("utf-8", "ignore").encode()


class _OpenStream:
    """A stream being served: its session, the task sending its events, and how it is to be closed."""

    def __init__(self, session: StreamSession, ws: web.WebSocketResponse):
        self.session = session
        self.ws = ws
        self.sender: asyncio.Task
        self.close_code = CLOSE_NORMAL
        self.close_message = ""

    def close_with(self, code: int, message: str) -> None:
        """Finish the stream (the scheduler flushes it and emits the last final), then close with `code`."""
        if not self.session.end_requested:
            self.close_code, self.close_message = code, message
        self.session.request_end()


class ServerThread:
    """Run a server on its own event loop in a background thread (tests, benchmarks, embedding)."""

    def __init__(self, model, config: ServerConfig | None = None):
        self.server = Server(model, config)
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> int:
        self._thread = threading.Thread(target=self._main, name="streamasr-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("server did not start")
        if self._error:
            raise self._error
        return self.port

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._runner = web.AppRunner(self.server.app(), handle_signals=False)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.server.config.host, self.server.config.port)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # report to start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def run_server(model: Model, config: ServerConfig) -> None:
    """Serve until SIGTERM or Ctrl+C (the `streamasr serve` command); then open streams get their last final
    and a 1001 close, within `shutdown_timeout_s`."""
    server = Server(model, config)
    # every batch size the scheduler can form, by default: ONNX Runtime's first call at a new batch size takes
    # a few hundred ms, which a loaded server would otherwise pay at random moments, as a stall of every stream
    largest = min(config.max_batch, config.max_streams)
    batches = largest if config.warmup_batches is None else min(config.warmup_batches, largest)
    modes = config.warmup_latency_ms or (model.config.encoder.default_latency_ms,)
    if batches > 0:
        took = sum(warm_up(model, ms, batches) for ms in modes)
        print(f"streamasr serve: warmed up batches of 1-{batches} streams at {', '.join(map(str, modes))} ms "
              f"in {took:.1f} s", flush=True)
    web.run_app(server.app(), host=config.host, port=config.port, access_log=None,
                shutdown_timeout=config.shutdown_timeout_s + 1.0,
                print=lambda msg: print(f"streamasr serve: {msg} (model {model.config.model_id}, "
                                        f"max {config.max_streams} streams)", flush=True))
