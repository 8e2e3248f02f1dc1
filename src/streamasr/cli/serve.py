"""`streamasr serve`, `streamasr client` and `streamasr mic`: live recognition over the network and from
the microphone."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable

import aiohttp
import numpy as np

from streamasr.audio import open_microphone, read_audio
from streamasr.cli.common import LiveLine, add_model_arg, load_model
from streamasr.errors import StreamASRError
from streamasr.runtime import Model
from streamasr.runtime.decoder import Token
from streamasr.runtime.encoder import EncodedChunk
from streamasr.runtime.endpoint import EndpointConfig, Endpointer
from streamasr.runtime.vad import silero_session
from streamasr.serve.client import file_blocks, stream_blocks, stream_url
from streamasr.serve.server import ServerConfig, run_server
from streamasr.serve.wyoming import parse_wyoming_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="WebSocket server for live recognition of many concurrent streams")
    add_model_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-streams", type=int, default=32, help="concurrent streams; more are refused (HTTP 503)")
    p.add_argument("--max-load", type=float, default=0.8, metavar="FRACTION",
                   help="refuse a new stream (HTTP 503) when the scheduler, busy this fraction of the last 5 s per "
                        "stream, would pass it with one more: past it every open stream falls behind together; "
                        "1 disables (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=32, help="streams per batched encoder call")
    p.add_argument("--batch-wait", type=float, default=0.25, metavar="FRACTION",
                   help="how long (fraction of a chunk) a batch may wait for more streams' chunks; 0 runs "
                        "every ready chunk at once (default: %(default)s)")
    p.add_argument("--busy-batch-wait", type=float, default=None, metavar="FRACTION",
                   help="the batching window near capacity: it grows from --batch-wait at 60%% scheduler load to "
                        "this at 90%% (default: --batch-wait, a fixed window)")
    p.add_argument("--warmup-batches", type=int, default=None, metavar="N",
                   help="at start-up, run the encoder once at every batch size up to N (ONNX Runtime's first "
                        "call at a new shape is slow); 0 skips it (default: every size the server can form, "
                        "min(--max-batch, --max-streams))")
    p.add_argument("--warmup-latency", default=None, metavar="MS[,MS]",
                   help="latency modes to warm up (default: the model's default mode)")
    _add_endpoint_args(p)
    p.add_argument("--idle-timeout-s", type=float, default=30.0,
                   help="close a stream that sends nothing this long (default: %(default)s)")
    p.add_argument("--wyoming", default=None, metavar="tcp://HOST:PORT",
                   help="also serve the Wyoming protocol (Home Assistant) on this TCP address, through the same "
                        "scheduler, e.g. tcp://127.0.0.1:10300 (default: off)")
    p.add_argument("--allow-random", action="store_true", help="serve a random-weight benchmark model anyway")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("client", help="stream a file (or the microphone) to a `streamasr serve` server")
    p.add_argument("audio", nargs="?", help="audio file (WAV/FLAC/OGG)")
    p.add_argument("--mic", action="store_true", help="stream the default microphone (needs sounddevice)")
    p.add_argument("--url", default="ws://127.0.0.1:8080", help="server address (default: %(default)s)")
    p.add_argument("--latency", type=int, default=None, help="latency mode in ms (default: the server's model's)")
    p.add_argument("--encoding", default="pcm_s16le", choices=["pcm_s16le", "pcm_f32le"])
    p.add_argument("--language", default=None, help="a multilingual server model's language (a locale key or auto)")
    p.add_argument("--fast", action="store_true", help="send a file as fast as possible instead of in real time")
    p.add_argument("--json", action="store_true", help="print every server message as a JSON line")
    p.set_defaults(func=cmd_client)

    p = sub.add_parser("mic", help="transcribe the default microphone live in the terminal")
    add_model_arg(p)
    p.add_argument("--latency", type=int, default=None)
    p.add_argument("--language", default=None, help="a multilingual model's language (a locale key or auto)")
    _add_endpoint_args(p)
    p.add_argument("--allow-random", action="store_true")
    p.add_argument("--file", default=None, help=argparse.SUPPRESS)  # a file through exactly the mic path (tests)
    p.set_defaults(func=cmd_mic)


def _add_endpoint_args(p: argparse.ArgumentParser) -> None:
    """The endpointing options, shared by `serve` and `mic` (both use runtime.endpoint.Endpointer)."""
    p.add_argument("--endpoint-ms", type=int, default=800,
                   help="trailing silence (blank frames) that ends an utterance; 0 disables (default: %(default)s)")
    p.add_argument("--max-utterance-s", type=float, default=30.0,
                   help="cut an utterance after this long; 0: no limit (default: %(default)s)")
    p.add_argument("--vad", choices=["silero", "off"], default="off",
                   help="a voice activity detector as a second endpoint signal (silero needs "
                        "`pip install --no-deps silero-vad`; default: %(default)s)")
    p.add_argument("--vad-threshold", type=float, default=0.5,
                   help="speech probability from which the VAD counts a 32 ms window as speech (default: %(default)s)")
    p.add_argument("--vad-silence-ms", type=int, default=800,
                   help="non-speech after speech, per the VAD, that ends an utterance (default: %(default)s)")


def _endpoint(args: argparse.Namespace) -> EndpointConfig:
    if args.endpoint_ms < 0 or args.max_utterance_s < 0:
        raise StreamASRError("--endpoint-ms and --max-utterance-s must be >= 0")
    endpoint = EndpointConfig(args.endpoint_ms, args.max_utterance_s, vad=None if args.vad == "off" else args.vad,
                              vad_threshold=args.vad_threshold, vad_silence_ms=args.vad_silence_ms)
    if endpoint.vad is not None:
        silero_session()  # fail before loading the model when the package is missing
    return endpoint


def cmd_serve(args: argparse.Namespace) -> int:
    if args.max_streams < 1:
        raise StreamASRError("--max-streams must be at least 1")
    if not 0 < args.max_load <= 1:
        raise StreamASRError(f"--max-load is a fraction of the scheduler's time in (0, 1], got {args.max_load}")
    if not 0 <= args.batch_wait <= 1:
        raise StreamASRError(f"--batch-wait is a fraction of a chunk between 0 and 1, got {args.batch_wait}")
    busy_wait = args.batch_wait if args.busy_batch_wait is None else args.busy_batch_wait
    if not args.batch_wait <= busy_wait <= 1:
        raise StreamASRError(f"--busy-batch-wait is a fraction of a chunk between --batch-wait ({args.batch_wait:g}) "
                             f"and 1, got {busy_wait:g}")
    if not 0 <= args.port <= 65535:
        raise StreamASRError(f"--port {args.port} is not a TCP port")
    endpoint = _endpoint(args)
    if args.wyoming is not None:
        parse_wyoming_uri(args.wyoming)  # one clear error for a bad URI, before loading the model
    if args.warmup_batches is not None and args.warmup_batches < 0:
        raise StreamASRError("--warmup-batches must be 0 or more")
    try:
        warm_modes = tuple(int(v) for v in args.warmup_latency.split(",")) if args.warmup_latency else ()
    except ValueError:
        raise StreamASRError(f"--warmup-latency takes latency modes in ms, got {args.warmup_latency!r}") from None
    # A busy server keeps the weight pages ORT never reads resident (runtime/mapped_weights.py): with them
    # handed back, 12 concurrent streams in `bench serve` stalled past the chunk somewhat more often
    # (docs/benchmarks.md), which 80 MB saved once per process does not buy. STREAMASR_RELEASE_MAPPED=1
    # releases them all the same.
    model = load_model(args, allow_random=args.allow_random, release_mapped=False)
    for ms in warm_modes:
        model.latency(ms)  # an unknown mode is a clear error now, not at the first stream
    config = ServerConfig(host=args.host, port=args.port, max_streams=args.max_streams, max_load=args.max_load,
                          max_batch=args.max_batch, batch_wait=args.batch_wait, busy_batch_wait=busy_wait,
                          warmup_batches=args.warmup_batches,
                          warmup_latency_ms=warm_modes, idle_timeout_s=args.idle_timeout_s, endpoint=endpoint,
                          wyoming=args.wyoming)
    try:
        run_server(model, config)
    except OSError as exc:
        raise StreamASRError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


class _Printer:
    """Partial text overwritten in place on a terminal; finals on their own lines."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.live = LiveLine("tty" if sys.stdout.isatty() and not as_json else "off")

    def __call__(self, event: dict) -> None:
        try:
            self._show(event)
        except BrokenPipeError:
            # the reader went away (`| head -n 1`): nothing more can be shown. Point stdout at /dev/null so
            # the interpreter's flush at exit does not print "Exception ignored ... BrokenPipeError" (Python
            # docs, "Note on SIGPIPE"), then re-raise so the caller stops streaming and exits quietly.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError):  # stdout replaced by an object without a descriptor: nothing to flush
                pass
            raise

    def _show(self, event: dict) -> None:
        if self.as_json:
            print(json.dumps(event, ensure_ascii=False), flush=True)
            return
        kind = event.get("type")
        if kind == "partial":
            self.live.update(event["text"])
        elif kind == "final":
            self.live.clear()
            if event["text"]:
                print(event["text"], flush=True)
        elif kind == "error":
            self.live.clear()
            print(f"server error: {event.get('message')}", file=sys.stderr, flush=True)


