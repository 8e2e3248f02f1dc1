"""Evaluation data: local JSONL manifests and the Open ASR Leaderboard's English test sets on the hub.

    manifest:PATH         JSONL, one utterance a line: {"audio": path relative to the manifest, "text": ...}
                          (optional "id", "duration"); everything is validated before the run starts
    esb:CONFIG[:SPLIT]    hf-audio/esb-datasets-test-only-sorted, read with `datasets` in streaming mode
                          (nothing is downloaded whole); SPLIT defaults to "test"

An `Item` carries what a worker needs to produce samples (a path or the encoded bytes) and is picklable, so
the Ray engine can ship it to another process. Items that cannot be used (an unreadable manifest line, a
missing audio file) come out with `error` set; the runner stops on them, or records and skips them with
--skip-errors.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from streamasr.audio import read_audio, resample, to_mono
from streamasr.errors import AudioError, StreamASRError

ESB_REPO = "hf-audio/esb-datasets-test-only-sorted"
# The 8 English sets of the Open ASR Leaderboard (config, split), in the leaderboard's order.
OPEN_ASR_EN = (
    ("ami", "test"), ("earnings22", "test"), ("gigaspeech", "test"), ("librispeech", "test.clean"),
    ("librispeech", "test.other"), ("spgispeech", "test"), ("tedlium", "test"), ("voxpopuli", "test"),
)
ESB_CONFIGS = ("ami", "common_voice", "earnings22", "gigaspeech", "librispeech", "spgispeech", "tedlium", "voxpopuli")
SUITES = {"open-asr-en": [f"esb:{c}:{s}" for c, s in OPEN_ASR_EN]}
_TEXT_KEYS = ("text", "sentence", "normalized_text", "transcript", "transcription")


@dataclass
class Item:
    id: str
    text: str = ""
    path: str | None = None  # an audio file
    data: bytes | None = None  # or encoded audio bytes (hub datasets)
    duration: float | None = None
    error: str | None = None  # set when the item cannot be evaluated
    meta: dict = field(default_factory=dict)

    def load(self, sample_rate: int = 16000) -> np.ndarray:
        if self.error:
            raise AudioError(self.error)
        if self.path is not None:
            return read_audio(self.path, sample_rate)
        import soundfile as sf

        try:
            x, rate = sf.read(io.BytesIO(self.data or b""), dtype="float32", always_2d=False)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioError(f"utterance {self.id}: undecodable audio ({exc})") from exc
        if x.size == 0:
            raise AudioError(f"utterance {self.id}: contains no audio samples")
        return resample(to_mono(x), int(rate), sample_rate)


class Dataset:
    """A named source of Items; `name` is what rows and file names are keyed by."""

    name: str
    spec: str

    def items(self, max_samples: int | None = None) -> Iterator[Item]:
        raise NotImplementedError

    def size(self) -> int | None:
        return None


class ManifestDataset(Dataset):
    def __init__(self, path: str | Path, spec: str | None = None):
        self.path = Path(path).expanduser()
        self.spec = spec or f"manifest:{path}"
        if not self.path.is_file():
            raise StreamASRError(f"dataset {self.spec}: no such manifest file {self.path}")
        self.name = self.path.stem if self.path.stem != "manifest" else f"{self.path.parent.name}"
        self._items = self._read()

    def _read(self) -> list[Item]:
        items: list[Item] = []
        base = self.path.parent
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise StreamASRError(f"dataset {self.spec}: cannot read {self.path}: {exc}") from exc
        seen: set[str] = set()
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{self.path}:{lineno}"
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                audio, text = rec.get("audio"), rec.get("text")
                if not isinstance(audio, str) or not audio:
                    raise ValueError('no "audio" path')
                if not isinstance(text, str):
                    raise ValueError('no "text" string')
            except ValueError as exc:
                items.append(Item(id=f"line{lineno}", error=f"{where}: unreadable manifest line ({exc})"))
                continue
            uid = str(rec.get("id") or audio)
            if uid in seen:
                uid = f"{uid}#{lineno}"
            seen.add(uid)
            audio_path = (base / audio) if not Path(audio).is_absolute() else Path(audio)
            item = Item(id=uid, text=text, path=str(audio_path), duration=rec.get("duration"),
                        meta={"line": lineno})
            if not audio_path.is_file():
                item.error = f"{where}: utterance {uid}: audio file {audio_path} not found"
            items.append(item)
        if not items:
            raise StreamASRError(f"dataset {self.spec}: the manifest {self.path} has no utterances")
        return items

    def size(self) -> int:
        return len(self._items)

    def items(self, max_samples: int | None = None) -> Iterator[Item]:
        yield from self._items[:max_samples] if max_samples else self._items


class HubDataset(Dataset):
    """One ESB config/split, streamed with `datasets` (audio left encoded; decoded by the worker)."""

    def __init__(self, config: str, split: str, spec: str):
        if config not in ESB_CONFIGS:
            raise StreamASRError(f"dataset {spec}: unknown ESB config {config!r}; known: {', '.join(ESB_CONFIGS)}")
        self.config, self.split, self.spec = config, split, spec
        self.name = config if split == "test" else f"{config}.{split}"

    def _fail(self, exc: BaseException) -> StreamASRError:
        return StreamASRError(
            f"dataset {self.spec}: cannot stream {ESB_REPO} ({self.config}, split {self.split}) from the Hugging Face "
            f"hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Offline? Evaluate local "
            f"audio with --dataset manifest:PATH (JSONL with audio and text fields)")

    def items(self, max_samples: int | None = None) -> Iterator[Item]:
        try:
            import datasets
        except ImportError as exc:
            raise StreamASRError("hub datasets need the `datasets` package: pip install 'streamasr[bench]'") from exc
        try:
            ds = datasets.load_dataset(ESB_REPO, self.config, split=self.split, streaming=True)
            ds = ds.cast_column("audio", datasets.Audio(decode=False))
            it = iter(ds)
            first = next(it, None)
        except StreamASRError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, auth, missing config: all reported the same way
            raise self._fail(exc) from exc
        if first is None:
            return
        n = 0
        sample = first
        while sample is not None:
            if max_samples and n >= max_samples:
                return
            yield self._item(sample, n)
            n += 1
            try:
                sample = next(it, None)
            except Exception as exc:  # noqa: BLE001
                raise self._fail(exc) from exc

    def _item(self, sample: dict, index: int) -> Item:
        uid = str(sample.get("id") or f"{self.name}-{index}")
        text = next((sample[k] for k in _TEXT_KEYS if isinstance(sample.get(k), str)), None)
        audio = sample.get("audio") or {}
        item = Item(id=uid, text=text or "", data=audio.get("bytes"), meta={"index": index})
        if text is None:
            item.error = f"{self.spec}: utterance {uid} has no transcript field ({', '.join(_TEXT_KEYS)})"
        elif item.data is None:
            path = audio.get("path")
            if path and Path(path).is_file():
                item.path = path
            else:
                item.error = f"{self.spec}: utterance {uid} has no audio bytes"
        return item


def open_dataset(spec: str) -> Dataset:
    kind, _, rest = spec.partition(":")
    if kind == "manifest" and rest:
        return ManifestDataset(rest, spec)
    if kind == "esb" and rest:
        config, _, split = rest.partition(":")
        return HubDataset(config, split or "test", spec)
    if not _ and spec.endswith(".jsonl"):
        return ManifestDataset(spec, f"manifest:{spec}")
    raise StreamASRError(f"unknown dataset {spec!r}; use manifest:PATH.jsonl or esb:CONFIG[:SPLIT] "
                         f"(configs: {', '.join(ESB_CONFIGS)}) or --suite {', '.join(SUITES)}")


def dataset_specs(datasets: list[str] | None, suite: str | None) -> list[str]:
    specs = list(datasets or [])
    if suite:
        if suite not in SUITES:
            raise StreamASRError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
        specs += SUITES[suite]
    if not specs:
        raise StreamASRError("give at least one --dataset (manifest:PATH or esb:CONFIG[:SPLIT]) or --suite")
    return specs


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"
