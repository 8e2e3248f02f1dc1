"""`streamasr bench serve`: N concurrent real-time WebSocket clients against a server on localhost.

The server runs as a separate process (`streamasr serve`), so its CPU time and peak RSS are its own. For
each N, N clients replay real speech (`--speech-dir`, $STREAMASR_SPEECH_DIR or the bundled clips) at real-time pace, starts spread over one chunk,
with `every_chunk=1` so that the server answers every encoder chunk with a partial carrying `audio_s`
(the audio that chunk covered). Per-chunk latency = arrival of that partial - the moment the client sent
the block holding the chunk's last sample. Server RTFx = audio seconds / compute seconds (from /metrics).

By default the server runs with `--max-load 1` (every client is served, so the table shows what N streams
cost) and the clients start within one chunk of each other. `--join-every S` starts client k at k*S seconds
instead and `--max-load` sets the server's admission threshold: the row then also counts the clients the
server refused (HTTP 503 before the upgrade) as it filled up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np

from streamasr.errors import StreamASRError
from streamasr.eval.speech import benchmark_speech
from streamasr.model_config import ModelConfig
from streamasr.serve.client import encode_pcm


def add_parser(bench_sub):
    p = bench_sub.add_parser("serve", help="load test: N concurrent real-time WebSocket streams")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--streams", default="1,4,16,32", help="comma-separated concurrent stream counts")
    p.add_argument("--latency", type=int, default=160)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of audio per stream and N")
    p.add_argument("--block-ms", type=int, default=80, help="audio per WebSocket frame")
    p.add_argument("--threads", type=int, default=None, help="server ONNX Runtime threads")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--batch-wait", type=float, default=0.25, help="the server's --batch-wait")
    p.add_argument("--busy-batch-wait", type=float, default=None, help="the server's --busy-batch-wait")
    p.add_argument("--warmup-batches", type=int, default=None, help="the server's --warmup-batches")
    p.add_argument("--max-load", type=float, default=1.0,
                   help="the server's --max-load (default 1: admission by load off, every client is served)")
    p.add_argument("--join-every", type=float, default=0.0, metavar="S",
                   help="start client k at k*S seconds (default 0: all within one chunk)")
    p.add_argument("--speech-dir", default=None, help="folder with manifest.jsonl (default: $STREAMASR_SPEECH_DIR, else the speech bundled with streamasr)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench_serve)
    return p


def _speech(dir_arg) -> list[np.ndarray]:
    return list(benchmark_speech(directory=dir_arg).values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(model: str | Path, serve_args: list[str]) -> Iterator[tuple[subprocess.Popen, int]]:
    """`streamasr serve` on a free local port as its own process (so that its CPU and memory are its own),
    once /health answers: (process, port); terminated on exit."""
    port = _free_port()
    cmd = [sys.executable, "-m", "streamasr", "serve", "--model", str(model), "--port", str(port), "--allow-random",
           "--idle-timeout-s", "120", *serve_args]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise StreamASRError(f"the server exited: {server.stderr.read().decode()[-500:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise StreamASRError("the server did not come up")
        yield server, port
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def current_rss_bytes(pid: int) -> int:
    """A process's resident set size now (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _proc_stats(pid: int) -> tuple[float, int]:
    """(cpu seconds, peak RSS bytes) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cpu, peak


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


class ChunkClock:
    """Per-chunk latency as a client sees it: each partial's `audio_s` (the audio its chunk covered) is matched
    to the send time of the first block that completed that much audio (blocks are sent in order)."""

    def __init__(self, rate: int):
        self.rate = rate
        self._sends: list[tuple[int, float]] = []  # (samples sent after this block, time)
        self._next = 0

    def sent(self, samples_total: int) -> None:
        self._sends.append((samples_total, time.perf_counter()))

    def latency(self, audio_s: float) -> float | None:
        """Seconds from the send of the block that completed `audio_s` to now; None if not sent yet."""
        need = int(audio_s * self.rate)
        while self._next < len(self._sends) and self._sends[self._next][0] < need:
            self._next += 1
        if self._next < len(self._sends):
            return time.perf_counter() - self._sends[self._next][1]
        return None


async def _client(url: str, samples: np.ndarray, block: int, rate: int, start_delay: float, lat: list[float]):
    """One real-time client; returns (error messages, whether the server refused the stream)."""
    await asyncio.sleep(start_delay)
    clock = ChunkClock(rate)
    errors = []
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 503:  # full or at capacity: refused before the upgrade
                return [], True
            raise
        async with ws:

            async def receive():
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    ev = json.loads(msg.data)
                    if ev["type"] == "partial" and "audio_s" in ev:
                        seconds = clock.latency(ev["audio_s"])
                        if seconds is not None:
                            lat.append(seconds)
                    elif ev["type"] == "error":
                        errors.append(ev["message"])

            rx = asyncio.create_task(receive())
            t0 = time.perf_counter()
            try:
                for i in range(0, samples.size, block):
                    wait = t0 + i / rate - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if ws.closed:
                        break
                    await ws.send_bytes(encode_pcm(samples[i : i + block]))
                    clock.sent(min(i + block, samples.size))
                if not ws.closed:
                    await ws.send_str(json.dumps({"type": "end"}))
            except (ConnectionError, RuntimeError):  # the server closed the stream while we were sending
                pass
            await asyncio.wait_for(rx, 120)
    return errors, False


async def _run_n(url: str, speech: list[np.ndarray], n: int, duration: float, block: int, rate: int,
                 chunk_s: float, join_every: float = 0.0):
    rng = np.random.default_rng(n)
    lat: list[float] = []
    tasks = []
    for k in range(n):
        x = speech[k % len(speech)]
        reps = int(np.ceil(duration * rate / x.size))
        off = int(rng.integers(0, x.size))
        audio = np.roll(np.tile(x, reps + 1), -off)[: int(duration * rate)]
        tasks.append(_client(url, audio, block, rate, k * join_every + float(rng.uniform(0, chunk_s)), lat))
    results = await asyncio.gather(*tasks)
    return lat, [e for errs, _ in results for e in errs], sum(refused for _, refused in results)


def cmd_bench_serve(args) -> int:
    try:
        counts = [int(v) for v in args.streams.split(",") if v.strip()]
    except ValueError:
        raise StreamASRError(f"--streams must be comma-separated integers, got {args.streams!r}") from None
    if not counts or min(counts) < 1:
        raise StreamASRError("--streams needs positive counts")
    if not 0 < args.max_load <= 1:
        raise StreamASRError(f"--max-load is a fraction in (0, 1], got {args.max_load}")
    if args.join_every < 0:
        raise StreamASRError("--join-every must be 0 or more seconds")
    cfg = ModelConfig.load(Path(args.model))
    cfg.encoder.mode(args.latency)
    rate = cfg.frontend.sample_rate
    speech = _speech(args.speech_dir)
    # --max-load 1 by default: no admission by load, so that every N is served and the table shows its cost
    serve_args = ["--max-streams", str(max(counts)), "--max-load", f"{args.max_load:g}", "--max-batch",
                  str(args.max_batch), "--batch-wait", str(args.batch_wait), "--warmup-latency", str(args.latency)]
    if args.busy_batch_wait is not None:
        serve_args += ["--busy-batch-wait", str(args.busy_batch_wait)]
    if args.warmup_batches is not None:
        serve_args += ["--warmup-batches", str(args.warmup_batches)]
    if args.threads:
        serve_args += ["--threads", str(args.threads)]
    rows = []
    with server_process(args.model, serve_args) as (server, port):
        base = f"http://127.0.0.1:{port}"
        print(f"model {cfg.model_id} ({cfg.quantization.get('method')}), latency {args.latency} ms, "
              f"{args.duration:g} s of audio per stream, {os.cpu_count()} cores, batch wait {args.batch_wait:g} "
              + (f"(up to {args.busy_batch_wait:g} under load) " if args.busy_batch_wait is not None else "")
              + f"of a chunk, max load {args.max_load:g}"
              + (f", a client joining every {args.join_every:g} s" if args.join_every else ""), flush=True)
        print(f"{'N':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'RTFx':>7} {'CPU %':>6} {'RSS MB':>7} "
              f"{'mean batch':>10} {'errors':>6} {'refused':>7} {'client CPU %':>12} {'busy %':>6} {'enc %':>6}",
              flush=True)
        url = f"ws://127.0.0.1:{port}/v1/stream?latency={args.latency}&every_chunk=1"
        for n in counts:
            m0 = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
            cpu0, _ = _proc_stats(server.pid)
            own0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            lat, errors, refused = asyncio.run(_run_n(url, speech, n, args.duration, int(rate * args.block_ms / 1000),
                                                      rate, args.latency / 1000, args.join_every))
            wall = time.perf_counter() - t0
            own1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu1, peak = _proc_stats(server.pid)
            # the clients share the cores with the server: their CPU is what the server could not use
            clients_cpu = (own1.ru_utime - own0.ru_utime) + (own1.ru_stime - own0.ru_stime)
            m1 = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
            audio = _metric(m1, "streamasr_audio_seconds_total") - _metric(m0, "streamasr_audio_seconds_total")
            busy = _metric(m1, "streamasr_compute_seconds_total") - _metric(m0, "streamasr_compute_seconds_total")
            steps = _metric(m1, "streamasr_encoder_batch_size_count") - _metric(m0, "streamasr_encoder_batch_size_count")
            batched = _metric(m1, "streamasr_encoder_batch_size_sum") - _metric(m0, "streamasr_encoder_batch_size_sum")
            enc_s = _metric(m1, "streamasr_encoder_seconds_total") - _metric(m0, "streamasr_encoder_seconds_total")
            p50, p95, p99 = (np.percentile(lat, [50, 95, 99]) * 1000) if lat else (float("nan"),) * 3
            row = {"streams": n, "p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "p99_ms": round(p99, 1),
                   "rtfx": round(audio / busy, 1) if busy else None, "cpu_percent": round(100 * (cpu1 - cpu0) / wall),
                   "clients_cpu_percent": round(100 * clients_cpu / wall, 1),
                   "encoder_share": round(enc_s / busy, 3) if busy else None,  # of the scheduler's compute
                   "compute_share": round(busy / wall, 3),  # scheduler busy time / wall time
                   "peak_rss_mb": round(peak / 1e6), "mean_batch": round(batched / steps, 2) if steps else None,
                   "chunks": len(lat), "errors": len(errors), "refused": refused}
            rows.append(row)
            print(f"{n:>4} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['p99_ms']:>8} {row['rtfx'] or 0:>7} "
                  f"{row['cpu_percent']:>6} {row['peak_rss_mb']:>7} {row['mean_batch'] or 0:>10} {len(errors):>6} "
                  f"{refused:>7} "
                  f"{row['clients_cpu_percent']:>12} {100 * row['compute_share']:>6.0f} "
                  f"{100 * (row['encoder_share'] or 0):>6.0f}",
                  flush=True)
            if errors:
                print(f"     first error: {errors[0]}", flush=True)
        ok = [r["streams"] for r in rows if r["p95_ms"] < args.latency and not r["errors"] and not r["refused"]]
        print(f"largest N with p95 < {args.latency} ms: {max(ok) if ok else 'none'}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"model": cfg.model_id, "latency_ms": args.latency,
                                                   "rows": rows}, indent=2))
    return 0
