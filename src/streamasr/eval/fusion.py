"""`streamasr bench fusion`: what each operator fusion changes in the encoder graph, whether it keeps the
output, and what it buys in speed.

For an fp32 model directory: run ORT's transformers optimizer with every fusion on, then with each fusion
that fired alone; the fidelity check compares the fp32 graphs (the fusion's own effect), and with `--quant`
every variant and the unfused baseline are then quantized for the speed run (the fusions only match the
fp32 graph, so they are made before quantizing); for each variant report the node counts before/after and the op types that changed, the largest
encoder-output difference and token identity against the unfused graph on real speech, and the RTFx of all
variants streamed interleaved in one process (`bench speed`'s harness). It also shows what ONNX Runtime's own
session-time optimizer (which streamasr always runs) does to the same graph, since a fusion it already makes
buys nothing offline.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from streamasr.errors import StreamASRError
from streamasr.eval.speech import benchmark_speech
from streamasr.eval.speed import _progress, format_table, run_bench, speech_audio
from streamasr.eval.verify import max_chunk_difference, run_with_encodings
from streamasr.model_config import ModelConfig
from streamasr.quant.optimize import (
    FUSIONS,
    count_changes,
    op_counts,
    optimize_model_dir,
    ort_fused_counts,
)
from streamasr.quant.quantize import parse_variant, quantize_model_dir, quantized_copy
from streamasr.runtime import Model

#: fused operator reported by the optimizer -> the fusion that makes it
_FUSION_OF_OPERATOR = {
    "SkipLayerNormalization": "skip_layer_norm", "SkipSimplifiedLayerNormalization": "skip_layer_norm",
    "LayerNormalization": "layer_norm", "SimplifiedLayerNormalization": "layer_norm",
    "Attention": "attention", "MultiHeadAttention": "attention", "Gelu": "gelu", "FastGelu": "gelu",
    "BiasGelu": "bias_gelu", "RotaryEmbedding": "rotary_embeddings", "EmbedLayerNormalization": "embed_layer_norm",
}
#: max |difference| of the encoder output to the unfused graph that still counts as the same model
FIDELITY_TOLERANCE = 1e-3


@dataclass
class FusionRow:
    variant: str
    nodes_before: int
    nodes_after: int
    op_changes: dict
    max_abs: float
    tokens_identical: bool
    faithful: bool


def _variant_dir(src: Path, dst: Path) -> None:
    """A copy of the model directory; the decoder and joint graphs are hard links where possible (never
    config.json or the encoder, which the optimizer rewrites)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if not f.is_file():
            continue
        if f.name.startswith(("decoder.", "joint.")):
            try:
                os.link(f, dst / f.name)
                continue
            except OSError:
                pass
        shutil.copy2(f, dst / f.name)


def fusion_variants(model_dir: Path, work: Path) -> list[tuple[str, Path, dict]]:
    """(name, directory, change record) for all fusions on, then each fusion that fired (made operators the
    graph did not have as many of before) alone."""
    def make(name: str, fusions: set[str]) -> tuple[str, Path, dict]:
        d = work / name.replace(" ", "_")
        _variant_dir(model_dir, d)
        return name, d, optimize_model_dir(d, fusions)

    out = [make("all fusions", set(FUSIONS))]
    grew = [op for op, (a, b) in out[0][2]["op_changes"].items() if b > a]
    fired = sorted({_FUSION_OF_OPERATOR.get(op) for op in grew} - {None})
    out += [make(name, {name}) for name in (fired if len(fired) > 1 else [])]
    return out


def check_fidelity(reference, model, audio: dict[str, np.ndarray], latency: int) -> tuple[float, bool]:
    worst, same = 0.0, True
    for samples in audio.values():
        r_res, r_enc = run_with_encodings(reference, samples, latency, nemo_compat=False)
        m_res, m_enc = run_with_encodings(model, samples, latency, nemo_compat=False)
        worst = max(worst, max_chunk_difference(r_enc, m_enc))
        same = same and r_res.token_ids == m_res.token_ids
    return worst, same