def cmd_client(args: argparse.Namespace) -> int:
    if bool(args.audio) == bool(args.mic):
        raise StreamASRError("give an audio FILE or --mic")
    url = stream_url(args.url, args.latency, args.encoding)
    if args.language:
        url += "&language=" + urllib.parse.quote(args.language)
    printer = _Printer(args.json)
    if args.mic:
        blocks = _mic_blocks_async()
        realtime = False
    else:
        blocks = file_blocks(read_audio(args.audio, 16000), 100)
        realtime = not args.fast
    try:
        result = asyncio.run(stream_blocks(url, blocks, args.encoding, realtime=realtime, on_event=printer,
                                           timeout=3600))
    except BrokenPipeError:  # our stdout's reader closed it (the printer re-raised it through the stream)
        return 0
    except OSError as exc:  # aiohttp's connection errors derive from OSError
        raise StreamASRError(f"cannot reach the server at {args.url}: {exc}") from None
    except aiohttp.ClientError as exc:
        raise StreamASRError(f"WebSocket error talking to {args.url}: {exc}") from None
    return 1 if result.errors else 0


async def _mic_blocks_async() -> AsyncIterator[np.ndarray]:
    stream, blocks = open_microphone(16000, 1600)
    loop = asyncio.get_running_loop()
    try:
        while True:
            yield await loop.run_in_executor(None, blocks.get)
    finally:
        stream.stop()


