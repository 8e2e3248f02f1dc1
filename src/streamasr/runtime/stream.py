"""The application API: a loaded `Model` hands out independent `Stream`s.

    model = streamasr.load("models/nemotron-en")
    stream = model.stream(latency_ms=160)
    for block in microphone():
        new_text = stream.accept(block)      # float32 samples at model.sample_rate
    result = stream.finish()                 # text, token ids, token times

A model's ONNX sessions are shared (thread-safe); all mutable state lives in the stream, so streams may
be used from different threads, one thread per stream at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AudioError, ModelError
from ..frontend import StreamingLogMel
from ..model_config import ModelConfig
from ..text import TextDecoder
from .backend import Backend, OrtBackend
from .decoder import GreedyDecoder, Token
from .encoder import EncodedChunk, StreamingEncoder


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

    def to_dict(self) -> dict:
        return {
            "text": self.text, "token_ids": self.token_ids, "token_times_s": self.token_times_s,
            "tokens": self.tokens, "token_logprobs": self.token_logprobs, "audio_s": self.audio_s,
            "latency_ms": self.latency_ms, "chunks": self.chunks,
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

    @classmethod
    def load_dir(cls, directory: Path, threads: int | None = None, backend: Backend | None = None,
                 providers: list[str] | None = None) -> "Model":
        directory = Path(directory)
        config = ModelConfig.load(directory)
        try:
            with np.load(directory / config.files.get("frontend", "frontend.npz")) as npz:
                window, filterbank = npz["window"], npz["filterbank"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"model directory {directory} has no usable frontend.npz: {exc}") from exc
        text = TextDecoder(directory / config.files.get("tokenizer", "tokenizer.model"))
        if backend is None:
            backend = OrtBackend(directory, config.files, threads=threads, providers=providers)
        return cls(directory, config, backend, window, filterbank, text)

    def stream(self, latency_ms: int | None = None, nemo_compat: bool = False) -> "Stream":
        return Stream(self, latency_ms if latency_ms is not None else self.config.encoder.default_latency_ms,
                      nemo_compat=nemo_compat)

    def transcribe(self, samples: np.ndarray, latency_ms: int | None = None, nemo_compat: bool = False) -> Result:
        """Stream a whole utterance through (the same path as live audio) and return the result."""
        stream = self.stream(latency_ms, nemo_compat=nemo_compat)
        stream.accept(samples)
        return stream.finish()


@dataclass
class Stream:
    model: Model
    latency_ms: int
    nemo_compat: bool = False
    _text: str = field(default="", init=False)
    _finished: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        cfg = self.model.config
        mode = cfg.encoder.mode(self.latency_ms)
        self.frontend = StreamingLogMel(cfg.frontend, self.model.window, self.model.filterbank)
        self.encoder = StreamingEncoder(self.model.backend, cfg.encoder, mode, cfg.frontend.n_mels, self.nemo_compat)
        self.decoder = GreedyDecoder(self.model.backend, cfg.decoder)
        self._lock = threading.Lock()  # one call at a time per stream, even if callers share it by mistake

    @property
    def text(self) -> str:
        """Everything recognised so far."""
        return self._text

    @property
    def tokens(self) -> list[Token]:
        return self.decoder.tokens

    def accept(self, samples: np.ndarray) -> str:
        """Feed float32 mono samples at the model's sample rate; returns the text added by them."""
        x = self._check(samples)
        with self._lock:
            if self._finished:
                raise RuntimeError("accept() after finish()")
            return self._decode(self.encoder.push(self.frontend.accept(x)))

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
            self._decode(self.encoder.finish(self.frontend.finish()))
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
        )

    def _decode(self, chunks: list[EncodedChunk]) -> str:
        emitted = False
        for chunk in chunks:
            emitted |= bool(self.decoder.decode_chunk(chunk.encoded_proj))
        if not emitted:
            return ""
        old = self._text
        self._text = self.model.text.decode([t.id for t in self.decoder.tokens])
        common = 0
        for a, b in zip(old, self._text):
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
