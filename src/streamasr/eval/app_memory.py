"""The minimal streaming application, run alone in a child process, reporting its own memory.

A benchmark's process holds its harness, other models and often torch, so its resident memory says little
about what an application pays. This module is that application and nothing else: it imports `streamasr`
(never torch, NeMo or onnx), loads a model with `streamasr.load`, streams the audio at each latency mode
in turn with `Stream.accept` and `finish`, and prints one JSON object on stdout:

- `stages`: resident memory (VmRSS, with its anonymous and file-backed parts) at the end of each stage, and
  the peak (VmHWM) reached during it; the kernel's peak is reset between stages (`/proc/self/clear_refs`).
- `peak_rss_bytes`: the largest of those peaks, the application's peak RSS.
- `imported`: whether torch, NeMo or onnx ended up in `sys.modules` (the runtime must need none of them).
- `streams`: tokens, RTFx and per-chunk call times of each stream.

Run as `python -m streamasr.eval.app_memory MODEL_DIR AUDIO.npy --latency 80,560`; `eval/memory.py` starts
it and reads the result. Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import streamasr

#: modules the runtime path must never import
HEAVY_MODULES = ("torch", "nemo", "onnx")
_STATUS_KEYS = {"VmRSS": "rss", "VmHWM": "peak", "RssAnon": "anon", "RssFile": "file"}


def memory_status() -> dict[str, int]:
    """rss, peak, anon and file resident bytes of this process, from /proc/self/status."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in _STATUS_KEYS:
                out[_STATUS_KEYS[key]] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS record (VmHWM) from the current RSS; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StageLog:
    """Memory at the end of each stage, and each stage's own peak."""

    def __init__(self) -> None:
        self.stages: list[dict] = []
        self.resettable = True

    def mark(self, stage: str) -> None:
        status = memory_status()
        self.stages.append({"stage": stage, **status})
        self.resettable = reset_peak() and self.resettable

    @property
    def peak(self) -> int:
        return max(s["peak"] for s in self.stages)


def stream_through(model, samples: np.ndarray, latency_ms: int, block: int) -> dict:
    """One stream over `samples`, `block` samples per accept(): tokens, RTFx and accept() call times."""
    stream = model.stream(latency_ms)
    calls: list[float] = []
    t_start = time.perf_counter()
    for start in range(0, samples.size, block):
        steps = stream.steps
        t0 = time.perf_counter()
        stream.accept(samples[start:start + block])
        if stream.steps != steps:
            calls.append(time.perf_counter() - t0)
    result = stream.finish()
    seconds = time.perf_counter() - t_start
    return {"latency_ms": latency_ms, "tokens": len(result.token_ids), "token_ids": result.token_ids,
            "processing_s": seconds, "rtfx": samples.size / model.sample_rate / seconds, "chunk_s": calls}


def run(directory: str, audio_path: str, latencies: list[int], threads: int, block_ms: float) -> dict:
    """The application: load, then one stream per latency mode in order, memory marked after each stage."""
    log = StageLog()
    log.mark("start")  # interpreter, numpy, onnxruntime and streamasr imported
    samples = np.load(audio_path).astype(np.float32, copy=False)
    log.mark("audio")
    t0 = time.perf_counter()
    model = streamasr.load(directory, threads=threads)
    load_s = time.perf_counter() - t0
    log.mark("load")
    block = max(1, int(model.sample_rate * block_ms / 1000))
    streams = []
    for latency in latencies:
        streams.append(stream_through(model, samples, latency, block))
        log.mark(f"stream {latency} ms")
    return {"stages": log.stages, "peak_rss_bytes": log.peak, "peak_per_stage": log.resettable,
            "load_s": load_s, "audio_s": samples.size / model.sample_rate, "streams": streams,
            "imported": {name: name in sys.modules for name in HEAVY_MODULES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamasr.eval.app_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model directory")
    parser.add_argument("audio", help=".npy file of float32 mono samples at the model's rate")
    parser.add_argument("--latency", default="80,560", help="latency modes streamed in turn (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    latencies = [int(x) for x in args.latency.split(",") if x.strip()]
    print(json.dumps(run(args.model, args.audio, latencies, args.threads, args.block_ms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