def run_live(model: Model, latency: int, blocks: Iterable[np.ndarray], endpoint: EndpointConfig,
             on_event: Callable[[dict], None], language: str | None = None) -> None:
    """The `mic` path: blocks of float32 samples -> the server's partial/final events, from the runtime's
    endpointer after every chunk (the same rules and events as `serve`)."""
    partial = ""

    def after_chunk(chunk: EncodedChunk, tokens: list[Token]) -> None:
        nonlocal partial
        finals = endpointer.update()
        for final in finals:
            on_event(final.to_event())
            partial = ""
        if finals and finals[-1].reason in ("silence", "max_length"):
            return  # the utterance just closed: its partial is the final
        text = endpointer.partial_text()
        if text != partial:
            partial = text
            on_event({"type": "partial", "text": text})

    stream = model.stream(latency, on_chunk=after_chunk, language=language)
    endpointer = Endpointer(stream, endpoint)
    for block in blocks:
        endpointer.accept_audio(block)
        stream.accept(block)
    stream.on_chunk = None  # the tail's chunks are closed by the last final below
    stream.finish()
    for final in endpointer.finish():
        on_event(final.to_event())


def cmd_mic(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args)
    model = load_model(args, allow_random=args.allow_random)
    latency = model.latency(args.latency)
    language = model.language(args.language)
    printer = _Printer(False)
    if args.file:  # hidden: feed a file through exactly the microphone path (tests)
        x = read_audio(args.file, model.sample_rate)
        run_live(model, latency, (x[i : i + 1600] for i in range(0, x.size, 1600)), endpoint, printer, language)
        return 0
    stream, queue = open_microphone(model.sample_rate, model.sample_rate // 10)
    print("listening (Ctrl-C to stop)", file=sys.stderr, flush=True)

    def blocks() -> Iterable[np.ndarray]:
        try:
            while True:
                yield queue.get()
        except KeyboardInterrupt:
            return

    try:
        run_live(model, latency, blocks(), endpoint, printer, language)
    finally:
        stream.stop()
    return 0
