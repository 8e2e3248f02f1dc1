"""How far one run of a model is from another: the measures quantization is judged by.

Both the sensitivity analysis (which layers int4-mixed keeps) and the fidelity benchmark compare a
model's streaming outputs with a reference's: per-chunk encoder outputs (max abs error, mean relative error,
cosine) and token sequences (agreement = 1 - edit distance / reference length). Runs are recorded through
the stream's chunk observer, so what is measured is exactly what the runtime computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamasr.runtime.decoder import Token
from streamasr.runtime.encoder import EncodedChunk
from streamasr.runtime.stream import Model, Result


@dataclass
class Recording:
    """One streamed utterance: its result and every chunk's encoder output (T, D) and joint projection."""

    result: Result
    encodings: list[np.ndarray]
    projections: list[np.ndarray]


def run_recording(model: Model, samples: np.ndarray, latency_ms: int, nemo_compat: bool = True,
                  language: str | None = None) -> Recording:
    """Stream `samples` through `model` (with the language prompt `language`, None for the model's default),
    recording each chunk's encoder output and joint projection."""
    encodings: list[np.ndarray] = []
    projections: list[np.ndarray] = []

    def record(chunk: EncodedChunk, tokens: list[Token]) -> None:
        encodings.append(np.array(chunk.encoded))
        projections.append(np.array(chunk.encoded_proj))

    stream = model.stream(latency_ms, nemo_compat=nemo_compat, on_chunk=record, language=language)
    stream.accept(samples)
    return Recording(stream.finish(), encodings, projections)


def edit_distance(a: list[int], b: list[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def token_agreement(reference: list[int], hypothesis: list[int]) -> float:
    """1 - token edit distance / reference length (floored at 0); 1 for two empty sequences."""
    if not reference:
        return 1.0 if not hypothesis else 0.0
    return max(0.0, 1.0 - edit_distance(reference, hypothesis) / len(reference))


@dataclass
class EncoderError:
    chunks: int
    max_abs: float
    mean_rel: float
    cosine_mean: float
    cosine_min: float


def encoder_error(reference: list[np.ndarray], other: list[np.ndarray]) -> EncoderError:
    """Error of `other`'s per-chunk encoder outputs against `reference`'s (same chunk structure)."""
    if len(reference) != len(other) or any(a.shape != b.shape for a, b in zip(reference, other)):
        raise ValueError("the two runs produced different chunk structures")
    pairs = [(a.astype(np.float64).ravel(), b.astype(np.float64).ravel()) for a, b in zip(reference, other) if a.size]
    if not pairs:
        return EncoderError(0, 0.0, 0.0, 1.0, 1.0)
    max_abs = max(float(np.abs(a - b).max()) for a, b in pairs)
    rel = [float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)) for a, b in pairs]
    cos = [float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)) for a, b in pairs]
    return EncoderError(len(pairs), max_abs, float(np.mean(rel)), float(np.mean(cos)), float(np.min(cos)))
