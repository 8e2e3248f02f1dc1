"""The real recorded speech used for tuning random models, benchmarks and tests.

It lives beside the checkout in `shared/data/speech/` (a `manifest.jsonl` with `audio` paths relative to
it); `$STREAMASR_SPEECH_DIR` points elsewhere. One place finds it, so every user agrees on where it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SPEECH_DIR_ENV = "STREAMASR_SPEECH_DIR"


def find_speech_dir() -> Path | None:
    """The first of $STREAMASR_SPEECH_DIR, <checkout>/../shared/data/speech, ./../shared/data/speech
    that holds a manifest.jsonl; None if none does."""
    candidates = [Path(p) for p in [os.environ.get(SPEECH_DIR_ENV)] if p]
    candidates += [Path(__file__).resolve().parents[3] / "shared/data/speech", Path.cwd().parent / "shared/data/speech"]
    return next((c for c in candidates if (c / "manifest.jsonl").is_file()), None)


def read_speech(directory: Path, sample_rate: int = 16000, max_seconds: float | None = None) -> dict[str, np.ndarray]:
    """Manifest order: audio name -> float32 mono samples (each capped at `max_seconds` if given)."""
    from .audio import read_audio

    manifest = Path(directory) / "manifest.jsonl"
    items = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    cap = None if max_seconds is None else int(sample_rate * max_seconds)
    return {it["audio"]: read_audio(Path(directory) / it["audio"], sample_rate)[:cap] for it in items}
