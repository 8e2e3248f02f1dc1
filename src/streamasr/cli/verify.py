"""`streamasr verify`: NeMo's own streaming output beside streamasr's, and quantized variants beside fp32."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamasr.audio import read_audio
from streamasr.errors import StreamASRError
from streamasr.eval.fidelity import compare
from streamasr.eval.nemo_reference import load_nemo_model
from streamasr.eval.verify import format_rows, verify
from streamasr.model_config import ModelConfig
from streamasr.model_store import resolve_model
from streamasr.quant.quantize import parse_variant, quantized_copy
from streamasr.runtime import Model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="compare NeMo's own streaming output with streamasr's, per latency mode")
    p.add_argument("nemo", help="the .nemo checkpoint")
    p.add_argument("audio", nargs="+")
    p.add_argument("--model-dir", default=None, help="converted model directory (default: convert into the cache)")
    p.add_argument("--latency", default=None, help="comma-separated modes in ms (default: all)")
    p.add_argument("--language", default=None, metavar="LOCALES",
                   help="a multilingual model's comma-separated languages (default: its default and auto)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max abs encoder difference to pass")
    p.add_argument("--quant", default=None, metavar="VARIANTS",
                   help="also show quantized variants against fp32, e.g. int8,int4-kquant,int4-kquant:128,"
                   "int4-mixed (each made once, beside the fp32 model directory)")
    p.add_argument("--block-size", type=int, default=32, help="block size of --quant variants without one")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    if not Path(args.nemo).is_file():
        raise StreamASRError(f"no such .nemo file: {args.nemo}")
    model = Model.load_dir(Path(args.model_dir) if args.model_dir else resolve_model(args.nemo), threads=args.threads)
    audio = {a: read_audio(a, model.sample_rate) for a in args.audio}
    latencies = [int(x) for x in args.latency.split(",")] if args.latency else model.latency_modes
    for lat in latencies:
        model.latency(lat)
    languages: list[str | None] = [None]
    if args.language:
        languages = [model.language(x.strip()) for x in args.language.split(",")]
    elif model.languages:
        languages = list(dict.fromkeys([model.default_language, "auto" if "auto" in model.languages else None]))
        languages = [x for x in languages if x]
    nemo_model = load_nemo_model(args.nemo)
    rows = verify(nemo_model, model, audio, latencies, languages)
    print(format_rows(rows))
    ok = all(r.tokens_identical and r.max_abs_diff <= args.tolerance for r in rows)
    print(f"\n{'PASS' if ok else 'FAIL'}: tokens identical and encoder max abs diff <= {args.tolerance:g} "
          f"in {sum(r.tokens_identical and r.max_abs_diff <= args.tolerance for r in rows)}/{len(rows)} runs")
    if args.quant:
        _verify_quantized(args, model, audio, latencies, languages)
    return 0 if ok else 1


def _verify_quantized(args: argparse.Namespace, model: Model, audio: dict, latencies: list[int],
                      languages: list[str | None]) -> None:
    """verify --quant: each variant's token agreement and encoder error against the fp32 conversion (per
    language for a multilingual model: the prompt changes the joint's input, so drift can differ by language)."""
    head = ["variant", "size MB", "latency", "language", "token agreement vs fp32", "tokens fp32/quant", "identical",
            "enc max abs", "enc mean rel err", "enc cosine mean", "enc cosine min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec in args.quant.split(","):
        method, block = parse_variant(spec.strip(), args.block_size)
        qdir = quantized_copy(model.directory, method, block)
        qmodel = Model.load_dir(qdir, threads=args.threads)
        rows = [r for r in compare(model, qmodel, audio, latencies, languages) if r.audio == "ALL" or len(audio) == 1]
        size = ModelConfig.load(qdir).size_bytes / 1e6
        for r in rows:
            lines.append(f"| {spec.strip()} | {size:.0f} | {r.latency_ms} ms | {r.language or '-'} | {r.token_agreement:.4f} | "
                         f"{r.tokens_reference}/{r.tokens_model} | {'yes' if r.identical else 'no'} | {r.max_abs:.3g} | "
                         f"{r.mean_rel:.4f} | {r.cosine_mean:.5f} | {r.cosine_min:.5f} |")
    print(f"\nquantized variants against the fp32 conversion {model.directory} "
          f"({model.config.size_bytes / 1e6:.0f} MB), all audio pooled per latency:\n")
    print("\n".join(lines))
