"""A Wyoming TCP server (Home Assistant's voice protocol) beside the HTTP and WebSocket routes.

`streamasr serve --wyoming tcp://127.0.0.1:10300` binds a plain asyncio TCP server on the same event loop as
aiohttp, and each request becomes a `StreamSession` in the server's own `Scheduler`, so Wyoming requests,
WebSocket streams and uploads share the batched encoder steps and the same admission limits
(`--max-streams`, `--max-load`).

Framing (Wyoming 1.x, written here so the product does not depend on the `wyoming` package, which only the
tests use as the client): every event is one UTF-8 JSON header line ending in `\\n` with `type`, optional inline
`data`, `data_length` and `payload_length`; then exactly `data_length` bytes of JSON (merged over the inline
`data`) and exactly `payload_length` bytes of binary payload (PCM for `audio-chunk`).

Events (one request per connection, as wyoming-faster-whisper does):

    describe                                   -> info (one asr program; one model per latency mode)
    transcribe {name?, language?}              (optional; `name` picks a latency; `language`: English, or one of a
                                               multilingual model's languages)
    audio-start {rate, width, channels}        -> transcript-start {language}
    audio-chunk {rate, width, channels} + PCM  -> transcript-chunk {text: only the new text}, as chunks decode
    audio-stop                                 -> transcript {text, language}, transcript-stop; the server closes
    ping {text}                                -> pong {text}
    select-program {name}                      (accepted for the one program, "streamasr")

Any PCM format is taken: width 1 (unsigned 8-bit, the WAV convention), 2, 3 or 4 (signed little-endian), any
number of channels (averaged to mono) and any rate (resampled with one soxr HQ stream per connection: the
filter `streamasr transcribe` uses, so the samples equal those of reading the same audio from a file).

Bad input (a header that is not a JSON object, an unknown event, audio before `audio-start`, a section over the
size limits, a malformed PCM payload) gets an `error` event and the connection is closed; nothing else is
affected. A connection that sends nothing for `idle_timeout_s` is closed the same way. The program advertises
`requires_external_vad`: the transcript comes on the client's `audio-stop` (Home Assistant runs its own VAD),
not at the server's endpoints.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import soxr

from streamasr import __version__
from streamasr.audio import MIN_SAMPLE_RATE, pcm_to_float, to_mono
from streamasr.errors import AudioError, StreamASRError
from streamasr.runtime.stream import Model
from streamasr.serve.languages import client_language, reported_language
from streamasr.serve.session import StreamSession

log = logging.getLogger("streamasr.serve")

#: the `version` written in every header: the Wyoming release whose events this server speaks
PROTOCOL_VERSION = "1.10.2"
#: a header line longer than this is not Wyoming (the StreamReader's buffer limit)
MAX_HEADER_BYTES = 64 * 1024
#: the JSON data section of one event (transcribe's `context` and biasing lists are the largest real ones)
MAX_DATA_BYTES = 1 << 20
MAX_RATE = 384_000
MAX_CHANNELS = 32
PROGRAM_NAME = "streamasr"
#: the `protocol` label of Wyoming requests in /metrics
METRICS_PROTOCOL = "wyoming"
LANGUAGES = ["en"]


class WyomingError(Exception):
    """A client's protocol error: sent as an `error` event with `code`, then the connection is closed."""

    def __init__(self, message: str, code: str = "bad-request"):
        super().__init__(message)
        self.code = code


@dataclass
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    def encode(self) -> bytes:
        """The event on the wire: header line, then the data section, then the payload."""
        header: dict[str, Any] = {"type": self.type, "version": PROTOCOL_VERSION}
        data = json.dumps(self.data, ensure_ascii=False).encode() if self.data else b""
        if data:
            header["data_length"] = len(data)
        if self.payload:
            header["payload_length"] = len(self.payload)
        return json.dumps(header, ensure_ascii=False).encode() + b"\n" + data + self.payload


def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WyomingError(f"{key} must be a non-negative integer, got {value!r}")
    if value > limit:
        raise WyomingError(f"{key} {value} is over the limit of {limit} bytes", "too-large")
    return value


