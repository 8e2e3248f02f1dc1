"""Speech that ships with the package: a few public-domain clips for calibration without user audio.

Two product paths need real speech when the user gives none: tuning a random-weight benchmark model to be
speech-like (`random:NAME`, `convert --random`) and measuring per-layer sensitivity for `int4-mixed`
without a table. They use these clips (`speech_data/`, 16 kHz mono FLAC, about 47 s, under 1 MB):
JFK's 1961 inaugural address (a US government work), three LJ Speech clips and five LibriVox clips of
*Sense and Sensibility*, all in the public domain; `manifest.jsonl` gives each clip's transcript, licence
and origin. A folder of the same form (`manifest.jsonl` with `audio` and `text`) can replace them anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from streamasr.audio import read_audio

BUNDLED_DIR = Path(__file__).with_name("speech_data")
MANIFEST = "manifest.jsonl"


def read_manifest(directory: Path) -> list[dict]:
    """The manifest's entries in order, each with `path` (the audio file) added."""
    directory = Path(directory)
    items = [json.loads(line) for line in (directory / MANIFEST).read_text().splitlines() if line.strip()]
    for item in items:
        item["path"] = directory / item["audio"]
    return items


def read_speech(directory: Path = BUNDLED_DIR, sample_rate: int = 16000, max_seconds: float | None = None,
                total_seconds: float | None = None) -> dict[str, np.ndarray]:
    """Manifest order: audio name -> float32 mono samples, each capped at `max_seconds`; with
    `total_seconds`, utterances are taken until that much audio has been read."""
    cap = None if max_seconds is None else int(sample_rate * max_seconds)
    out: dict[str, np.ndarray] = {}
    taken = 0.0
    for item in read_manifest(directory):
        if total_seconds is not None and taken >= total_seconds:
            break
        samples = read_audio(item["path"], sample_rate)[:cap]
        out[item["audio"]] = samples
        taken += samples.size / sample_rate
    return out


def bundled_speech(sample_rate: int = 16000, max_seconds: float | None = None) -> list[np.ndarray]:
    """The bundled clips as a list of sample arrays, each capped at `max_seconds`."""
    return list(read_speech(BUNDLED_DIR, sample_rate, max_seconds).values())
