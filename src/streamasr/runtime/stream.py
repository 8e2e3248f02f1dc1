"""The application API: a loaded `Model` hands out independent `Stream`s.

    model = streamasr.load("models/nemotron-en")
    stream = model.stream(latency_ms=160)
    for block in microphone():
        new_text = stream.accept(block)      # float32 samples at model.sample_rate
    result = stream.finish()                 # text, token ids, token times

A model's ONNX sessions are shared (thread-safe); all mutable state lives in the stream, so streams may
be used from different threads, one thread per stream at a time.

Callers that run many streams (a server) batch their encoder steps instead: `Stream.feed` buffers audio
without encoding, `Stream.is_ready` says a chunk is complete, and `runtime.batch.decode_streams` steps the
ready streams' encoders in one call and lets each stream decode its own chunk (`Stream.accept_chunks`).
An observer (`Stream.on_chunk`) sees every chunk's encoder output and the tokens it emitted: verification
and benchmarks watch the stream through it rather than reaching inside.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from streamasr.errors import AudioError, ModelError
from streamasr.frontend import StreamingLogMel
from streamasr.model_config import ModelConfig
from streamasr.runtime.backend import Backend, OrtBackend
from streamasr.runtime.boosting import (
    DEFAULT_CONTEXT_SCORE,
    DEFAULT_DEPTH_SCALING,
    DEFAULT_SCORE,
    Hotwords,
    PhraseSpec,
    build_hotwords,
)
from streamasr.runtime.decoder import GreedyDecoder, Token
from streamasr.runtime.encoder import EncodedChunk, StreamingEncoder
from streamasr.runtime.fusion import FusionModel
from streamasr.runtime.ngram_lm import DEFAULT_WEIGHT as DEFAULT_LM_WEIGHT
from streamasr.runtime.ngram_lm import load_lm
from streamasr.text import IncrementalText, TextDecoder

#: an observer of a stream's chunks: (the chunk's encoder output, the tokens decoded from it)
ChunkObserver = Callable[[EncodedChunk, list[Token]], None]


@dataclass
class Result:
    text: str
    token_ids: list[int]
    token_times_s: list[float]
    token_logprobs: list[float]
    tokens: list[str]
    audio_s: float
    latency_ms: int
    chunks: int
    # a multilingual model's language: the one asked for, or in `auto` mode the last one the model tagged
    # (None before its first tag, and for a model without a language prompt)
    language: str | None = None
    hotwords: list[str] = field(default_factory=list)  # the stream's hotword phrases found in the text

    def to_dict(self) -> dict:
        return {
            "text": self.text, "token_ids": self.token_ids, "token_times_s": self.token_times_s,
            "tokens": self.tokens, "token_logprobs": self.token_logprobs, "audio_s": self.audio_s,
            "latency_ms": self.latency_ms, "chunks": self.chunks, "language": self.language,
            **({"hotwords": self.hotwords} if self.hotwords else {}),
        }


class Model:
    """A model directory loaded for inference (onnxruntime + numpy only)."""

    def __init__(self, directory: Path, config: ModelConfig, backend: Backend, window: np.ndarray,
                 filterbank: np.ndarray, text: TextDecoder):
        self.directory = Path(directory)
        self.config = config
        self.backend = backend
        self.window = window
        self.filterbank = filterbank
        self.text = text

    @property
    def sample_rate(self) -> int:
        return self.config.frontend.sample_rate

    @property
    def latency_modes(self) -> list[int]:
        return [m.latency_ms for m in self.config.encoder.latency_modes]

    @property
    def languages(self) -> dict[str, int]:
        """A multilingual model's languages (locale -> prompt slot; `auto` lets the model choose and tag
        each segment); empty for a model without a language prompt."""
        return dict(self.config.languages)

    @property
    def default_language(self) -> str | None:
        return self.config.default_language or None

    def language(self, language: str | None = None) -> str | None:
        """`language` checked against the model (None: the model's default); a ModelError listing the
        model's languages for an unknown one, and one saying so for any language on a model without a prompt."""
        if not self.config.languages:
            if language is None:
                return None
            raise ModelError(f"{self.config.model_id} has no language prompt (it is not a multilingual model); "
                             f"omit the language")
        if language is None:
            return self.config.default_language
        if language not in self.config.languages:
            raise ModelError(f"unknown language {language!r}; {self.config.model_id} offers: "
                             f"{', '.join(self.config.languages)}")
        return language

    @classmethod
    def load_dir(cls, directory: Path, threads: int | None = None, backend: Backend | None = None,
                 providers: list[str] | None = None, release_mapped: bool = True) -> "Model":
        """The model in `directory`. `release_mapped=False` keeps resident the weight pages ONNX Runtime maps
        but never reads (see `runtime.mapped_weights`; about 80 MB for the full-size int4 model)."""
        directory = Path(directory)
        config = ModelConfig.load(directory)
        try:
            with np.load(directory / config.files.get("frontend", "frontend.npz")) as npz:
                window, filterbank = npz["window"], npz["filterbank"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"model directory {directory} has no usable frontend.npz: {exc}") from exc
        text = TextDecoder(directory / config.files.get("tokenizer", "tokenizer.model"))
        if len(text.pieces) != config.decoder.vocab_size:  # a tokenizer.model of another model
            raise ModelError(f"{config.files.get('tokenizer', 'tokenizer.model')} in {directory} has "
                             f"{len(text.pieces)} pieces but its config.json's decoder predicts "
                             f"{config.decoder.vocab_size}; the files come from different models (re-convert)")
        if backend is None:  # the graphs are checked against config.json (files of another model size)
            backend = OrtBackend(directory, config.files, threads=threads, providers=providers, config=config,
                                 release_mapped=release_mapped)
        return cls(directory, config, backend, window, filterbank, text)

    def check_fusion(self) -> None:
        """Fused decoding (hotwords, LM) needs every label's logit from joint.onnx; a directory converted
        before hotwords existed has a joint that returns only the best label and is told to re-convert."""
        if not getattr(self.backend, "has_joint_logits", True):
            raise ModelError(f"the joint.onnx of {self.directory} returns no logits, which hotwords and LM fusion "
                             "need (it was converted by an older streamasr); re-convert the model")

    def hotwords(self, phrases: Hotwords | list[str | PhraseSpec], score: float = DEFAULT_SCORE,
                 context_score: float = DEFAULT_CONTEXT_SCORE, depth_scaling: float = DEFAULT_DEPTH_SCALING,
                 max_bonus: float | None = None) -> Hotwords:
        """Phrases compiled into NeMo's boosting tree with this model's tokenizer (see runtime/boosting.py);
        compile once and pass the result to many streams. A Hotwords given is returned as it is."""
        self.check_fusion()
        if isinstance(phrases, Hotwords):
            return phrases
        if isinstance(phrases, str):
            phrases = [phrases]
        return build_hotwords(phrases, self.text.sp, score=score, context_score=context_score,
                              depth_scaling=depth_scaling, max_bonus=max_bonus)

    def load_lm(self, path: str | Path | FusionModel, weight: float = DEFAULT_LM_WEIGHT) -> FusionModel:
        """A word-piece ARPA LM over this model's tokens with its weight (NeMo's ngram_lm_alpha)."""
        self.check_fusion()
        if isinstance(path, FusionModel):
            return path
        return load_lm(path, self.config.decoder.vocab_size, weight)

    def with_backend(self, backend: Backend) -> "Model":
        """The same model run by another backend (a timing wrapper, an encoder with other weights)."""
        return Model(self.directory, self.config, backend, self.window, self.filterbank, self.text)

    def latency(self, latency_ms: int | str | None = None) -> int:
        """`latency_ms` as an int, or the model's default mode when None. An int-like string ("160", from a
        query string or a command line) is that mode; anything that is not a whole number of milliseconds
        is a ModelError saying so, and an unknown mode one naming the model's modes."""
        latency = self.config.encoder.default_latency_ms if latency_ms is None else latency_ms
        return self.config.encoder.mode(latency).latency_ms  # (mode() takes "160" as 160)

    def stream(self, latency_ms: int | None = None, nemo_compat: bool = False,
               on_chunk: ChunkObserver | None = None, language: str | None = None,
               hotwords: Hotwords | list[str | PhraseSpec] | None = None, hotword_score: float = DEFAULT_SCORE,
               hotword_context_score: float = DEFAULT_CONTEXT_SCORE,
               hotword_depth_scaling: float = DEFAULT_DEPTH_SCALING, hotword_max_bonus: float | None = None,
               lm: str | Path | FusionModel | None = None, lm_weight: float = DEFAULT_LM_WEIGHT) -> Stream:
        """A new independent stream at `latency_ms` (default: the model's mode); `on_chunk` observes it.
        `language` (a multilingual model's locale or "auto"; default the model's) can change mid-stream.
        `hotwords` (phrases, or `Model.hotwords(...)` compiled once) and `lm` (an ARPA path, or
        `Model.load_lm(...)`) fuse phrase boosting and an n-gram LM into the greedy search, as NeMo does."""
        boost = None
        if hotwords is not None:
            boost = self.hotwords(hotwords, score=hotword_score, context_score=hotword_context_score,
                                  depth_scaling=hotword_depth_scaling, max_bonus=hotword_max_bonus)
        return Stream(self, self.latency(latency_ms), nemo_compat=nemo_compat, on_chunk=on_chunk,
                      language=self.language(language), hotwords=boost,
                      lm=None if lm is None else self.load_lm(lm, lm_weight))

    def transcribe(self, samples: np.ndarray, latency_ms: int | None = None, nemo_compat: bool = False,
                   language: str | None = None, **fusion) -> Result:
        """Stream a whole utterance through (the same path as live audio) and return the result; `fusion`:
        the hotword and LM options of `stream`."""
        stream = self.stream(latency_ms, nemo_compat=nemo_compat, language=language, **fusion)
        stream.accept(samples)
        return stream.finish()


@dataclass
class Stream:
    model: Model
    latency_ms: int
    nemo_compat: bool = False
    on_chunk: ChunkObserver | None = None
    language: str | None = None  # a multilingual model's locale or "auto" (see set_language)
    hotwords: Hotwords | None = None  # phrase boosting (see set_hotwords)
    lm: FusionModel | None = None  # n-gram LM fusion
    _text: str = field(default="", init=False)
    _finished: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        cfg = self.model.config
        mode = cfg.encoder.mode(self.latency_ms)
        self.frontend = StreamingLogMel(cfg.frontend, self.model.window, self.model.filterbank)
        self.language = self.model.language(self.language)
        slot = None if self.language is None else cfg.languages[self.language]
        self.encoder = StreamingEncoder(self.model.backend, cfg.encoder, mode, cfg.frontend.n_mels, self.nemo_compat,
                                        language=slot)
        if self.hotwords is not None or self.lm is not None:
            self.model.check_fusion()
        self.decoder = GreedyDecoder(self.model.backend, cfg.decoder, lm=self.lm, hotwords=self.hotwords)
        self._pending_hotwords: list[Hotwords | None] = []  # set_hotwords: applied at the next chunk
        self._incremental = IncrementalText(self.model.text)  # the text, decoded as tokens arrive
        self._lock = threading.Lock()  # one call at a time per stream, even if callers share it by mistake

    @property
    def text(self) -> str:
        """Everything recognised so far."""
        return self._text

    @property
    def tokens(self) -> list[Token]:
        """Every token decoded so far, with its global encoder frame."""
        return self.decoder.tokens

    @property
    def frames_decoded(self) -> int:
        """Encoder frames decoded so far (each `model.config.frame_seconds` of audio)."""
        return self.decoder.frames_decoded

    @property
    def steps(self) -> int:
        """Encoder steps (chunks) run so far."""
        return self.encoder.steps

    @property
    def mel_frames_consumed(self) -> int:
        """Mel frames consumed by the encoder steps so far."""
        return self.encoder.frames_consumed

    @property
    def samples_seen(self) -> int:
        return self.frontend.samples_seen

    @property
    def next_width(self) -> int:
        """Mel frames the next encoder step consumes."""
        return self.encoder.next_width()

    @property
    def is_ready(self) -> bool:
        """A complete chunk is buffered and waits for an encoder step (see `feed`)."""
        return not self._finished and self.encoder.ready()

    @property
    def finished(self) -> bool:
        return self._finished

    def batch_key(self) -> tuple[int, int, bool]:
        """Streams whose next steps share this key can be encoded in one batched call: (latency mode,
        step width, first step or not) fix the mel input's width and the `drop` count."""
        return (self.latency_ms, self.encoder.next_width(), self.encoder.steps == 0)

    def set_language(self, language: str) -> None:
        """Switch a multilingual stream's language from its next encoder step on. The prompt acts after the
        encoder and its caches never depend on it, so the switch is exact at any chunk boundary."""
        checked = self.model.language(language)
        with self._lock:
            self.language = checked
            self.encoder.cache.language = self.model.config.languages[checked]

    def set_hotwords(self, phrases: Hotwords | list[str | PhraseSpec] | None, score: float = DEFAULT_SCORE,
                     context_score: float = DEFAULT_CONTEXT_SCORE, depth_scaling: float = DEFAULT_DEPTH_SCALING,
                     max_bonus: float | None = None) -> Hotwords | None:
        """Replace this stream's hotwords (None or [] removes them) from the next chunk decoded on; the
        phrases are compiled (and checked) now. Returns what was compiled."""
        compiled = None
        if phrases is not None and not (isinstance(phrases, list) and not phrases):
            compiled = self.model.hotwords(phrases, score=score, context_score=context_score,
                                           depth_scaling=depth_scaling, max_bonus=max_bonus)
        with self._lock:
            self._pending_hotwords = [compiled]
        return compiled

    @property
    def hotword_matches(self) -> list[tuple[str, float]]:
        """(phrase, time in seconds of the token completing it) for each hotword found so far."""
        frame_s = self.model.config.frame_seconds
        toks = self.decoder.tokens
        return [(phrase, round(toks[i].frame * frame_s, 3)) for i, phrase in self.decoder.hotword_matches]

    @property
    def detected_language(self) -> str | None:
        """The language of the stream so far: the one set, or in `auto` mode the last one the model tagged."""
        if self.language == "auto":
            return self.model.text.last_language([t.id for t in self.decoder.tokens])
        return self.language

    def feed(self, samples: np.ndarray) -> int:
        """Buffer float32 mono samples as mel frames WITHOUT encoding them, for a caller that batches the
        encoder steps of many streams (`runtime.batch`). Returns the mel frames buffered."""
        x = self._check(samples)
        with self._lock:
            if self._finished:
                raise RuntimeError("feed() after finish()")
            frames = self.frontend.accept(x)
            self.encoder.buffer(frames)
            return frames.shape[0]

    def accept(self, samples: np.ndarray) -> str:
        """Feed float32 mono samples at the model's sample rate; returns the text added by them."""
        x = self._check(samples)
        with self._lock:
            if self._finished:
                raise RuntimeError("accept() after finish()")
            if self.frontend.add(x) < self.encoder.frames_missing():
                return ""  # no step yet: its frames are computed together when the chunk is complete
            return self._decode(self.encoder.push(self.frontend.emit()))

    def accept_chunks(self, chunks: list[EncodedChunk]) -> str:
        """Decode encoder output produced outside the stream (by a batching scheduler)."""
        with self._lock:
            return self._decode(chunks)

    def finish(self) -> Result:
        """End of audio: encode and decode what remains and return the full result."""
        with self._lock:
            if self._finished:
                raise RuntimeError("finish() called twice")
            self._finished = True
            tail = self.frontend.finish()
            if self.frontend.samples_seen == 0:  # no audio at all: nothing to encode (the centred STFT would
                tail = tail[:0]  # still make one frame of padding, which a model may read as a token)
            self._decode(self.encoder.finish(tail))
            return self.result()

    def result(self) -> Result:
        toks = self.decoder.tokens
        frame_s = self.model.config.frame_seconds
        return Result(
            text=self._text,
            token_ids=[t.id for t in toks],
            token_times_s=[round(t.frame * frame_s, 3) for t in toks],
            token_logprobs=[t.logprob for t in toks],
            tokens=[self.model.text.piece(t.id) for t in toks],
            audio_s=self.frontend.samples_seen / self.model.sample_rate,
            latency_ms=self.latency_ms,
            chunks=self.encoder.steps,
            language=self.detected_language,
            hotwords=list(dict.fromkeys(phrase for _, phrase in self.decoder.hotword_matches)),
        )

    def _decode(self, chunks: list[EncodedChunk]) -> str:
        if self._pending_hotwords and chunks:
            self.hotwords = self._pending_hotwords.pop()
            self.decoder.set_hotwords(self.hotwords)
        emitted = False
        for chunk in chunks:
            new = self.decoder.decode_chunk(chunk.encoded_proj)
            emitted |= bool(new)
            if self.on_chunk is not None:
                self.on_chunk(chunk, new)
        if not emitted:
            return ""
        old = self._text
        stable = len(self._incremental.settled)  # a prefix later tokens do not change
        known = len(self._incremental.ids)
        self._text = self._incremental.extend([t.id for t in self.decoder.tokens[known:]])
        common = stable
        for a, b in zip(old[stable:], self._text[stable:]):
            if a != b:
                break
            common += 1
        return self._text[common:]

    @staticmethod
    def _check(samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples)
        if x.ndim != 1:
            raise AudioError(f"expected mono samples as a 1-D array, got shape {x.shape}; mix channels down first")
        if x.dtype.kind not in "fi":
            raise AudioError(f"expected float or int samples, got dtype {x.dtype}")
        if x.dtype.kind == "i":  # PCM integers: scale to [-1, 1) as NeMo's soundfile reader does
            x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
        x = x.astype(np.float32, copy=False)
        if x.size and not np.isfinite(x).all():
            raise AudioError("samples contain NaN or infinity")
        return x