def format_rows(rows: list[FusionRow], ort_changes: dict) -> str:
    lines = ["| variant | nodes before -> after | op types changed (before -> after) | enc max abs diff | "
             "tokens identical | kept |", "|---|---|---|---|---|---|"]
    for r in rows:
        changes = ", ".join(f"{op} {a}->{b}" for op, (a, b) in r.op_changes.items() if op != "Constant")
        lines.append(f"| {r.variant} | {r.nodes_before} -> {r.nodes_after} | {changes} | {r.max_abs:.2e} | "
                     f"{'yes' if r.tokens_identical else 'NO'} | {'yes' if r.faithful else 'no: breaks fidelity'} |")
    lines.append("")
    lines.append("ONNX Runtime's own session-time optimizer (ORT_ENABLE_EXTENDED) on the unfused graph: "
                 + ", ".join(f"{op} {a}->{b}" for op, (a, b) in ort_changes.items() if op != "Constant"))
    return "\n".join(lines)


def cmd_fusion(args) -> int:
    import onnx

    model_dir = Path(args.model)
    cfg = ModelConfig.load(model_dir)
    if cfg.optimization.get("fusions"):
        raise StreamASRError(f"{model_dir} is already fused; run this on an unfused conversion")
    if cfg.quantization.get("method", "fp32") != "fp32":
        raise StreamASRError(f"{model_dir} is quantized: give the fp32 conversion and --quant (the fusions "
                             "match the fp32 graph only)")
    quant = None
    if args.quant:
        quant = parse_variant(args.quant)
    latencies = [int(x) for x in args.latency.split(",")]
    encoder = model_dir / cfg.files.get("encoder", "encoder.onnx")
    base_counts = op_counts(onnx.load(str(encoder), load_external_data=False))
    ort_changes = count_changes(base_counts, ort_fused_counts(encoder, "extended"))
    audio = dict(list(benchmark_speech(max_seconds=10.0).items())[: args.utterances])
    work = Path(tempfile.mkdtemp(prefix="streamasr-fusion-", dir=args.work_dir))
    try:
        variants = fusion_variants(model_dir, work)
        reference = Model.load_dir(model_dir, threads=args.threads)
        rows = []
        for name, d, rec in variants:
            model = Model.load_dir(d, threads=args.threads)
            worst, same = check_fidelity(reference, model, audio, latencies[0])
            del model
            rows.append(FusionRow(name, rec["nodes_before"], rec["nodes_after"], rec["op_changes"], worst, same,
                                  worst <= FIDELITY_TOLERANCE and same))
        del reference
        if quant:  # for the speed run: the unfused baseline and every variant quantized the same way

            model_dir = quantized_copy(model_dir, quant[0], quant[1], dest=work / "unfused")
            for _, d, _ in variants:
                quantize_model_dir(d, quant[0], block_size=quant[1])
        print(f"streamasr bench fusion: {args.model}, fidelity of the fp32 graphs on {len(audio)} utterances at "
              f"{latencies[0]} ms; speed {'after ' + args.quant + ' quantization' if quant else 'in fp32'}\n")
        print(format_rows(rows, ort_changes))
        samples, source = speech_audio(args.seconds, cfg.frontend.sample_rate)
        speed = run_bench([model_dir, *[d for _, d, _ in variants]], latencies, args.threads, samples,
                          repeats=args.repeats, progress=_progress)
        names = {str(model_dir.name): "unfused", **{d.name: n for n, d, _ in variants}}
        for r in speed:
            r.model = names.get(r.model, r.model)
        print(f"\nspeed, interleaved in one process: {samples.size / cfg.frontend.sample_rate:.0f} s of {source}, "
              f"{args.threads} threads, {args.repeats} round(s)\n")
        print(format_table(speed, compare=True))
        if args.json:
            Path(args.json).write_text(json.dumps({"model": str(model_dir), "ort_session_changes": ort_changes,
                                                   "rows": [asdict(r) for r in rows],
                                                   "speed": [asdict(r) for r in speed]}, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def add_parser(bench_sub) -> None:
    import argparse

    p = bench_sub.add_parser("fusion", help="node counts, fidelity and speed of each operator fusion",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="fp32 model directory (unfused)")
    p.add_argument("--quant", default=None, metavar="METHOD[:BLOCK]",
                   help="quantize the unfused model and every fused variant this way before comparing them")
    p.add_argument("--latency", default="160,560", help="latency modes for speed; the first also for fidelity")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=20.0, help="audio seconds per speed run (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--utterances", type=int, default=3, help="utterances ($STREAMASR_SPEECH_DIR or the bundled speech) for the fidelity check")
    p.add_argument("--work-dir", default=None, help="where the fused copies are made (default: the temp dir)")
    p.add_argument("--json", default=None, metavar="OUT")
    p.set_defaults(func=cmd_fusion)
