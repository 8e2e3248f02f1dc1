"""One utterance through a model the way `bench wer` measures it: streamed in 80 ms blocks (or whole),
with the compute of the blocks that ran encoder chunks timed. The single-process path and the Ray workers
both call `transcribe_item`, so their per-utterance results are the same."""

from __future__ import annotations

import time

import numpy as np

from streamasr.errors import StreamASRError
from streamasr.eval.datasets import Item

BLOCK_S = 0.08  # streaming block fed per accept() call


# ----------------------------------------------------------------------------- transcription
def transcribe_samples(model, samples: np.ndarray, latency_ms: int, offline: bool,
                       language: str | None = None) -> dict:
    """Run one utterance (with the language prompt `language`, None for the model's default); returns the
    hypothesis, timings (seconds) and, in `auto` mode, the language the model detected."""
    stream = model.stream(latency_ms, language=language) if language is not None else model.stream(latency_ms)
    if offline:
        blocks = [samples]
    else:
        step = max(1, int(round(model.sample_rate * BLOCK_S)))
        blocks = [samples[i: i + step] for i in range(0, samples.size, step)]
    total = chunk_s = 0.0
    timed_chunks = 0

    def timed(fn, *a):
        nonlocal total, chunk_s, timed_chunks
        before = stream.steps
        t0 = time.perf_counter()
        out = fn(*a)
        dt = time.perf_counter() - t0
        total += dt
        k = stream.steps - before
        if k:
            chunk_s += dt
            timed_chunks += k
        return out

    for b in blocks:
        timed(stream.accept, b)
    result = timed(stream.finish)
    out = {"hyp": result.text, "audio_s": round(result.audio_s, 4), "processing_s": total,
           "chunks": result.chunks, "chunk_compute_s": chunk_s, "timed_chunks": timed_chunks}
    if language == "auto":  # the last language the model tagged (None: no tag yet)
        out["detected_language"] = getattr(result, "language", None)
    return out


def transcribe_item(model, item: Item, latency_ms: int, offline: bool) -> dict:
    """Load and transcribe an Item: {"ok": result} or {"error": message} for a user-side problem."""
    try:
        samples = item.load(model.sample_rate)
        return {"ok": transcribe_samples(model, samples, latency_ms, offline, item.prompt)}
    except StreamASRError as exc:
        return {"error": str(exc)}