async def read_event(reader: asyncio.StreamReader, max_payload: int) -> Event | None:
    """The next event, or None at a clean end of the stream. A WyomingError for anything malformed, before
    reading a section whose announced length is over its limit (so a lying header cannot make us buffer it)."""
    try:
        line = await reader.readline()
    except ValueError:  # asyncio's LimitOverrunError: no newline within MAX_HEADER_BYTES
        raise WyomingError(f"header line longer than {MAX_HEADER_BYTES} bytes") from None
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise WyomingError("connection ended inside a header line")
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), or nested deeper than the parser goes
        raise WyomingError("header line is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise WyomingError("header must be a JSON object with a string `type`")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise WyomingError("`data` must be a JSON object")
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", max_payload)
    try:
        if data_length:
            try:
                extra = json.loads(await reader.readexactly(data_length))
            except (ValueError, RecursionError):
                raise WyomingError("data section is not JSON") from None
            if not isinstance(extra, dict):
                raise WyomingError("data section must be a JSON object")
            data = {**data, **extra}
        payload = await reader.readexactly(payload_length) if payload_length else b""
    except asyncio.IncompleteReadError:
        raise WyomingError("connection ended inside an event") from None
    return Event(header["type"], data, payload)


def parse_wyoming_uri(uri: str) -> tuple[str, int]:
    """`tcp://HOST:PORT` -> (host, port); a StreamASRError naming the problem otherwise. Port 0 binds an
    ephemeral port (tests)."""
    hint = "use tcp://HOST:PORT, e.g. tcp://127.0.0.1:10300"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise StreamASRError(f"--wyoming {uri!r}: {exc}; {hint}") from None
    if parts.scheme != "tcp":
        raise StreamASRError(f"--wyoming {uri!r}: only tcp:// is supported; {hint}")
    if not parts.hostname or port is None:
        raise StreamASRError(f"--wyoming {uri!r}: needs a host and a port; {hint}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise StreamASRError(f"--wyoming {uri!r}: unexpected path, query or user part; {hint}")
    return parts.hostname, port


def pcm_to_mono(raw: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM -> float32 mono in [-1, 1], scaled as libsndfile reads the same WAV
    (so a Wyoming request and `streamasr transcribe` of the file see the same samples)."""
    frame = width * channels
    if len(raw) % frame:
        raise AudioError(f"{len(raw)} bytes is not a whole number of {channels}-channel {8 * width}-bit frames")
    if width == 2:
        x = pcm_to_float(raw, "s16le")
    elif width == 1:  # 8-bit WAV data is unsigned
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    elif width == 4:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    else:
        raise AudioError(f"sample width {width} bytes is not supported (1, 2, 3 or 4)")
    return to_mono(x.reshape(-1, channels)) if channels > 1 else x


@dataclass(frozen=True)
class AudioFormat:
    rate: int
    width: int
    channels: int

    @classmethod
    def from_data(cls, data: dict) -> "AudioFormat":
        try:
            fmt = cls(*(data[k] for k in ("rate", "width", "channels")))
        except KeyError as exc:
            raise WyomingError(f"audio format lacks {exc.args[0]!r} (rate, width, channels)") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (fmt.rate, fmt.width, fmt.channels)):
            raise WyomingError("rate, width and channels must be integers")
        if not MIN_SAMPLE_RATE <= fmt.rate <= MAX_RATE:
            raise WyomingError(f"rate {fmt.rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_RATE}", "bad-audio")
        if fmt.width not in (1, 2, 3, 4):
            raise WyomingError(f"width {fmt.width} is not supported (1, 2, 3 or 4 bytes)", "bad-audio")
        if not 1 <= fmt.channels <= MAX_CHANNELS:
            raise WyomingError(f"channels {fmt.channels} is outside 1-{MAX_CHANNELS}", "bad-audio")
        return fmt


class ServerLike(Protocol):
    """What the Wyoming front end uses of `serve.server.Server` (not imported: server.py imports this module)."""

    model: Model
    config: Any
    scheduler: Any
    metrics: Any
    active: int

    def _admission(self) -> str | None: ...


def model_names(model: Model) -> dict[str, int]:
    """Wyoming model name -> latency mode: the model id is its default mode, `ID@MSms` each mode."""
    names = {model.config.model_id: model.config.encoder.default_latency_ms}
    names.update({f"{model.config.model_id}@{ms}ms": ms for ms in model.latency_modes})
    return names


def info_event(model: Model) -> Event:
    """The `info` answer: one asr program, its models the model id (default latency) and one per other mode."""
    attribution = {"name": "NVIDIA", "url": f"https://huggingface.co/{model.config.model_id}"}
    if model.config.model_id.count("/") != 1:  # a local or random model, not a hub id
        attribution = {"name": "NVIDIA", "url": "https://huggingface.co/nvidia"}
    default = model.config.encoder.default_latency_ms
    models = []
    for name, ms in model_names(model).items():
        if name != model.config.model_id and ms == default:
            continue  # the plain id already is the default mode
        models.append({"name": name, "attribution": attribution, "installed": True, "version": None,
                       "description": f"{model.config.model_id}, streaming at {ms} ms latency"
                                      + (" (default)" if ms == default else ""),
                       "languages": list(model.languages) or list(LANGUAGES)})
    program = {"name": PROGRAM_NAME, "attribution": {"name": "streamasr", "url": ""},
               "installed": True, "version": __version__,
               "description": "real-time streaming speech recognition on CPU (ONNX Runtime)", "models": models,
               "supports_transcript_streaming": True, "requires_external_vad": True}
    return Event("info", {"asr": [program], "tts": [], "handle": [], "intent": [], "wake": [], "mic": [],
                          "snd": []})


class WyomingServer:
    """The TCP listener; started and stopped with the aiohttp app (`on_startup` / `on_cleanup`)."""

    def __init__(self, server: ServerLike, uri: str):
        self.server = server
        self.host, self.requested_port = parse_wyoming_uri(uri)
        self.port: int | None = None
        self.info = info_event(server.model)
        self._listener: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def on_startup(self, app: object = None) -> None:
        try:
            self._listener = await asyncio.start_server(self._serve, self.host, self.requested_port,
                                                        limit=MAX_HEADER_BYTES)
        except OSError as exc:
            raise StreamASRError(f"cannot listen for Wyoming on {self.host}:{self.requested_port}: "
                                 f"{exc.strerror or exc}") from None
        self.port = self._listener.sockets[0].getsockname()[1]
        print(f"streamasr serve: Wyoming on tcp://{self.host}:{self.port}", flush=True)

    async def on_cleanup(self, app: object = None) -> None:
        """Stop accepting and drop the open connections (the scheduler stops with the app too)."""
        if self._listener is not None:
            self._listener.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5.0)
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug in one connection must not reach the listener
            log.exception("Wyoming connection failed")
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)


class _Connection:
    """One client connection: reads events, runs at most one request, writes events from one task."""

    def __init__(self, owner: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.owner = owner
        self.server = owner.server
        self.model = owner.server.model
        self.reader, self.writer = reader, writer
        self.out: asyncio.Queue = asyncio.Queue()  # ("event", Event) | ("text", str) | ("done", str) | ...
        self.latency_ms = self.model.config.encoder.default_latency_ms
        self.language = self.model.default_language  # the model's key (None: an English model)
        self.session: StreamSession | None = None
        self.format: AudioFormat | None = None
        self.resampler: soxr.ResampleStream | None = None
        self.sender: asyncio.Task | None = None
        self.refused = False  # an error event was queued: linger before closing (see _linger)

    # ---------------------------------------------------------------- reading
    async def run(self) -> None:
        cfg = self.server.config
        self.sender = asyncio.create_task(self._send_loop())
        cancelled = False
        try:
            await self._read_loop(cfg)
        except WyomingError as exc:
            self.server.metrics.count("client_errors")
            self._fail(str(exc), exc.code)
        except (ConnectionError, OSError):
            pass  # the client went away: nothing to send
        except asyncio.CancelledError:  # the server is stopping: drop the request at once
            cancelled = True
            raise
        except Exception as exc:  # a bug: this connection gets an error event, the others carry on
            log.exception("Wyoming connection failed")
            self._fail(f"internal error: {exc}", "internal")
        finally:
            try:
                if not cancelled:
                    await self._finish_sender(cfg)
            finally:  # also when cancelled while waiting for the transcript
                if not self.sender.done():
                    self.sender.cancel()
                if self.session is not None:
                    self.server.scheduler.remove(self.session)
                    self.server.active -= 1
        if self.refused:
            await self._linger()

    async def _read_loop(self, cfg: Any) -> None:
        max_backlog = int(cfg.max_backlog_s * self.model.sample_rate)
        while not self.sender.done():  # the sender ends early only on an internal error
            # flow control: while the client is too far ahead of recognition its socket is not read
            while self.session is not None and self.session.unprocessed_samples() > max_backlog \
                    and not self.sender.done():
                await asyncio.sleep(0.01)
            read = asyncio.ensure_future(read_event(self.reader, cfg.max_frame_bytes))
            try:
                done, _ = await asyncio.wait({read, self.sender}, timeout=cfg.idle_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not read.done():
                    read.cancel()
            if read not in done:
                if self.sender in done:
                    return
                raise WyomingError(f"no data for {cfg.idle_timeout_s:g} s; closing the connection", "timeout")
            event = read.result()  # a WyomingError propagates
            if event is None:
                return  # the client closed its side: drop the request
            if await self._handle(event):
                return

    async def _handle(self, event: Event) -> bool:
        """Act on one event; True when the request is complete (no more events are read)."""
        kind, data = event.type, event.data
        if kind == "describe":
            self.out.put_nowait(("event", self.owner.info))
        elif kind == "select-program":  # a client picking one of the advertised programs: there is one
            if data.get("name") != PROGRAM_NAME:
                raise WyomingError(f"unknown program {data.get('name')!r}; this server has {PROGRAM_NAME!r}",
                                   "unknown-program")
        elif kind == "ping":
            self.out.put_nowait(("event", Event("pong", {"text": data.get("text")})))
        elif kind == "transcribe":
            if self.session is not None:
                raise WyomingError("transcribe after audio-start: one request per connection")
            self._transcribe(data)
        elif kind == "audio-start":
            if self.session is not None:
                raise WyomingError("a second audio-start: one request per connection")
            self._start(AudioFormat.from_data(data))
        elif kind == "audio-chunk":
            if self.session is None:
                raise WyomingError("audio-chunk before audio-start")
            self._chunk(AudioFormat.from_data(data), event.payload)
        elif kind == "audio-stop":
            if self.session is None:  # no audio at all: an empty transcript, as wyoming-faster-whisper answers
                self.out.put_nowait(("event", Event("transcript", {"text": "", "language": reported_language(self.model, self.language)})))
                self.out.put_nowait(("close", None))
                return True
            self._stop()
            return True
        else:
            raise WyomingError(f"unknown event type {kind!r}; this server handles describe, transcribe, "
                               "audio-start, audio-chunk, audio-stop, select-program and ping", "unknown-event")
        return False

    def _transcribe(self, data: dict) -> None:
        language, name = data.get("language"), data.get("name")
        if language is not None:
            if not isinstance(language, str):
                raise WyomingError(f"language {language!r} is not a string", "unsupported-language")
            try:
                self.language = client_language(self.model, language)
            except StreamASRError as exc:
                raise WyomingError(str(exc), "unsupported-language") from None
        if name is not None and name != PROGRAM_NAME:
            names = model_names(self.model)
            if not isinstance(name, str) or name not in names:
                raise WyomingError(f"unknown model {name!r}; use one of {', '.join(names)}", "unknown-model")
            self.latency_ms = names[name]

    def _start(self, fmt: AudioFormat) -> None:
        refusal = self.server._admission()
        if refusal is not None:
            self.server.metrics.stream_rejected(METRICS_PROTOCOL)
            raise WyomingError(refusal, "server-busy")
        loop = asyncio.get_running_loop()

        def post(item: tuple) -> None:  # any thread -> this connection's queue
            loop.call_soon_threadsafe(self.out.put_nowait, item)

        def emit(event: dict) -> None:
            # called on the scheduler thread right after a chunk is decoded, so the stream's text (which only
            # that thread writes) is read where it is consistent; finals and partials both mean "text grew"
            if event.get("type") == "error":
                post(("error", str(event.get("message", "internal error"))))
            else:
                post(("text", session.stream.text))

        # finals are not used (the transcript comes at audio-stop), so the VAD would be wasted work here
        endpoint = replace(self.server.config.endpoint, vad=None)
        session = StreamSession(self.model, self.latency_ms, endpoint, emit=emit,
                                on_latency=self.server.metrics.observe_latency,
                                on_done=lambda: post(("done", session.stream.text)), language=self.language)
        self.format = fmt
        if fmt.rate != self.model.sample_rate:
            self.resampler = soxr.ResampleStream(fmt.rate, self.model.sample_rate, 1, dtype="float32",
                                                 quality="HQ")
        self.session = session
        self.server.active += 1
        self.server.metrics.stream_opened(METRICS_PROTOCOL)
        self.server.scheduler.add(session)
        self.out.put_nowait(("event", Event("transcript-start",
                                            {"language": reported_language(self.model, self.language)})))

    def _chunk(self, fmt: AudioFormat, payload: bytes) -> None:
        if fmt != self.format:
            raise WyomingError(f"audio-chunk format {fmt} differs from audio-start's {self.format}", "bad-audio")
        try:
            samples = pcm_to_mono(payload, fmt.width, fmt.channels)
        except AudioError as exc:
            raise WyomingError(f"malformed audio-chunk: {exc}", "bad-audio") from None
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        self._feed(samples)

    def _stop(self) -> None:
        if self.resampler is not None:
            self._feed(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        self.session.request_end()
        self.server.scheduler.wake()

    def _feed(self, samples: np.ndarray) -> None:
        if samples.size:
            self.session.feed(samples, time.perf_counter())
            self.server.scheduler.wake()

    def _fail(self, message: str, code: str) -> None:
        """Send an error event and end the connection (after what is queued before it)."""
        self.out.put_nowait(("event", Event("error", {"text": message, "code": code})))
        self.out.put_nowait(("close", None))
        self.refused = True

    async def _linger(self, seconds: float = 1.0, limit: int = 4 << 20) -> None:
        """Half-close, then discard what the client still sends for a moment: closing a socket with unread
        input makes the kernel send a reset, which can destroy the error event before the client reads it."""
        loop = asyncio.get_running_loop()
        deadline, discarded = loop.time() + seconds, 0
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            while discarded < limit and (left := deadline - loop.time()) > 0:
                data = await asyncio.wait_for(self.reader.read(1 << 16), left)
                if not data:
                    return
                discarded += len(data)
        except (asyncio.TimeoutError, ConnectionError, OSError, ValueError):
            return

    async def _finish_sender(self, cfg: Any) -> None:
        """Let the sender write what is queued (the transcript after audio-stop), bounded in time."""
        if self.sender.done():
            return
        if self.session is None or not self.session.end_requested:
            self.out.put_nowait(("close", None))  # nothing more will come from recognition
        try:
            await asyncio.wait_for(asyncio.shield(self.sender), timeout=max(cfg.idle_timeout_s, 30.0))
        except asyncio.TimeoutError:
            self.sender.cancel()

    # ---------------------------------------------------------------- writing
    async def _send_loop(self) -> None:
        """The one writer of this connection: events in queue order; text deltas computed here."""
        sent = ""
        try:
            while True:
                kind, value = await self.out.get()
                if kind == "event":
                    self.writer.write(value.encode())
                elif kind in ("text", "done"):
                    text = value.strip()
                    # greedy RNN-T output only grows; a chunk carries only the text added since the last one
                    if text.startswith(sent) and len(text) > len(sent):
                        self.writer.write(Event("transcript-chunk", {"text": text[len(sent):]}).encode())
                        sent = text
                    if kind == "done":
                        self.writer.write(Event("transcript", {"text": text, "language": reported_language(self.model, self.language)}).encode())
                        self.writer.write(Event("transcript-stop").encode())
                        await self.writer.drain()
                        return
                elif kind == "error":
                    self.writer.write(Event("error", {"text": value, "code": "internal"}).encode())
                    await self.writer.drain()
                    return
                else:  # close
                    await self.writer.drain()
                    return
                await self.writer.drain()
        except (ConnectionError, OSError):
            return
