"""`streamasr convert` and `streamasr analyze-sensitivity`: checkpoints into model directories, and the
per-layer table int4-mixed chooses from."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from streamasr.audio import read_audio
from streamasr.cli.common import random_build_progress
from streamasr.convert.random_model import ARCHITECTURES, RANDOM_PREFIX
from streamasr.errors import StreamASRError
from streamasr.model_config import ModelConfig
from streamasr.model_store import check_output, convert_source, source_kind
from streamasr.quant.optimize import FUSIONS, optimize_model_dir
from streamasr.quant.quantize import check_quant_options, quantize_model_dir
from streamasr.quant.sensitivity import analyze, choose_kept, format_report
from streamasr.speech import read_speech


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a NeMo checkpoint (.nemo or hub id) into a model directory")
    p.add_argument("source", nargs="?", help=".nemo file or Hugging Face repo id")
    p.add_argument("-o", "--output", required=True, help="output model directory")
    p.add_argument("--random", metavar="NAME", help="build a random-weight model of a named architecture "
                   f"({', '.join(ARCHITECTURES)}) for benchmarks and tests")
    p.add_argument("--quant", default="fp32", help="encoder weight precision: fp32 (default), int8, int8-nbits, "
                   "int8-dynamic, int4-rtn, int4-hqq, int4-kquant, int4-mixed")
    p.add_argument("--block-size", type=int, default=32, help="MatMulNBits block size: 16, 32, 64 or 128")
    p.add_argument("--accuracy-level", type=int, default=4, help="MatMulNBits accuracy_level (0-4)")
    p.add_argument("--sensitivity", default=None, metavar="TABLE.json",
                   help="int4-mixed: the table from `streamasr analyze-sensitivity` (default: measure it now on "
                   "the speech bundled with streamasr)")
    p.add_argument("--mixed-budget", type=float, default=0.1,
                   help="int4-mixed: fraction of the encoder's weights kept at higher precision (default: %(default)s)")
    p.add_argument("--mixed-kept", default="int8", choices=["int8", "int8-dynamic", "int8-nbits", "fp32"],
                   help="int4-mixed: precision of the kept layers (default: int8 = int8-dynamic)")
    p.add_argument("--fuse", default="none", metavar="LIST",
                   help="offline operator fusions (ORT transformers optimizer): none (default), all, or a comma "
                        "list such as skip_layer_norm; `streamasr bench fusion` measures each")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("analyze-sensitivity", help="per-layer output error of int4 quantization on real speech",
                       description="Quantize one layer (or MatMul) of an fp32 model directory at a time, stream "
                       "real speech through it and rank the layers by the error they cause; the table int4-mixed "
                       "uses.")
    p.add_argument("model", help="fp32 model directory")
    p.add_argument("-o", "--output", default=None, metavar="TABLE.json", help="write the table as JSON")
    p.add_argument("--method", default="int4-kquant", choices=["int4-kquant", "int4-rtn"])
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--granularity", default="layer", choices=["layer", "matmul"])
    p.add_argument("--latency", type=int, default=None, help="latency mode in ms (default: the model's)")
    p.add_argument("--audio", nargs="+", default=None, help="audio files (default: the speech bundled with "
                   "streamasr)")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="without --audio, use bundled utterances up to this many seconds in all (default: %(default)s)")
    p.add_argument("--budget", type=float, default=0.1, help="mark the groups int4-mixed would keep at this budget")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_analyze_sensitivity)


def _fusions(spec: str) -> set[str]:
    if not spec or spec == "none":
        return set()
    chosen = set(FUSIONS) if spec == "all" else {f.strip() for f in spec.split(",")}
    unknown = sorted(chosen - set(FUSIONS))
    if unknown:
        raise StreamASRError(f"unknown fusion {', '.join(unknown)}; choose from all, none, {', '.join(FUSIONS)}")
    return chosen


def cmd_convert(args: argparse.Namespace) -> int:
    source = RANDOM_PREFIX + args.random if args.random else args.source
    if not source:
        raise StreamASRError("give a SOURCE (.nemo file or hub repo id) or --random NAME")
    # every option is checked before a conversion that can take many minutes
    source_kind(source, directories=False)  # a .nemo file, a hub id or a known architecture
    output = check_output(Path(args.output))
    fusions = _fusions(args.fuse)
    quantizing = bool(args.quant) and args.quant != "fp32"
    if quantizing:
        check_quant_options(args.quant, args.block_size, args.accuracy_level, args.mixed_budget, args.mixed_kept,
                            args.sensitivity)

    def finish(work: Path) -> None:
        """Fuse and quantize in the conversion's own directory: the model appears at the output path only
        once all of it is done, so an interrupted quantization leaves no fp32 model that looks finished."""
        if fusions:  # first: the fusions match the fp32 graph only
            optimize_model_dir(work, fusions)
        if quantizing:
            quantize_model_dir(work, args.quant, block_size=args.block_size, accuracy_level=args.accuracy_level,
                               sensitivity=args.sensitivity, mixed_budget=args.mixed_budget,
                               mixed_kept=args.mixed_kept)

    t0 = time.perf_counter()
    out = convert_source(source, output, finish=finish, progress=random_build_progress(source))
    cfg = ModelConfig.load(out)
    print(f"converted {source} -> {out} ({cfg.size_bytes / 1e6:.1f} MB, {cfg.quantization.get('method')}, "
          f"latency modes {', '.join(str(m.latency_ms) for m in cfg.encoder.latency_modes)} ms) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_analyze_sensitivity(args: argparse.Namespace) -> int:
    if not Path(args.model, "config.json").is_file():
        raise StreamASRError(f"not a model directory: {args.model}")
    if args.audio:
        audio = {a: read_audio(a, 16000) for a in args.audio}
    else:
        audio = read_speech(total_seconds=args.max_seconds)
    report = analyze(Path(args.model), audio, args.latency, args.method, args.block_size, args.granularity,
                     threads=args.threads, progress=_progress_bar())
    print(format_report(report, [g.group for g in choose_kept(report, args.budget)]))
    if args.output:
        report.save(Path(args.output))
        print(f"\nwrote {args.output}")
    return 0


def _progress_bar():
    """A tqdm progress wrapper when tqdm is installed (the bench extra), else None."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda items: tqdm(items, desc="groups", unit="group", file=sys.stderr)
