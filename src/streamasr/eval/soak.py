"""`streamasr bench soak`: one stream served for a long time (an hour by default), watched for drift.

A server people leave running must not slowly degrade: its memory must stay flat, its per-chunk latency
must not grow with the stream's age, and finals must keep coming. This runs `streamasr serve` as its own
process and one real-time client that streams looped speech (the utterances of the speech folder with a
second of silence after each, so that the silence rule keeps closing utterances) over a single WebSocket
for `--duration` seconds, and reports per `--window`: chunk latency p50 / p95 / max (from the send of the
block that completed a chunk to its partial, as `bench serve` measures it), the server's RSS at the window's
end, and the finals and errors that arrived in it. The summary compares the last window with the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from streamasr.errors import StreamASRError
from streamasr.eval.serve_load import ChunkClock, current_rss_bytes, server_process
from streamasr.eval.speech import benchmark_speech
from streamasr.model_config import ModelConfig
from streamasr.serve.client import encode_pcm


@dataclass
class Window:
    start_s: float
    chunks: int = 0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    max_ms: float = float("nan")
    finals: int = 0
    errors: int = 0
    rss_mb: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)


def looped_speech(directory: str | None, rate: int, gap_s: float = 1.0) -> np.ndarray:
    """The folder's utterances, each followed by `gap_s` of silence, joined once (the client loops it)."""
    gap = np.zeros(int(gap_s * rate), dtype=np.float32)
    pieces = [p for x in benchmark_speech(directory=directory, sample_rate=rate).values() for p in (x, gap)]
    return np.concatenate(pieces)


async def soak_client(url: str, audio: np.ndarray, duration: float, block: int, rate: int, window_s: float,
                      server_pid: int) -> list[Window]:
    """Stream `audio`, looped, in real time for `duration` seconds; statistics per window of stream time."""
    windows: list[Window] = [Window(0.0)]
    clock = ChunkClock(rate)
    total = int(duration * rate)
    t0 = time.perf_counter()

    def current() -> Window:
        return windows[-1]

    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:

        async def receive() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(msg.data)
                if event["type"] == "partial" and "audio_s" in event:
                    seconds = clock.latency(event["audio_s"])
                    if seconds is not None:
                        current().latencies.append(seconds)
                elif event["type"] == "final":
                    current().finals += 1
                elif event["type"] == "error":
                    current().errors += 1

        receiver = asyncio.create_task(receive())
        for i in range(0, total, block):
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if ws.closed:
                break
            if i / rate >= current().start_s + window_s:
                current().rss_mb = current_rss_bytes(server_pid) / 1e6
                windows.append(Window(current().start_s + window_s))
            # every block is whole, wrapping around the loop's end: a short block at the wrap would make the
            # count of samples sent run ahead of what the server received, a latency that grows per loop
            piece = audio[np.arange(i, min(i + block, total)) % audio.size]
            await ws.send_bytes(encode_pcm(piece))
            clock.sent(i + piece.size)
        if not ws.closed:
            await ws.send_str(json.dumps({"type": "end"}))
        await asyncio.wait_for(receiver, 120)
    current().rss_mb = current_rss_bytes(server_pid) / 1e6 if windows else 0.0
    for w in windows:
        if w.latencies:
            ms = np.asarray(w.latencies) * 1000
            w.chunks, w.p50_ms, w.p95_ms, w.max_ms = ms.size, *(round(float(v), 1) for v in
                                                                (np.median(ms), np.percentile(ms, 95), ms.max()))
    return windows


def cmd_soak(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.window <= 0:
        raise StreamASRError("--duration and --window must be positive seconds")
    cfg = ModelConfig.load(Path(args.model))
    cfg.encoder.mode(args.latency)
    rate = cfg.frontend.sample_rate
    audio = looped_speech(args.speech_dir, rate)
    serve_args = ["--warmup-latency", str(args.latency)] + (["--threads", str(args.threads)] if args.threads else [])
    with server_process(args.model, serve_args) as (server, port):
        rss0 = current_rss_bytes(server.pid) / 1e6
        url = f"ws://127.0.0.1:{port}/v1/stream?latency={args.latency}&every_chunk=1"
        print(f"soak: model {cfg.model_id} ({cfg.quantization.get('method')}), one stream at {args.latency} ms for "
              f"{args.duration:g} s of looped speech ({audio.size / rate:.0f} s loop), server RSS at start "
              f"{rss0:.0f} MB", flush=True)
        windows = asyncio.run(soak_client(url, audio, args.duration, int(rate * args.block_ms / 1000), rate,
                                          args.window, server.pid))
    print(f"{'window s':>9} {'chunks':>7} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'finals':>7} {'errors':>7} "
          f"{'RSS MB':>7}")
    for w in windows:
        print(f"{w.start_s:>9.0f} {w.chunks:>7} {w.p50_ms:>7} {w.p95_ms:>7} {w.max_ms:>7} {w.finals:>7} "
              f"{w.errors:>7} {w.rss_mb:>7.0f}")
    first, last = windows[0], windows[-1]
    print(f"last window against the first: p50 {last.p50_ms} / {first.p50_ms} ms, RSS {last.rss_mb:.0f} / "
          f"{first.rss_mb:.0f} MB; finals in every window: {all(w.finals for w in windows)}; "
          f"errors: {sum(w.errors for w in windows)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": cfg.model_id, "latency_ms": args.latency,
                                               "rss_start_mb": rss0, "windows": [
                                                   {k: v for k, v in asdict(w).items() if k != "latencies"}
                                                   for w in windows]}, indent=2) + "\n")
    return 0


def add_parser(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("soak", help="one stream for a long time: memory, latency drift, finals",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--duration", type=float, default=3600.0, help="seconds of streaming (default: %(default)s)")
    p.add_argument("--window", type=float, default=300.0, help="seconds per reported window (default: %(default)s)")
    p.add_argument("--latency", type=int, default=160)
    p.add_argument("--block-ms", type=int, default=80, help="audio per WebSocket frame")
    p.add_argument("--threads", type=int, default=None, help="server ONNX Runtime threads")
    p.add_argument("--speech-dir", default=None, help="folder with manifest.jsonl (default: $STREAMASR_SPEECH_DIR, "
                   "else the speech bundled with streamasr)")
    p.add_argument("--json", default=None, help="also write the windows to this JSON file")
    p.set_defaults(func=cmd_soak)
