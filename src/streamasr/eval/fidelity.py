"""`streamasr bench fidelity`: how far a quantized model directory is from its fp32 original.

Both models stream the same audio (`--audio`, `--speech-dir`, or the bundled speech by default) at the same latency mode. Reported per
utterance and over all of them:

- token agreement: 1 - token edit distance / fp32 token count (the fp32 transcript is the reference);
- encoder output error over every chunk: max |fp32 - quant|, mean relative error ||fp32 - quant|| / ||fp32||
  (per chunk, averaged), and the cosine similarity of the two outputs (per chunk; mean and minimum).

With the real checkpoint, token agreement against fp32 bounds the WER a quantized variant can lose; with a
random model it is only meaningful when the model's output is speech-like (not degenerate).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from streamasr.errors import StreamASRError
from streamasr.eval.speech import benchmark_speech
from streamasr.eval.verify import run_with_encodings
from streamasr.quant.compare import encoder_error, token_agreement
from streamasr.runtime import Model


@dataclass
class FidelityRow:
    audio: str
    latency_ms: int
    chunks: int
    token_agreement: float
    tokens_reference: int
    tokens_model: int
    identical: bool
    max_abs: float
    mean_rel: float
    cosine_mean: float
    cosine_min: float
    reference_text: str
    model_text: str


def compare(reference, model, audio: dict[str, np.ndarray], latencies: list[int]) -> list[FidelityRow]:
    """Per (latency, utterance) rows, followed by one "ALL" row per latency (token agreement over the
    concatenated token sequences' edit distances, encoder error over every chunk of every utterance)."""
    rows: list[FidelityRow] = []
    for lat in latencies:
        ref_all, mod_all, dist_tokens, ref_tokens = [], [], 0.0, 0
        for name, samples in audio.items():
            r_res, r_enc = run_with_encodings(reference, samples, lat, nemo_compat=False)
            m_res, m_enc = run_with_encodings(model, samples, lat, nemo_compat=False)
            err = encoder_error(r_enc, m_enc)
            agree = token_agreement(r_res.token_ids, m_res.token_ids)
            ref_all += r_enc
            mod_all += m_enc
            dist_tokens += (1 - agree) * len(r_res.token_ids)
            ref_tokens += len(r_res.token_ids)
            rows.append(FidelityRow(name, lat, err.chunks, agree, len(r_res.token_ids), len(m_res.token_ids),
                                    r_res.token_ids == m_res.token_ids, err.max_abs, err.mean_rel,
                                    err.cosine_mean, err.cosine_min, r_res.text, m_res.text))
        if len(audio) > 1:
            err = encoder_error(ref_all, mod_all)
            per = [r for r in rows if r.latency_ms == lat]
            rows.append(FidelityRow("ALL", lat, err.chunks, 1 - dist_tokens / ref_tokens if ref_tokens else 1.0,
                                    ref_tokens, sum(r.tokens_model for r in per), all(r.identical for r in per),
                                    err.max_abs, err.mean_rel, err.cosine_mean, err.cosine_min, "", ""))
    return rows


def format_rows(rows: list[FidelityRow], label: str = "") -> str:
    head = ["model", "latency", "audio", "chunks", "token agreement", "tokens fp32/quant", "identical",
            "enc max abs", "enc mean rel err", "enc cosine mean", "enc cosine min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {label} | {r.latency_ms} ms | {Path(r.audio).name} | {r.chunks} | {r.token_agreement:.4f} | "
                     f"{r.tokens_reference}/{r.tokens_model} | {'yes' if r.identical else 'no'} | {r.max_abs:.3g} | "
                     f"{r.mean_rel:.4f} | {r.cosine_mean:.5f} | {r.cosine_min:.5f} |")
    return "\n".join(lines)


def cmd_fidelity(args) -> int:
    for d in (args.model, args.reference):
        if not Path(d).is_dir():
            raise StreamASRError(f"no such model directory: {d}")
    reference = Model.load_dir(Path(args.reference), threads=args.threads)
    model = Model.load_dir(Path(args.model), threads=args.threads)
    latencies = [int(x) for x in args.latency.split(",")] if args.latency else [reference.config.encoder.default_latency_ms]
    for lat in latencies:
        reference.config.encoder.mode(lat)
        model.config.encoder.mode(lat)
    audio = benchmark_speech(args.audio, args.speech_dir, reference.sample_rate, max_seconds=args.max_seconds)
    rows = compare(reference, model, audio, latencies)
    q = model.config.quantization
    label = q.get("method", "fp32") + (f" b{q['block_size']}" if q.get("block_size") else "")
    print(f"fidelity of {args.model} ({label}) against {args.reference} "
          f"({reference.config.quantization.get('method', 'fp32')}, {reference.config.model_id})\n")
    print(format_rows(rows, label))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "reference": args.reference,
                                               "quantization": q, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    return 0


def add_parser(bench_sub) -> None:
    import argparse

    p = bench_sub.add_parser("fidelity", help="token agreement and encoder error of a quantized model vs fp32",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="quantized model directory")
    p.add_argument("--reference", required=True, help="the fp32 model directory it was made from")
    p.add_argument("--audio", nargs="+", default=None, help="audio files (default: --speech-dir's utterances)")
    p.add_argument("--speech-dir", default=None, help="folder with manifest.jsonl (default: $STREAMASR_SPEECH_DIR, "
                   "else the speech bundled with streamasr)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="cap each utterance at this many seconds (many short utterances measure "
                        "token agreement better than a few long ones)")
    p.add_argument("--latency", default=None, help="comma-separated latency modes in ms (default: the model's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, metavar="OUT")
    p.set_defaults(func=cmd_fidelity)
