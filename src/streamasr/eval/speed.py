"""`streamasr bench speed`: throughput and latency of the real streaming path (Model/Stream API).

For every model directory and latency mode: one stream fed the audio block by block (`--block-ms`) after a
warm-up stream, timing every `accept()` and the final `finish()` call.

- RTFx: audio seconds / processing seconds (front end, encoder and decoder, all `accept` and `finish` calls).
- per-chunk latency p50/p95/max: duration of each `accept()` call that ran at least one encoder step.
- enc / dec ms per chunk: the encoder's and the decoder's (prediction + joint) share of that time.
- first partial: time from the first audio sample to the first text, and final: time from the end of the
  audio to the final result, both on a simulated real-time clock: block i arrives when its last sample has
  been spoken, processing starts when it has arrived and the previous block is done, and takes the
  measured time. They include the wait for a full chunk, so they are at least the chunk's audio duration.
- load time, size on disk, resident memory: RSS added by loading the model, and the largest RSS seen
  while streaming with it (with `--compare` every model is loaded in the same process, so that number
  includes the models loaded before it; run a model alone for its own peak).

With `--compare`, all models are loaded in one process and run interleaved (model A, B, C at one latency,
then the next latency; `--repeats` rounds, median kept), and the table gives each one's ratio against the
first, so a comparison stays valid on a machine whose speed drifts.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from streamasr.audio import read_audio
from streamasr.errors import StreamASRError
from streamasr.eval.hotword_cost import format_cost, measure
from streamasr.eval.memory import app_memory, peer_memory
from streamasr.eval.nemo_baseline import load_nemo_baseline, nemo_once
from streamasr.eval.sherpa_peer import (
    PEER_PREFIX,
    PeerModel,
    PeerRun,
    load_peer,
    sherpa_once,
    token_agreement,
)
from streamasr.eval.speech import read_speech
from streamasr.eval.speech import speech_dir as speech_dir_of
from streamasr.eval.weight_floor import format_floor, weight_floor
from streamasr.model_config import ModelConfig, directory_size
from streamasr.runtime import Model
from streamasr.runtime.backend import encoder_providers, session_options

DEFAULT_LATENCIES = "80,160,560,1120"


# ---------------------------------------------------------------- memory
def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------- audio
def speech_audio(seconds: float, sample_rate: int, speech_dir: Path | None = None) -> tuple[np.ndarray, str]:
    """`seconds` of real speech: the utterances of `speech_dir` ($STREAMASR_SPEECH_DIR, else the speech bundled
    with streamasr) concatenated, looped as needed."""
    directory = speech_dir_of(speech_dir)
    joined = np.concatenate(list(read_speech(directory, sample_rate).values()))
    n = int(seconds * sample_rate)
    return np.tile(joined, -(-n // joined.size))[:n].astype(np.float32), f"speech ({directory})"


# ---------------------------------------------------------------- timing
class _TimedBackend:
    """Wraps a Backend and accumulates the time spent in each network (for one stream)."""

    def __init__(self, inner):
        self.inner = inner
        self.encode_s = 0.0
        self.decode_s = 0.0

    def encode(self, *args):
        t0 = time.perf_counter()
        out = self.inner.encode(*args)
        self.encode_s += time.perf_counter() - t0
        return out

    def predict(self, *args):
        t0 = time.perf_counter()
        out = self.inner.predict(*args)
        self.decode_s += time.perf_counter() - t0
        return out

    def joint(self, *args):
        t0 = time.perf_counter()
        out = self.inner.joint(*args)
        self.decode_s += time.perf_counter() - t0
        return out

    def joint_logits(self, *args):
        t0 = time.perf_counter()
        out = self.inner.joint_logits(*args)
        self.decode_s += time.perf_counter() - t0
        return out


@dataclass
class RunStats:
    audio_s: float
    processing_s: float
    chunk_s: list[float]  # accept() calls that ran an encoder step
    encode_s: float
    decode_s: float
    steps: int
    first_partial_s: float | None
    final_s: float
    finish_call_s: float
    tokens: int
    peak_rss: int
    token_ids: list[int] = field(default_factory=list)


def stream_once(model, samples: np.ndarray, latency_ms: int, block: int) -> RunStats:
    """One timed stream over `samples`, fed `block` samples per accept()."""
    sr = model.sample_rate
    timed = _TimedBackend(model.backend)
    stream = model.with_backend(timed).stream(latency_ms)
    chunk_s: list[float] = []
    processing = 0.0
    clock = 0.0  # simulated wall clock: when the previous block's processing ended
    first_partial = None
    peak = current_rss_bytes()
    for start in range(0, samples.size, block):
        piece = samples[start : start + block]
        steps = stream.steps
        t0 = time.perf_counter()
        text = stream.accept(piece)
        dt = time.perf_counter() - t0
        processing += dt
        clock = max(clock, (start + piece.size) / sr) + dt
        if stream.steps != steps:
            chunk_s.append(dt)
            peak = max(peak, current_rss_bytes())
        if text and first_partial is None:
            first_partial = clock
    t0 = time.perf_counter()
    result = stream.finish()
    finish_dt = time.perf_counter() - t0
    processing += finish_dt
    audio_end = samples.size / sr
    clock = max(clock, audio_end) + finish_dt
    if first_partial is None and result.text:
        first_partial = clock
    return RunStats(audio_s=audio_end, processing_s=processing, chunk_s=chunk_s, encode_s=timed.encode_s,
                    decode_s=timed.decode_s, steps=stream.steps, first_partial_s=first_partial,
                    final_s=clock - audio_end, finish_call_s=finish_dt, tokens=len(result.token_ids),
                    peak_rss=max(peak, current_rss_bytes()), token_ids=list(result.token_ids))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


@dataclass
class Row:
    model: str
    directory: str
    quantization: str
    latency_ms: int
    rtfx: float
    chunk_p50_ms: float
    chunk_p95_ms: float
    chunk_max_ms: float
    encoder_ms_per_chunk: float
    decoder_ms_per_chunk: float
    first_partial_ms: float | None
    final_ms: float
    chunks: int
    tokens: int
    audio_s: float
    processing_s: float
    load_s: float
    size_bytes: int
    load_rss_bytes: int
    stream_peak_rss_bytes: int
    rounds: int
    rtfx_rounds: list[float] = field(default_factory=list)
    ratio_rtfx: float | None = None
    ratio_chunk_p50: float | None = None
    ratio_size: float | None = None
    app_peak_rss_bytes: int | None = None  # the application alone, in a clean child process
    token_ids: list[int] = field(default_factory=list)  # the median run's


def summarize(label: str, loaded: "_Loaded", latency: int, runs: list[RunStats]) -> Row:
    rtfx = [r.audio_s / r.processing_s for r in runs]
    best = sorted(runs, key=lambda r: r.audio_s / r.processing_s)[len(runs) // 2]  # the median run
    chunks = [c for r in runs for c in r.chunk_s]
    steps = max(best.steps, 1)
    fp = [r.first_partial_s for r in runs if r.first_partial_s is not None]
    return Row(
        model=label, directory=str(loaded.directory), quantization=loaded.quant, latency_ms=latency,
        rtfx=statistics.median(rtfx), chunk_p50_ms=1e3 * _pct(chunks, 50), chunk_p95_ms=1e3 * _pct(chunks, 95),
        chunk_max_ms=1e3 * max(chunks, default=float("nan")),
        encoder_ms_per_chunk=1e3 * best.encode_s / steps, decoder_ms_per_chunk=1e3 * best.decode_s / steps,
        first_partial_ms=1e3 * statistics.median(fp) if fp else None,
        final_ms=1e3 * statistics.median(r.final_s for r in runs), chunks=best.steps, tokens=best.tokens,
        audio_s=best.audio_s, processing_s=best.processing_s, load_s=loaded.load_s, size_bytes=loaded.size_bytes,
        load_rss_bytes=loaded.load_rss, stream_peak_rss_bytes=max(r.peak_rss for r in runs), rounds=len(runs),
        rtfx_rounds=[round(x, 3) for x in rtfx], token_ids=best.token_ids,
    )


@dataclass
class _Loaded:
    directory: Path
    model: object
    load_s: float
    load_rss: int
    size_bytes: int
    quant: str


def load_model(directory: Path, threads: int, provider: str = "cpu") -> _Loaded:
    directory = Path(directory)
    rss0 = current_rss_bytes()
    t0 = time.perf_counter()
    model = Model.load_dir(directory, threads=threads, providers=encoder_providers(provider, threads))
    load_s = time.perf_counter() - t0
    q = model.config.quantization
    quant = q.get("method", "fp32")
    if q.get("block_size"):
        quant += f" b{q['block_size']}"
    if provider != "cpu":
        quant += f" [{provider}]"
    return _Loaded(directory, model, load_s, current_rss_bytes() - rss0, directory_size(directory), quant)


def _labels(loaded: list[_Loaded]) -> list[str]:
    names = [d.directory.name or str(d.directory) for d in loaded]
    if len(set(names)) < len(names):
        names = [str(d.directory) for d in loaded]
    if len(set(names)) < len(names):  # one directory under several providers
        names = [f"{n} {d.quant.split(' [')[-1].rstrip(']') if ' [' in d.quant else 'cpu'}"
                 for n, d in zip(names, loaded)]
    return names


def _nemo_row(runs: list, latency: int, label: str) -> Row:
    """A table row for NeMo's PyTorch streaming: throughput only (its loop is not fed block by block)."""
    rtfx = [r.audio_s / r.processing_s for r in runs]
    best = sorted(runs, key=lambda r: r.audio_s / r.processing_s)[len(runs) // 2]
    return Row(model=label, directory="", quantization="fp32 (PyTorch)", latency_ms=latency,
               rtfx=statistics.median(rtfx), chunk_p50_ms=None, chunk_p95_ms=None, chunk_max_ms=None,
               encoder_ms_per_chunk=1e3 * best.processing_s / max(best.steps, 1), decoder_ms_per_chunk=None,
               first_partial_ms=None, final_ms=None, chunks=best.steps, tokens=best.tokens, audio_s=best.audio_s,
               processing_s=best.processing_s, load_s=None, size_bytes=0, load_rss_bytes=0,
               stream_peak_rss_bytes=peak_rss_bytes(), rounds=len(runs), rtfx_rounds=[round(x, 3) for x in rtfx],
               token_ids=best.token_ids)


def _peer_row(runs: list[PeerRun], peer: PeerModel, label: str) -> Row:
    """A table row for a sherpa-onnx mode, timed block by block like our streams."""
    rtfx = [r.audio_s / r.processing_s for r in runs]
    best = sorted(runs, key=lambda r: r.audio_s / r.processing_s)[len(runs) // 2]
    chunks = [c for r in runs for c in r.chunk_s]
    fp = [r.first_partial_s for r in runs if r.first_partial_s is not None]
    return Row(model=label, directory=str(peer.directory), quantization=f"{peer.quantization} (sherpa-onnx)",
               latency_ms=peer.latency_ms, rtfx=statistics.median(rtfx), chunk_p50_ms=1e3 * _pct(chunks, 50),
               chunk_p95_ms=1e3 * _pct(chunks, 95), chunk_max_ms=1e3 * max(chunks, default=float("nan")),
               encoder_ms_per_chunk=None, decoder_ms_per_chunk=None,
               first_partial_ms=1e3 * statistics.median(fp) if fp else None,
               final_ms=1e3 * statistics.median(r.final_s for r in runs), chunks=best.steps,
               tokens=len(best.token_ids), audio_s=best.audio_s, processing_s=best.processing_s, load_s=peer.load_s,
               size_bytes=peer.size_bytes, load_rss_bytes=0, stream_peak_rss_bytes=peak_rss_bytes(),
               rounds=len(runs), rtfx_rounds=[round(x, 3) for x in rtfx], token_ids=best.token_ids)


def run_bench(directories: list[Path], latencies: list[int], threads: int, samples: np.ndarray,
              block_ms: float = 20.0, warmup_s: float = 3.0, repeats: int = 1, progress=None,
              nemo=None, nemo_label: str = "NeMo PyTorch", providers: tuple[str, ...] = ("cpu",),
              peers: tuple[Path, ...] = ()) -> list[Row]:
    """Rows per latency: every directory under every provider, then every sherpa-onnx export in `peers`
    (`sherpa_peer.export_sherpa` folders), then (with `nemo`, a loaded NeMo model) NeMo's own streaming,
    all interleaved round by round."""
    loaded = [load_model(d, threads, p) for d in directories for p in providers]
    labels = _labels(loaded)
    for lm in loaded:
        for lat in latencies:
            lm.model.config.encoder.mode(lat)  # clear error for a mode a model lacks, before any timing
    sr = loaded[0].model.sample_rate
    block = max(1, int(sr * block_ms / 1000))
    warm = samples[: int(sr * warmup_s)]
    runs: dict[tuple[int, int], list[RunStats]] = {}
    total = len(latencies) * (len(loaded) + len(peers) + (nemo is not None)) * repeats
    peer_labels = [f"sherpa-onnx {Path(d).name}" for d in peers]
    peer_runs: dict[tuple[int, int], list[PeerRun]] = {}
    peer_models: dict[tuple[int, int], PeerModel] = {}
    done = 0
    nemo_runs: dict[int, list] = {}
    for lat in latencies:
        right_context = loaded[0].model.config.encoder.mode(lat).right_context
        for i, lm in enumerate(loaded):  # warm-up: first runs allocate arenas and tune kernels
            stream_once(lm.model, warm, lat, block)
        for j, d in enumerate(peers):
            peer_models[(j, lat)] = load_peer(Path(d), lat, threads)
            sherpa_once(peer_models[(j, lat)], warm, block, sr)
        if nemo is not None:
            nemo_once(nemo, warm, right_context, sr)
        for _ in range(repeats):
            for i, lm in enumerate(loaded):  # interleaved: every model once per round
                stats = stream_once(lm.model, samples, lat, block)
                runs.setdefault((i, lat), []).append(stats)
                done += 1
                if progress:
                    progress(done, total, f"{labels[i]} {lat} ms: RTFx {stats.audio_s / stats.processing_s:.2f}")
            for j in range(len(peers)):
                peer_run = sherpa_once(peer_models[(j, lat)], samples, block, sr)
                peer_runs.setdefault((j, lat), []).append(peer_run)
                done += 1
                if progress:
                    progress(done, total, f"{peer_labels[j]} {lat} ms: RTFx "
                                          f"{peer_run.audio_s / peer_run.processing_s:.2f}")
            if nemo is not None:
                run = nemo_once(nemo, samples, right_context, sr)
                nemo_runs.setdefault(lat, []).append(run)
                done += 1
                if progress:
                    progress(done, total, f"{nemo_label} {lat} ms: RTFx {run.audio_s / run.processing_s:.2f}")
    rows = []
    for lat in latencies:
        first = None
        for i, lm in enumerate(loaded):
            row = summarize(labels[i], lm, lat, runs[(i, lat)])
            if first is None:
                first = row
            row.ratio_rtfx = row.rtfx / first.rtfx if first.rtfx else None
            row.ratio_chunk_p50 = row.chunk_p50_ms / first.chunk_p50_ms if first.chunk_p50_ms else None
            row.ratio_size = row.size_bytes / first.size_bytes if first.size_bytes else None
            rows.append(row)
        for j in range(len(peers)):
            row = _peer_row(peer_runs[(j, lat)], peer_models[(j, lat)], peer_labels[j])
            row.ratio_rtfx = row.rtfx / first.rtfx if first.rtfx else None
            row.ratio_chunk_p50 = row.chunk_p50_ms / first.chunk_p50_ms if first.chunk_p50_ms else None
            row.ratio_size = row.size_bytes / first.size_bytes if first.size_bytes else None
            rows.append(row)
        if nemo is not None:
            row = _nemo_row(nemo_runs[lat], lat, nemo_label)
            row.ratio_rtfx = row.rtfx / first.rtfx if first.rtfx else None
            rows.append(row)
    return rows


def format_nemo_ratios(rows: list[Row], nemo_label: str) -> str:
    """Each model's throughput as a multiple of NeMo's, per latency (both from the same run)."""
    lines = []
    for lat in sorted({r.latency_ms for r in rows}):
        at = [r for r in rows if r.latency_ms == lat]
        nemo = next((r for r in at if r.model == nemo_label), None)
        if nemo is None or not nemo.rtfx:
            continue
        parts = [f"{r.model} ({r.quantization}) {r.rtfx / nemo.rtfx:.1f}x" for r in at if r is not nemo]
        lines.append(f"{lat} ms: NeMo RTFx {nemo.rtfx:.2f}; " + "; ".join(parts))
    return "throughput against NeMo's PyTorch streaming, same run:\n" + "\n".join(lines)


def profile_encoder(directory: Path, latency_ms: int, threads: int, samples: np.ndarray, out_dir: Path,
                    block_ms: float = 20.0) -> list[tuple[str, int, float, float]]:
    """Stream `samples` once with ONNX Runtime's profiler on the encoder session (after a warm-up run) and
    return (op type, calls, total ms, share of encoder kernel time) rows, largest first. The raw trace
    (chrome://tracing format) is left in `out_dir`."""

    model = Model.load_dir(Path(directory), threads=threads)
    block = max(1, int(model.sample_rate * block_ms / 1000))
    stream_once(model, samples[: model.sample_rate * 3], latency_ms, block)  # warm-up, not profiled
    opts = session_options(threads)
    opts.enable_profiling = True
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opts.profile_file_prefix = str(out_dir / f"{Path(directory).name}-{latency_ms}ms")
    enc_file = Path(directory) / model.config.files.get("encoder", "encoder.onnx")
    backend = model.backend.with_encoder(enc_file, opts)
    profiled = model.with_backend(backend)
    stream_once(profiled, samples[: model.sample_rate * 3], latency_ms, block)  # warm the profiled session
    stream_once(profiled, samples, latency_ms, block)
    trace = json.loads(Path(backend.sessions["encoder"].end_profiling()).read_text())
    per_op: dict[str, list[float]] = {}
    for ev in trace:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            per_op.setdefault(op, []).append(ev.get("dur", 0) / 1e3)
    total = sum(sum(v) for v in per_op.values()) or 1.0
    rows = [(op, len(v), sum(v), sum(v) / total) for op, v in per_op.items()]
    return sorted(rows, key=lambda r: -r[2])


def format_profile(rows: list[tuple[str, int, float, float]], label: str) -> str:
    lines = [f"encoder kernel time by op type, {label}", "", "| op | calls | total ms | share |", "|---|---|---|---|"]
    for op, calls, ms, share in rows:
        lines.append(f"| {op} | {calls} | {ms:.1f} | {100 * share:.1f} % |")
    return "\n".join(lines)


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def format_table(rows: list[Row], compare: bool) -> str:
    head = ["model", "quant", "latency", "RTFx", "chunk p50 ms", "p95", "max", "enc ms/chunk", "dec ms/chunk",
            "first partial ms", "final ms", "load s", "disk MB", "load RSS MB", "peak RSS MB", "app peak RSS MB"]
    if compare:
        head += ["RTFx vs first", "chunk p50 vs first", "size vs first"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.model, r.quantization, f"{r.latency_ms} ms", _f(r.rtfx, ".2f"), _f(r.chunk_p50_ms),
                 _f(r.chunk_p95_ms), _f(r.chunk_max_ms), _f(r.encoder_ms_per_chunk), _f(r.decoder_ms_per_chunk),
                 _f(r.first_partial_ms, ".0f"), _f(r.final_ms, ".0f"), _f(r.load_s, ".2f"),
                 _f(r.size_bytes / 1e6), _f(r.load_rss_bytes / 1e6, ".0f"), _f(r.stream_peak_rss_bytes / 1e6, ".0f"),
                 _f(r.app_peak_rss_bytes / 1e6 if r.app_peak_rss_bytes else None, ".0f")]
        if compare:
            cells += [_f(r.ratio_rtfx, ".2f") + "x", _f(r.ratio_chunk_p50, ".2f") + "x", _f(r.ratio_size, ".2f") + "x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_app_peaks(rows: list[Row], samples: np.ndarray, threads: int, block_ms: float) -> None:
    """Fill each row's `app_peak_rss_bytes` (and, for our models, `load_rss_bytes`): its model alone in a
    clean child process (eval/memory.py), streaming `samples` at the row's latency. The bench's own process
    holds every model, its harness and often torch, so its RSS is not what an application pays, and its RSS
    delta across a load also counts what the load's heap trimming hands back of memory others freed before.
    NeMo rows get none."""
    for row in rows:
        if row.quantization.endswith("(sherpa-onnx)"):
            row.app_peak_rss_bytes = peer_memory(Path(row.directory), samples, row.latency_ms, threads,
                                                 block_ms)["peak_rss_bytes"]
        elif row.directory and "[" not in row.quantization:  # our model on the CPU provider
            result = app_memory(Path(row.directory), samples, [row.latency_ms], threads, block_ms)
            row.app_peak_rss_bytes = result["peak_rss_bytes"]
            stages = {s["stage"]: s for s in result["stages"]}
            row.load_rss_bytes = stages["load"]["rss"] - stages["audio"]["rss"]


def format_agreement(rows: list[Row], nemo_label: str) -> str:
    """Every engine's tokens against NeMo's own streaming tokens on the same audio, per latency."""
    lines = ["| engine | latency | tokens | NeMo tokens | common prefix | token edits / NeMo tokens | identical |",
             "|---|---|---|---|---|---|---|"]
    for lat in sorted({r.latency_ms for r in rows}):
        at = [r for r in rows if r.latency_ms == lat]
        nemo = next((r for r in at if r.model == nemo_label), None)
        if nemo is None:
            continue
        for r in at:
            if r is nemo:
                continue
            a = token_agreement(r.token_ids, nemo.token_ids)
            lines.append(f"| {r.model} ({r.quantization}) | {lat} ms | {a.tokens} | {a.reference_tokens} | "
                         f"{a.common_prefix} | {100 * a.error_rate:.1f} % | {'yes' if a.identical else 'no'} |")
    return "token agreement with NeMo's streaming output, same audio:\n\n" + "\n".join(lines)


def format_peer_ratios(rows: list[Row]) -> str:
    """The first model against each sherpa-onnx row at the same latency: throughput, latency, memory, size."""
    lines = []
    for lat in sorted({r.latency_ms for r in rows}):
        at = [r for r in rows if r.latency_ms == lat]
        ours = at[0]
        for peer in (r for r in at if r.quantization.endswith("(sherpa-onnx)")):
            parts = [f"RTFx {ours.rtfx / peer.rtfx:.2f}x", f"chunk p50 {ours.chunk_p50_ms / peer.chunk_p50_ms:.2f}x",
                     f"disk {ours.size_bytes / peer.size_bytes:.2f}x"]
            if ours.app_peak_rss_bytes and peer.app_peak_rss_bytes:
                parts.append(f"app peak RSS {ours.app_peak_rss_bytes / peer.app_peak_rss_bytes:.2f}x")
            lines.append(f"{lat} ms: {ours.model} / {peer.model}: " + ", ".join(parts))
    return "against sherpa-onnx, same run (ours / theirs):\n" + "\n".join(lines)


def _progress(done: int, total: int, what: str) -> None:
    width = 24
    filled = int(width * done / total)
    bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what}"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + bar + "\x1b[K" + ("\n" if done == total else ""))
    else:
        sys.stderr.write(bar + "\n")
    sys.stderr.flush()


def cmd_speed(args) -> int:
    import onnxruntime

    try:
        latencies = [int(x) for x in args.latency.split(",") if x.strip()]
    except ValueError:
        raise StreamASRError(f"--latency wants comma-separated milliseconds, got {args.latency!r}") from None
    if not latencies:
        raise StreamASRError("--latency is empty")
    dirs = [Path(args.model), *[Path(d) for d in args.compare]]
    for d in dirs:
        if not d.is_dir():
            raise StreamASRError(f"no such model directory: {d}")
    if args.repeats < 1 or args.block_ms <= 0 or args.seconds <= 0:
        raise StreamASRError("--repeats, --block-ms and --seconds must be positive")
    peers = []
    for spec in args.peer:
        if not spec.startswith(PEER_PREFIX) or not Path(spec[len(PEER_PREFIX):]).is_dir():
            raise StreamASRError(f"--peer wants {PEER_PREFIX}DIR with DIR an export-sherpa folder, got {spec!r}")
        peers.append(Path(spec[len(PEER_PREFIX):]))
    if args.hotwords < 0:
        raise StreamASRError("--hotwords must be a number of phrases >= 0")

    sr = ModelConfig.load(dirs[0]).frontend.sample_rate
    if args.audio:
        samples, source = read_audio(args.audio, sr), args.audio
    else:
        samples, source = speech_audio(args.seconds, sr)
    t0 = time.perf_counter()
    nemo = None
    if args.nemo:
        t_nemo = time.perf_counter()
        nemo = load_nemo_baseline(args.nemo, args.threads)
        print(f"NeMo baseline {args.nemo} ready in {time.perf_counter() - t_nemo:.0f} s", file=sys.stderr)
    nemo_label = f"NeMo PyTorch ({args.nemo})" if args.nemo else "NeMo PyTorch"
    rows = run_bench(dirs, latencies, args.threads, samples, block_ms=args.block_ms, warmup_s=args.warmup,
                     repeats=args.repeats, progress=_progress, nemo=nemo, nemo_label=nemo_label,
                     providers=tuple(p.strip() for p in args.provider.split(",")), peers=tuple(peers))
    if args.app_rss_seconds > 0:
        measure_app_peaks(rows, samples[: int(sr * args.app_rss_seconds)], args.threads, args.block_ms)
    header = (f"streamasr bench speed: {samples.size / sr:.1f} s of {source}, {args.threads} threads, "
              f"{args.block_ms:g} ms blocks, {args.repeats} round(s), onnxruntime {onnxruntime.__version__}, "
              f"{os.cpu_count()} CPUs")
    print(header + "\n")
    print(format_table(rows, compare=len(rows) > len(latencies)))
    if nemo is not None:
        print("\n" + format_nemo_ratios(rows, nemo_label))
        print("\n" + format_agreement(rows, nemo_label))
    if peers:
        print("\n" + format_peer_ratios(rows))
    if args.hotwords:
        model = load_model(dirs[0], args.threads).model
        for lat in latencies:
            print("\n" + format_cost(measure(model, samples, lat, args.hotwords)))
    print(f"\nprocess peak RSS {peak_rss_bytes() / 1e6:.0f} MB; bench took {time.perf_counter() - t0:.0f} s")
    floors = {}
    if args.floor:
        for d in dirs:
            floors[str(d)] = weight_floor(d, latencies, args.threads)
            measured = {r.latency_ms: r.rtfx for r in rows if r.directory == str(d) and "[" not in r.quantization}
            print("\n" + format_floor(d.name, floors[str(d)], measured))
    profiles = {}
    if args.profile:
        for d in dirs:
            for lat in latencies:
                prof = profile_encoder(d, lat, args.threads, samples, Path(args.profile), block_ms=args.block_ms)
                profiles[f"{d}@{lat}"] = prof
                print("\n" + format_profile(prof, f"{d.name}, {lat} ms, {args.threads} threads"))
    if args.json:
        out = {"profiles": {k: [dict(zip(("op", "calls", "total_ms", "share"), r)) for r in v]
                            for k, v in profiles.items()},
               "weight_floors": {k: [asdict(f) for f in v] for k, v in floors.items()},
               "header": header, "threads": args.threads, "audio": source, "audio_s": samples.size / sr,
               "block_ms": args.block_ms, "repeats": args.repeats, "onnxruntime": onnxruntime.__version__,
               "process_peak_rss_bytes": peak_rss_bytes(), "rows": [asdict(r) for r in rows]}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def add_parser(bench_sub) -> None:
    p = bench_sub.add_parser("speed", help="RTFx, per-chunk latency, memory and load time of model directories",
                             description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--compare", nargs="+", default=[], metavar="DIR",
                   help="more model directories, run interleaved with --model; ratios are against --model")
    p.add_argument("--latency", default=DEFAULT_LATENCIES, help="comma-separated latency modes in ms (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: %(default)s)")
    p.add_argument("--audio", default=None, help="audio file to stream (default: --seconds of $STREAMASR_SPEECH_DIR's or the bundled speech)")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of audio when no --audio (default: %(default)s)")
    p.add_argument("--block-ms", type=float, default=20.0, help="audio per accept() call (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of audio in the warm-up stream (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the median is reported (default: %(default)s)")
    p.add_argument("--provider", default="cpu", metavar="LIST",
                   help="encoder execution provider(s): cpu (default), openvino (needs onnxruntime-openvino); "
                        "a comma list runs every model under each, interleaved (e.g. cpu,openvino)")
    p.add_argument("--nemo", default=None, metavar="SOURCE",
                   help="also time NeMo's own PyTorch streaming in the same run: a .nemo file, hub id, or random:NAME "
                        "(that architecture built in memory with speech-like random weights); needs streamasr[verify]")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON")
    p.add_argument("--peer", action="append", default=[], metavar="sherpa-onnx:DIR",
                   help="also time sherpa-onnx on an `export-sherpa` folder (one subfolder per mode), interleaved; "
                        "with --nemo, every engine's tokens are compared with NeMo's")
    p.add_argument("--app-rss-seconds", type=float, default=20.0, metavar="S",
                   help="afterwards, each model alone in a clean child process streams S s of the audio per latency "
                        "and reports its peak RSS (the app peak RSS column); 0 skips it (default: %(default)s)")
    p.add_argument("--hotwords", type=int, default=0, metavar="N",
                   help="also measure the decoder with N random phrases from the vocabulary against none")
    p.add_argument("--floor", action="store_true",
                   help="afterwards, time each model's weight products alone (every int4 MatMulNBits and weight "
                        "MatMul) for one stream's rows per step: the RTFx bound weight traffic sets, and the share of "
                        "it each mode reaches")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="afterwards, profile each model's encoder with ONNX Runtime's profiler (one extra run per "
                        "model and latency) and print the time per op type; traces are written to DIR")
    p.set_defaults(func=cmd_speed)
