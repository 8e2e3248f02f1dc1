"""`streamasr bench fidelity`: how far a quantized model directory is from its fp32 original.

Both models stream the same audio (`--audio`, `--speech-dir`, or the bundled speech by default) at the same latency mode. Reported per
utterance and over all of them:

- token agreement: 1 - token edit distance / fp32 token count (the fp32 transcript is the reference);
- encoder output error over every chunk: max |fp32 - quant|, mean relative error ||fp32 - quant|| / ||fp32||
  (per chunk, averaged), and the cosine similarity of the two outputs (per chunk; mean and minimum).

With the real checkpoint, token agreement against fp32 bounds the WER a quantized variant can lose; with a
random model it is only meaningful when the model's output is speech-like (not degenerate).

A multilingual (prompt) model is compared per language (`--languages en-US,de-DE,auto`; default a few of
its languages): the prompt changes what the joint sees, so drift can differ by language although the encoder
is the same. For such a model the "encoder output" is the prompt's output (what the joint sees); its tables
add the error of the joint's projection of it and one "ALL" row per (variant, latency, language).
`--model` may be repeated to compare several quantized variants of one fp32 directory in one run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from streamasr.errors import StreamASRError
from streamasr.eval.speech import benchmark_speech
from streamasr.quant.compare import encoder_error, run_recording, token_agreement
from streamasr.runtime import Model

#: the languages compared by default on a prompt model, those of them it has (plus its default language)
DEFAULT_LANGUAGES = ("en-US", "de-DE", "ja-JP", "auto")


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
    language: str | None = None  # the prompt both models streamed with (None: a model without a prompt)
    proj_max_abs: float = 0.0  # the same measures on the joint's projection of the encoder output
    proj_mean_rel: float = 0.0
    proj_cosine_min: float = 1.0
    model: str = ""  # the variant's label (several variants in one run)


def compare(reference, model, audio: dict[str, np.ndarray], latencies: list[int],
            languages: list[str | None] | None = None, label: str = "") -> list[FidelityRow]:
    """Per (latency, language, utterance) rows, followed by one "ALL" row per (latency, language) (token
    agreement over the concatenated token sequences' edit distances, encoder error over every chunk of every
    utterance). `languages`: the prompts to stream with (default [None]: the model's default)."""
    rows: list[FidelityRow] = []
    for lat in latencies:
        for language in languages or [None]:
            rows += _compare_one(reference, model, audio, lat, language, label)
    return rows


def _compare_one(reference, model, audio: dict[str, np.ndarray], lat: int, language: str | None,
                 label: str) -> list[FidelityRow]:
    rows: list[FidelityRow] = []
    ref_all, mod_all, ref_proj, mod_proj, dist_tokens, ref_tokens = [], [], [], [], 0.0, 0
    for name, samples in audio.items():
        r = run_recording(reference, samples, lat, nemo_compat=False, language=language)
        m = run_recording(model, samples, lat, nemo_compat=False, language=language)
        err, proj = encoder_error(r.encodings, m.encodings), encoder_error(r.projections, m.projections)
        r_ids, m_ids = r.result.token_ids, m.result.token_ids
        agree = token_agreement(r_ids, m_ids)
        ref_all += r.encodings
        mod_all += m.encodings
        ref_proj += r.projections
        mod_proj += m.projections
        dist_tokens += (1 - agree) * len(r_ids)
        ref_tokens += len(r_ids)
        rows.append(FidelityRow(name, lat, err.chunks, agree, len(r_ids), len(m_ids), r_ids == m_ids, err.max_abs,
                                err.mean_rel, err.cosine_mean, err.cosine_min, r.result.text, m.result.text,
                                language, proj.max_abs, proj.mean_rel, proj.cosine_min, label))
    if len(audio) > 1:
        err, proj = encoder_error(ref_all, mod_all), encoder_error(ref_proj, mod_proj)
        rows.append(FidelityRow("ALL", lat, err.chunks, 1 - dist_tokens / ref_tokens if ref_tokens else 1.0,
                                ref_tokens, sum(r.tokens_model for r in rows), all(r.identical for r in rows),
                                err.max_abs, err.mean_rel, err.cosine_mean, err.cosine_min, "", "",
                                language, proj.max_abs, proj.mean_rel, proj.cosine_min, label))
    return rows


def format_rows(rows: list[FidelityRow], label: str = "") -> str:
    """The table; rows of a prompt model get a language column and the error of the joint's projection."""
    multilingual = any(r.language is not None for r in rows)
    head = ["model", "latency", *(["language"] if multilingual else []), "audio", "chunks", "token agreement",
            "tokens fp32/quant", "identical", "enc max abs", "enc mean rel err", "enc cosine mean", "enc cosine min",
            *(["joint proj max abs", "joint proj mean rel err", "joint proj cosine min"] if multilingual else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        language = f"{r.language} | " if multilingual else ""
        proj = f" {r.proj_max_abs:.3g} | {r.proj_mean_rel:.4f} | {r.proj_cosine_min:.5f} |" if multilingual else ""
        lines.append(f"| {r.model or label} | {r.latency_ms} ms | {language}{Path(r.audio).name} | {r.chunks} | "
                     f"{r.token_agreement:.4f} | {r.tokens_reference}/{r.tokens_model} | "
                     f"{'yes' if r.identical else 'no'} | {r.max_abs:.3g} | {r.mean_rel:.4f} | {r.cosine_mean:.5f} | "
                     f"{r.cosine_min:.5f} |{proj}")
    return "\n".join(lines)


def fidelity_languages(model: Model, requested: str | None) -> list[str | None]:
    """The prompts to compare: `requested` (comma-separated, each checked against the model), else a few of a
    prompt model's languages, else [None] for a model without a prompt."""
    languages = dict(getattr(model, "languages", {}) or {})
    if requested:
        wanted = [x.strip() for x in requested.split(",") if x.strip()]
        if not languages:
            raise StreamASRError(f"--languages: {model.config.model_id} has no language prompt (it is not a "
                                 "multilingual model); omit --languages")
        unknown = [x for x in wanted if x not in languages]
        if unknown:
            raise StreamASRError(f"--languages: {', '.join(unknown)} not among {model.config.model_id}'s languages "
                                 f"({', '.join(languages)})")
        return list(dict.fromkeys(wanted))
    if not languages:
        return [None]
    default = getattr(model, "default_language", None)
    chosen = [x for x in (default, *DEFAULT_LANGUAGES) if x in languages]
    return list(dict.fromkeys(chosen)) or list(languages)[:3]


def variant_label(model: Model) -> str:
    q = model.config.quantization
    return q.get("method", "fp32") + (f" b{q['block_size']}" if q.get("block_size") else "")


def cmd_fidelity(args) -> int:
    for d in (*args.model, args.reference):
        if not Path(d).is_dir():
            raise StreamASRError(f"no such model directory: {d}")
    reference = Model.load_dir(Path(args.reference), threads=args.threads)
    models = [Model.load_dir(Path(d), threads=args.threads) for d in args.model]
    for d, m in zip(args.model, models):
        if dict(getattr(m, "languages", {}) or {}) != dict(getattr(reference, "languages", {}) or {}):
            raise StreamASRError(f"{d} and {args.reference} offer different languages; they are not the same model")
    languages = fidelity_languages(reference, args.languages)
    latencies = [int(x) for x in args.latency.split(",")] if args.latency else [reference.config.encoder.default_latency_ms]
    for lat in latencies:
        for m in (reference, *models):
            m.config.encoder.mode(lat)
    audio = benchmark_speech(args.audio, args.speech_dir, reference.sample_rate, max_seconds=args.max_seconds)
    rows, variants = [], []
    labels = [variant_label(m) for m in models]
    for i, (d, m) in enumerate(zip(args.model, models)):
        label = labels[i] if labels.count(labels[i]) == 1 else f"{labels[i]} ({Path(d).name})"
        rows += compare(reference, m, audio, latencies, languages, label)
        variants.append({"model": d, "label": label, "quantization": m.config.quantization})
    names = ", ".join(f"{v['model']} ({v['label']})" for v in variants)
    print(f"fidelity of {names} against {args.reference} "
          f"({reference.config.quantization.get('method', 'fp32')}, {reference.config.model_id})"
          + (f"; languages: {', '.join(languages)}" if languages != [None] else "") + "\n")
    print(format_rows(rows))
    if args.json:
        single = variants[0] if len(variants) == 1 else {}
        Path(args.json).write_text(json.dumps({"model": single.get("model", args.model), "reference": args.reference,
                                               "quantization": single.get("quantization"), "variants": variants,
                                               "languages": languages, "rows": [asdict(r) for r in rows]},
                                              indent=2, ensure_ascii=False) + "\n")
    return 0


def add_parser(bench_sub) -> None:
    import argparse

    p = bench_sub.add_parser("fidelity", help="token agreement and encoder error of a quantized model vs fp32",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, action="append",
                   help="quantized model directory; repeat to compare several variants in one run")
    p.add_argument("--reference", required=True, help="the fp32 model directory it was made from")
    p.add_argument("--audio", nargs="+", default=None, help="audio files (default: --speech-dir's utterances)")
    p.add_argument("--speech-dir", default=None, help="folder with manifest.jsonl (default: $STREAMASR_SPEECH_DIR, "
                   "else the speech bundled with streamasr)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="cap each utterance at this many seconds (many short utterances measure "
                        "token agreement better than a few long ones)")
    p.add_argument("--latency", default=None, help="comma-separated latency modes in ms (default: the model's)")
    p.add_argument("--languages", default=None,
                   help="a multilingual model's prompts to compare, comma-separated, e.g. en-US,de-DE,auto "
                        f"(default: those of {', '.join(DEFAULT_LANGUAGES)} the model has)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, metavar="OUT")
    p.set_defaults(func=cmd_fidelity)
