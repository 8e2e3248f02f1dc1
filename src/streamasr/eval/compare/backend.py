"""The one small interface every compared system implements.

A backend turns a `SystemSpec` into a `LoadedSystem`; a loaded system transcribes one utterance (float32,
16 kHz mono) in its mode and returns a `Transcript`: the final text plus the `Step`s it took. A step is one
unit of work the system would do live (one streamed block, one chunk window, the whole utterance in batch):
how much audio had arrived when it started, how long its compute took, and the text shown after it. The
harness turns steps into RTFx, first-partial and final latencies with one simulated real-time clock, so
every backend is timed the same way and no backend computes its own statistics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from streamasr.eval.compare.spec import SystemSpec

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Step:
    audio_end_s: float  # audio available when this step ran (seconds from the utterance start)
    compute_s: float  # wall time of the step's compute
    text: str  # the whole text shown after the step (a partial; the last step's is the final)


@dataclass
class Transcript:
    text: str
    steps: list[Step]

    @property
    def processing_s(self) -> float:
        return sum(s.compute_s for s in self.steps)


@dataclass
class SystemInfo:
    """What a loaded system says about itself (rows, size and delay columns)."""

    model_id: str
    size_bytes: int  # bytes of the weights as loaded (files on disk; parameters x dtype for in-memory builds)
    algorithmic_delay_s: float | None  # None: whole utterance (batch)
    random_weights: bool
    streams: bool  # shows partial text before the end of the audio
    precision: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model_id": self.model_id, "size_bytes": self.size_bytes,
                "algorithmic_delay_s": self.algorithmic_delay_s, "random_weights": self.random_weights,
                "streams": self.streams, "precision": self.precision, "notes": list(self.notes)}


class LoadedSystem(Protocol):
    info: SystemInfo

    def transcribe(self, samples: np.ndarray) -> Transcript: ...


class Backend(Protocol):
    """A module-level object per backend: its name, the modes it runs and how to load a spec."""

    name: str
    modes: tuple[str, ...]  # mode kinds (see spec.Mode.kind)
    extra: str  # the pip extra that brings its dependencies

    def load(self, spec: SystemSpec, threads: int) -> LoadedSystem: ...


def timed(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    """(fn(*args, **kwargs), seconds it took)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def batch_transcript(fn: Callable[[np.ndarray], str], samples: np.ndarray) -> Transcript:
    """One step over the whole utterance, after all of it has arrived."""
    text, dt = timed(fn, samples)
    return Transcript(text=text, steps=[Step(samples.size / SAMPLE_RATE, dt, text)])


def window_starts(duration_s: float, window_s: float, step_s: float) -> list[float]:
    """Starts of overlapping windows covering [0, duration]: one window when the clip fits in one."""
    starts = [0.0]
    while starts[-1] + window_s < duration_s - 1e-9:
        starts.append(round(starts[-1] + step_s, 6))
    return starts


def param_bytes(module) -> int:
    """Bytes of a torch module's parameters and buffers at their dtypes (the size of an in-memory build)."""
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    return total + sum(b.numel() * b.element_size() for b in module.buffers())
