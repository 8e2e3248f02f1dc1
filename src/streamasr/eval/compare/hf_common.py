"""Shared pieces of the transformers-based backends: availability, fixed-length generation, window loop.

Random-weight autoregressive decoders would stop at once or run to the length limit; with EOS suppressed and
`min_new_tokens = max_new_tokens` they generate `TOKENS_PER_S` tokens per second of audio, as speech does,
so their speed rows measure the decoder at a realistic length.
"""

from __future__ import annotations

import importlib

import numpy as np

from streamasr.eval.compare.backend import (
    SAMPLE_RATE,
    Step,
    Transcript,
    timed,
    window_starts,
)
from streamasr.eval.compare.merge import merge_overlap, overlap_search_words
from streamasr.eval.compare.spec import Mode, SpecError

TOKENS_PER_S = 3.0


def require(backend: str, class_name: str, threads: int):
    """transformers' `class_name` with torch at `threads` threads, or one line saying what is missing."""
    try:
        import torch
        transformers = importlib.import_module("transformers")
    except ImportError as exc:
        raise SpecError(f"backend {backend} needs torch and transformers: pip install torch==2.13.0 "
                        "'streamasr[verify]'") from exc
    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise SpecError(f"backend {backend}: the installed transformers {transformers.__version__} has no "
                        f"{class_name}; upgrade transformers")
    torch.set_num_threads(threads)
    return cls


def hub_only(backend: str, spec_model: str) -> SpecError:
    return SpecError(f"backend {backend}: only random: builds are wired offline here ({spec_model!r} would need "
                     "the hub checkpoint and its processor); use random: for speed, size and memory")


def fixed_tokens(duration_s: float) -> int:
    return max(1, round(TOKENS_PER_S * duration_s))


def run_mode(mode: Mode, samples: np.ndarray, decode) -> Transcript:
    """batch: one decode; window: overlapping windows stitched by `merge.merge_overlap`."""
    duration = samples.size / SAMPLE_RATE
    if mode.kind == "batch":
        text, dt = timed(decode, samples)
        return Transcript(text, [Step(duration, dt, text)])
    w, o = mode.window_s, mode.overlap_s
    merged: list[str] = []
    steps = []
    for start in window_starts(duration, w, w - o):
        a, b = round(start * SAMPLE_RATE), round(min(start + w, duration) * SAMPLE_RATE)
        text, dt = timed(decode, samples[a:b])
        merged = merge_overlap(merged, text.split(), overlap_search_words(o))
        steps.append(Step(b / SAMPLE_RATE, dt, " ".join(merged)))
    return Transcript(" ".join(merged), steps)
