"""Which speech a benchmark runs on: `--audio` files, a folder named by `$STREAMASR_SPEECH_DIR`, or the clips
bundled with the package.

A folder holds a `manifest.jsonl` whose entries name an `audio` file (relative to it) and its `text`. The
tests point `$STREAMASR_SPEECH_DIR` at the workplace's larger set of recorded speech; nothing here knows
where that lives.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from streamasr.audio import read_audio
from streamasr.errors import StreamASRError
from streamasr.speech import BUNDLED_DIR, MANIFEST, read_speech

__all__ = ["SPEECH_DIR_ENV", "benchmark_speech", "read_speech", "speech_dir"]

SPEECH_DIR_ENV = "STREAMASR_SPEECH_DIR"


def speech_dir(explicit: str | Path | None = None) -> Path:
    """`explicit`, else $STREAMASR_SPEECH_DIR, else the bundled clips; an error if it has no manifest."""
    chosen = Path(explicit) if explicit else Path(os.environ[SPEECH_DIR_ENV]) if os.environ.get(SPEECH_DIR_ENV) \
        else BUNDLED_DIR
    if not (chosen / MANIFEST).is_file():
        raise StreamASRError(f"no {MANIFEST} in {chosen} (a speech folder lists its audio files there)")
    return chosen


def benchmark_speech(audio: list[str] | None = None, directory: str | Path | None = None,
                     sample_rate: int = 16000, max_seconds: float | None = None,
                     total_seconds: float | None = None) -> dict[str, np.ndarray]:
    """name -> samples: the given files, or the utterances of `speech_dir(directory)`."""
    if audio:
        cap = None if max_seconds is None else int(sample_rate * max_seconds)
        return {a: read_audio(a, sample_rate)[:cap] for a in audio}
    return read_speech(speech_dir(directory), sample_rate, max_seconds, total_seconds)
