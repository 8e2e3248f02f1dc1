"""`--system BACKEND:MODEL@MODE`: the grammar of one compared system and of its mode.

    BACKEND   nemotron | nemo | whisper | parakeet-tdt | conformer-transducer | canary | qwen3-asr
    MODEL     a hub id, a local directory or file, or `random:` / `random:NAME` (the real architecture with
              random weights: speed, size and memory only, never a WER)
    MODE      batch            the whole utterance at once
              560 | 560ms      a streaming latency mode (cache-aware streaming: nemotron, nemo)
              chunk3s          overlapping windows of 3 s with the default overlap (min(1 s, window / 3))
              chunk(3,1)       windows of 3 s overlapping by 1 s (the paper's "chunk / stride"), merged
                               by `merge.merge_overlap`
              chunk(5.6-0.8-1.6)  buffered left-chunk-right seconds: encode left+chunk+right, keep the
                               chunk's frames, carry the decoder state (NeMo transducers, Canary)
              stream | stream(1.0)  LocalAgreement-2 streaming partials, one update per 1.0 s of audio

The model part may itself contain ':' (`random:`), so the backend ends at the first ':' and the mode starts
at the last '@'. Whether a backend runs a mode is the backend's business (`registry.py`); this module only
parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from streamasr.errors import StreamASRError

_NUM = r"(\d+(?:\.\d+)?)"
_LATENCY = re.compile(r"^(\d+)(?:ms)?$")
_CHUNK_S = re.compile(rf"^chunk{_NUM}s$")
_WINDOW = re.compile(rf"^chunk\(\s*{_NUM}\s*,\s*{_NUM}\s*\)$")
_LCR = re.compile(rf"^chunk\(\s*{_NUM}\s*-\s*{_NUM}\s*-\s*{_NUM}\s*\)$")
_STREAM = re.compile(rf"^stream(?:\(\s*{_NUM}\s*\))?$")
MODE_HELP = "batch, a latency in ms (560), chunk3s, chunk(3,1), chunk(5.6-0.8-1.6) or stream(1.0)"


class SpecError(StreamASRError):
    """A --system value that cannot be parsed or run."""


@dataclass(frozen=True)
class Mode:
    """kind: batch | latency | window | lcr | localagree; the numbers that kind uses."""

    kind: str
    text: str  # as the user wrote it (the row label keeps the spelling)
    latency_ms: int | None = None
    window_s: float | None = None
    overlap_s: float | None = None
    left_s: float | None = None
    chunk_s: float | None = None
    right_s: float | None = None
    step_s: float | None = None

    @property
    def algorithmic_delay_s(self) -> float | None:
        """Audio a word may wait for before the system can emit it (None for batch: the whole utterance)."""
        if self.kind == "latency":
            return self.latency_ms / 1000
        if self.kind == "window":
            return self.window_s
        if self.kind == "lcr":
            return round(self.chunk_s + self.right_s, 6)
        if self.kind == "localagree":  # a word is committed once two consecutive updates agree on it
            return round(2 * self.step_s, 6)
        return None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def parse_mode(text: str) -> Mode:
    t = text.strip()
    if t == "batch":
        return Mode("batch", t)
    if m := _LATENCY.match(t):
        return Mode("latency", t, latency_ms=int(m[1]))
    if m := _CHUNK_S.match(t):
        w = float(m[1])
        return _window(t, w, min(1.0, w / 3))
    if m := _WINDOW.match(t):
        return _window(t, float(m[1]), float(m[2]))
    if m := _LCR.match(t):
        left, chunk, right = (float(m[i]) for i in (1, 2, 3))
        if chunk <= 0:
            raise SpecError(f"mode {text!r}: the chunk (middle number) must be positive")
        return Mode("lcr", t, left_s=left, chunk_s=chunk, right_s=right)
    if m := _STREAM.match(t):
        step = float(m[1]) if m[1] else 1.0
        if step <= 0:
            raise SpecError(f"mode {text!r}: the update step must be positive")
        return Mode("localagree", t, step_s=step)
    raise SpecError(f"unknown mode {text!r}; use {MODE_HELP}")


def _window(text: str, window: float, overlap: float) -> Mode:
    if window <= 0 or not 0 <= overlap < window:
        raise SpecError(f"mode {text!r}: need a positive window and 0 <= overlap < window")
    return Mode("window", text, window_s=window, overlap_s=overlap)


@dataclass(frozen=True)
class SystemSpec:
    backend: str
    model: str
    mode: Mode
    text: str  # the whole --system value

    @property
    def random(self) -> bool:
        return self.model.startswith("random:")

    @property
    def random_name(self) -> str:
        """NAME of `random:NAME` ("" for a bare `random:`)."""
        return self.model[len("random:"):] if self.random else ""

    @property
    def label(self) -> str:
        """Row label: the spec with a local path shortened to its last component."""
        model = self.model.rstrip("/")
        if "/" in model and (model.startswith((".", "/", "~")) or model.count("/") > 1):
            model = model.rsplit("/", 1)[-1]
        return f"{self.backend}:{model}@{self.mode.text}"


def parse_system(text: str, default_modes: dict[str, str] | None = None) -> SystemSpec:
    """Split BACKEND:MODEL@MODE (the mode may be left out where the backend has a default)."""
    backend, sep, rest = text.strip().partition(":")
    if not sep or not backend or not rest:
        raise SpecError(f"--system {text!r}: expected BACKEND:MODEL@MODE, e.g. whisper:tiny.en@batch")
    model, at, mode = rest.rpartition("@")
    if not at:
        model, mode = rest, (default_modes or {}).get(backend, "")
        if not mode:
            raise SpecError(f"--system {text!r}: no mode; append @MODE ({MODE_HELP})")
    if not model:
        raise SpecError(f"--system {text!r}: no model between ':' and '@'")
    return SystemSpec(backend=backend, model=model, mode=parse_mode(mode), text=text.strip())
