"""`streamasr verify`: NeMo's own streaming output beside ours, per latency mode.

For each mode and audio file: run NeMo's cache-aware streaming loop on the `.nemo` checkpoint, run the
converted model through streamasr in `nemo_compat` mode (NeMo's exact schedule, tail rule included), and
report the largest absolute difference between the two encoders' outputs over every chunk, the token
agreement (1 - token edit distance / NeMo's token count) and both transcripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamasr.eval.nemo_reference import nemo_streaming
from streamasr.quant.compare import run_recording, token_agreement
from streamasr.runtime import Model


@dataclass
class VerifyRow:
    audio: str
    latency_ms: int
    chunks: int
    max_abs_diff: float
    token_agreement: float
    tokens_identical: bool
    nemo_text: str
    streamasr_text: str
    nemo_tokens: int
    streamasr_tokens: int
    language: str | None = None


def run_with_encodings(model: Model, samples: np.ndarray, latency_ms: int, nemo_compat: bool = True,
                       language: str | None = None):
    """Stream samples through streamasr, also returning each step's encoder output (T, D)."""
    run = run_recording(model, samples, latency_ms, nemo_compat, language=language)
    return run.result, run.encodings


def max_chunk_difference(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    """Largest |difference| over all chunks; infinity if the chunk structure differs."""
    if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs)):
        return float("inf")
    return max((float(np.abs(a - b).max()) for a, b in zip(ours, theirs) if a.size), default=0.0)


def verify(nemo_model, model: Model, audio: dict[str, np.ndarray], latencies: list[int],
           languages: list[str | None] | None = None) -> list[VerifyRow]:
    """One row per (language, latency, audio); `languages` are a multilingual model's prompts (NeMo's
    `set_inference_prompt`), [None] for a model without one."""
    rows = []
    for language in languages or [None]:
        for latency in latencies:
            rows += _verify_mode(nemo_model, model, audio, latency, language)
    return rows


def _verify_mode(nemo_model, model: Model, audio: dict[str, np.ndarray], latency: int,
                 language: str | None) -> list[VerifyRow]:
    rows = []
    mode = model.config.encoder.mode(latency)
    language = model.language(language)
    for name, samples in audio.items():
        ref = nemo_streaming(nemo_model, samples, mode.right_context, language=language)
        result, encodings = run_with_encodings(model, samples, latency, nemo_compat=True, language=language)
        rows.append(VerifyRow(
                audio=name, latency_ms=latency, chunks=len(encodings), language=language,
                max_abs_diff=max_chunk_difference(encodings, ref.chunk_encodings),
                token_agreement=token_agreement(ref.token_ids, result.token_ids),
                tokens_identical=ref.token_ids == result.token_ids,
                nemo_text=ref.text, streamasr_text=result.text,
                nemo_tokens=len(ref.token_ids), streamasr_tokens=len(result.token_ids),
        ))
    return rows


def format_rows(rows: list[VerifyRow]) -> str:
    multilingual = any(r.language for r in rows)
    lines = ["| " + ("language | " if multilingual else "") + "latency | audio | chunks | max abs enc diff | "
             "token agreement | tokens (NeMo/ours) | identical |", "|---" * (7 + multilingual) + "|"]
    for r in rows:
        lines.append("| " + (f"{r.language} | " if multilingual else "") + f"{r.latency_ms} ms | {Path(r.audio).name} | "
                     f"{r.chunks} | {r.max_abs_diff:.2e} | {r.token_agreement:.4f} | {r.nemo_tokens}/{r.streamasr_tokens}"
                     f" | {'yes' if r.tokens_identical else 'NO'} |")
    lines.append("")
    for r in rows:
        lines.append(f"[{r.language + ', ' if r.language else ''}{r.latency_ms} ms] {Path(r.audio).name}")
        lines.append(f"  NeMo:      {r.nemo_text}")
        lines.append(f"  streamasr: {r.streamasr_text}")
    return "\n".join(lines)
