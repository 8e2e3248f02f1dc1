"""Shared pieces of the transformers-based backends: availability, checkpoints, generation length, window loop,
and `TransformersSystem`, the part of a backend that does not depend on its model family.

A real checkpoint is a `save_pretrained` directory (config, weights, processor files) or a hub id, which
huggingface_hub downloads into its cache on a connected machine; offline, one line says it cannot be.
A real decoder stops at its own EOS; `max_new_tokens` only guards against a runaway loop.

Random-weight autoregressive decoders would stop at once or run to the length limit; with EOS suppressed and
`min_new_tokens = max_new_tokens` they generate `TOKENS_PER_S` tokens per second of audio, as speech does,
so their speed rows measure the decoder at a realistic length.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamasr.errors import ModelError, OfflineError
from streamasr.eval.compare.backend import (
    SAMPLE_RATE,
    Step,
    SystemInfo,
    Transcript,
    timed,
    window_starts,
)
from streamasr.eval.compare.merge import merge_overlap, overlap_search_words
from streamasr.eval.compare.spec import Mode, SpecError, SystemSpec
from streamasr.model_store import offline_reason

TOKENS_PER_S = 3.0
# A guard, not a length: speech runs at about 3-5 tokens/s, so a real decoder reaches EOS long before this.
GUARD_TOKENS_PER_S = 12.0
GUARD_TOKENS_MIN = 16
# What a hub download fetches: configs, processor and tokenizer files, safetensors weights. Not `*.nemo` or
# `*.bin` copies of the same weights, which some repositories also carry (gigabytes nobody loads here).
HUB_PATTERNS = ["*.json", "*.jinja", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
WEIGHT_SUFFIXES = (".safetensors", ".bin")


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


@dataclass(frozen=True)
class Checkpoint:
    """A transformers model and its processor, loaded from `directory`, with the bytes of its weight files."""

    model: Any
    processor: Any
    directory: Path
    size_bytes: int


def weight_bytes(directory: Path) -> int:
    """Bytes of the weight files in a checkpoint directory (the size column is the files on disk; hub cache
    entries are symlinks, which `stat` follows)."""
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


def _looks_local(source: str) -> bool:
    """A path rather than a hub id: hub ids are `name` or `owner/name`, never absolute, relative or nested."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or source.endswith("/")


def resolve_checkpoint(backend: str, source: str) -> Path:
    """The directory of `source`: a local `save_pretrained` folder as it is, a hub id from the cache (an
    earlier download) or downloaded now; offline or missing, one line that says so."""
    path = Path(source).expanduser()
    if path.exists() or _looks_local(source):
        if not path.is_dir():
            raise ModelError(f"backend {backend}: {path} is not a directory (a save_pretrained checkpoint: "
                             "config.json, weights, processor files)")
        if not (path / "config.json").is_file():
            raise ModelError(f"backend {backend}: {path} has no config.json; it is not a transformers checkpoint")
        return path
    from huggingface_hub import snapshot_download

    with contextlib.suppress(Exception):  # an earlier download (huggingface_hub raises several types)
        return Path(snapshot_download(source, allow_patterns=HUB_PATTERNS, local_files_only=True))
    why = offline_reason()
    if why:
        raise OfflineError(f"backend {backend}: cannot reach the Hugging Face hub to download {source} ({why}); "
                           "pass a local save_pretrained directory, or random: for speed, size and memory only")
    try:
        return Path(snapshot_download(source, allow_patterns=HUB_PATTERNS))
    except Exception as exc:
        raise ModelError(f"backend {backend}: cannot download {source} ({type(exc).__name__}: {exc})") from exc


def load_checkpoint(backend: str, source: str, model_cls, processor_cls) -> Checkpoint:
    """Model (fp32, eval) and processor from `source` (see `resolve_checkpoint`), read from disk only."""
    import torch

    directory = resolve_checkpoint(backend, source)
    try:
        model = model_cls.from_pretrained(directory, dtype=torch.float32, local_files_only=True).eval()
        processor = processor_cls.from_pretrained(directory, local_files_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]  # transformers' messages run to several lines
        raise ModelError(f"backend {backend}: cannot load {source} from {directory} "
                         f"({type(exc).__name__}: {first})") from exc
    return Checkpoint(model, processor, directory, weight_bytes(directory))


def guard_tokens(duration_s: float) -> int:
    """`max_new_tokens` for a real decoder: far above speech rates, so only a looping decoder meets it."""
    return GUARD_TOKENS_MIN + round(GUARD_TOKENS_PER_S * duration_s)


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


class TransformersSystem:
    """A transformers backend's system: a real checkpoint (`MODEL_CLASS` and `PROCESSOR_CLASS` from a
    `save_pretrained` directory or a hub id) or a random build, transcribing through `run_mode`.

    A family subclass names its classes and `REAL_NOTE`, and writes `_build_random` (which sets `model`,
    `info` and what its decoder needs), `_decode_real` and `_decode_random` (audio -> text)."""

    BACKEND = ""
    MODEL_CLASS = ""
    PROCESSOR_CLASS = ""
    REAL_NOTE = ""
    PRECISION = "fp32 (PyTorch, transformers)"

    def __init__(self, spec: SystemSpec, threads: int):
        model_cls = require(self.BACKEND, self.MODEL_CLASS, threads)
        self.mode = spec.mode
        if spec.random:
            self._build_random(model_cls, threads)
            self._decode = self._decode_random
        else:
            self._load(spec, model_cls, threads)
            self._decode = self._decode_real

    def _load(self, spec: SystemSpec, model_cls, threads: int) -> None:
        """A real checkpoint: its processor writes the prompt, its generation config says when to stop."""
        ckpt = load_checkpoint(self.BACKEND, spec.model, model_cls, require(self.BACKEND, self.PROCESSOR_CLASS, threads))
        self.model, self.processor = ckpt.model, ckpt.processor
        self.info = SystemInfo(model_id=f"{self.BACKEND}:{spec.model}", size_bytes=ckpt.size_bytes,
                               algorithmic_delay_s=spec.mode.algorithmic_delay_s, random_weights=False,
                               streams=spec.mode.kind != "batch", precision=self.PRECISION, notes=[self.REAL_NOTE])

    def _build_random(self, model_cls, threads: int) -> None:
        raise NotImplementedError

    def _decode_real(self, audio: np.ndarray) -> str:
        raise NotImplementedError

    def _decode_random(self, audio: np.ndarray) -> str:
        raise NotImplementedError

    def transcribe(self, samples: np.ndarray) -> Transcript:
        return run_mode(self.mode, samples, self._decode)
