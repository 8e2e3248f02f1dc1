"""Evaluation data: local JSONL manifests, the Open ASR Leaderboard's English test sets and FLEURS on the hub.

    manifest:PATH         JSONL, one utterance a line: {"audio": path relative to the manifest, "text": ...}
                          (optional "id", "duration", and "language": the utterance's locale, e.g. "de-DE");
                          everything is validated before the run starts
    esb:CONFIG[:SPLIT]    hf-audio/esb-datasets-test-only-sorted, read with `datasets` in streaming mode
                          (nothing is downloaded whole); SPLIT defaults to "test"
    fleurs:LOCALE[:SPLIT] google/fleurs, one config per locale (de_de, ja_jp, cmn_hans_cn, ...), streamed the
                          same way from the hub's Parquet conversion of the set (recent `datasets` no longer
                          run its loading script); every utterance is in LOCALE; SPLIT defaults to "test"

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

FLEURS_REPO = "google/fleurs"
FLEURS_REVISION = "refs/convert/parquet"  # the hub's Parquet copy; the main branch holds a loading script
# cased and punctuated first (the model writes both; the normalizer removes them from both sides alike)
_FLEURS_TEXT_KEYS = ("raw_transcription", "transcription")


@dataclass
class Item:
    id: str
    text: str = ""
    path: str | None = None  # an audio file
    data: bytes | None = None  # or encoded audio bytes (hub datasets)
    duration: float | None = None
    error: str | None = None  # set when the item cannot be evaluated
    language: str | None = None  # the locale the utterance is in, as the dataset names it
    prompt: str | None = None  # the model's language prompt to transcribe it with (set per model by the runner)
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
    """A named source of Items; `name` is what rows and file names are keyed by. `language` is the locale of
    every utterance when the whole set is in one (FLEURS), else None (a manifest's lines may name their own)."""

    name: str
    spec: str
    language: str | None = None

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
                language = rec.get("language")
                if language is not None and (not isinstance(language, str) or not language.strip()):
                    raise ValueError('"language" is not a locale string')
            except ValueError as exc:
                items.append(Item(id=f"line{lineno}", error=f"{where}: unreadable manifest line ({exc})"))
                continue
            uid = str(rec.get("id") or audio)
            if uid in seen:
                uid = f"{uid}#{lineno}"
            seen.add(uid)
            audio_path = (base / audio) if not Path(audio).is_absolute() else Path(audio)
            item = Item(id=uid, text=text, path=str(audio_path), duration=rec.get("duration"),
                        language=language.strip() if language else None, meta={"line": lineno, "where": where})
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

    repo = ESB_REPO
    revision: str | None = None
    text_keys = _TEXT_KEYS

    def __init__(self, config: str, split: str, spec: str):
        if config not in ESB_CONFIGS:
            raise StreamASRError(f"dataset {spec}: unknown ESB config {config!r}; known: {', '.join(ESB_CONFIGS)}")
        self.config, self.split, self.spec = config, split, spec
        self.name = config if split == "test" else f"{config}.{split}"

    def _fail(self, exc: BaseException) -> StreamASRError:
        return StreamASRError(
            f"dataset {self.spec}: cannot stream {self.repo} ({self.config}, split {self.split}) from the Hugging Face "
            f"hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Offline? Evaluate local "
            f"audio with --dataset manifest:PATH (JSONL with audio and text fields)")

    def items(self, max_samples: int | None = None) -> Iterator[Item]:
        try:
            import datasets
        except ImportError as exc:
            raise StreamASRError("hub datasets need the `datasets` package: pip install 'streamasr[bench]'") from exc
        try:
            ds = datasets.load_dataset(self.repo, self.config, split=self.split, streaming=True,
                                       revision=self.revision)
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

    def _uid(self, sample: dict, index: int) -> str:
        return str(sample.get("id") or f"{self.name}-{index}")

    def _item(self, sample: dict, index: int) -> Item:
        uid = self._uid(sample, index)
        text = next((sample[k] for k in self.text_keys if isinstance(sample.get(k), str)), None)
        audio = sample.get("audio") or {}
        item = Item(id=uid, text=text or "", data=audio.get("bytes"), language=self.language, meta={"index": index})
        if text is None:
            item.error = f"{self.spec}: utterance {uid} has no transcript field ({', '.join(self.text_keys)})"
        elif item.data is None:
            path = audio.get("path")
            if path and Path(path).is_file():
                item.path = path
            else:
                item.error = f"{self.spec}: utterance {uid} has no audio bytes"
        return item


class FleursDataset(HubDataset):
    """One FLEURS locale (a config of google/fleurs): every utterance is in that locale.

    FLEURS ids name a sentence, which several speakers read, so the row index is appended to make each
    recording's id unique."""

    repo = FLEURS_REPO
    revision = FLEURS_REVISION
    text_keys = _FLEURS_TEXT_KEYS

    def __init__(self, locale: str, split: str, spec: str):
        if not re.fullmatch(r"[a-z]{2,3}(_[a-z]{4})?_([a-z]{2}|[0-9]{3})", locale):
            raise StreamASRError(f"dataset {spec}: {locale!r} is not a FLEURS locale config "
                                 "(lower case with underscores: de_de, ja_jp, cmn_hans_cn, es_419)")
        self.config, self.split, self.spec = locale, split, spec
        self.language = locale
        self.name = f"fleurs-{locale}" if split == "test" else f"fleurs-{locale}.{split}"

    def _uid(self, sample: dict, index: int) -> str:
        return f"{sample.get('id', 'utt')}-{index}"


def open_dataset(spec: str) -> Dataset:
    kind, _, rest = spec.partition(":")
    if kind == "manifest" and rest:
        return ManifestDataset(rest, spec)
    if kind == "esb" and rest:
        config, _, split = rest.partition(":")
        return HubDataset(config, split or "test", spec)
    if kind == "fleurs" and rest:
        locale, _, split = rest.partition(":")
        return FleursDataset(locale, split or "test", spec)
    if not _ and spec.endswith(".jsonl"):
        return ManifestDataset(spec, f"manifest:{spec}")
    raise StreamASRError(f"unknown dataset {spec!r}; use manifest:PATH.jsonl, esb:CONFIG[:SPLIT] "
                         f"(configs: {', '.join(ESB_CONFIGS)}), fleurs:LOCALE[:SPLIT] (e.g. fleurs:de_de) "
                         f"or --suite {', '.join(SUITES)}")


def dataset_specs(datasets: list[str] | None, suite: str | None) -> list[str]:
    specs = list(datasets or [])
    if suite:
        if suite not in SUITES:
            raise StreamASRError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
        specs += SUITES[suite]
    if not specs:
        raise StreamASRError("give at least one --dataset (manifest:PATH, esb:CONFIG[:SPLIT] or "
                             "fleurs:LOCALE[:SPLIT]) or --suite")
    return specs


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"
