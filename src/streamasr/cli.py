"""The `streamasr` command line: convert, transcribe, verify, bench.

User errors (bad audio, unknown model, bad option) print one line and exit 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import StreamASRError

EXIT_USER_ERROR = 2


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    from .model_store import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model directory, .nemo file, Hugging Face repo id or random:NAME (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")


def _load(args, allow_random: bool = True):
    from .errors import ModelError
    from .model_store import resolve_model
    from .runtime import Model

    model = Model.load_dir(resolve_model(args.model), threads=args.threads)
    if model.config.random_weights and not allow_random:
        raise ModelError(f"{args.model} has random weights (a benchmark model); its transcripts are meaningless. "
                         "Pass --allow-random to run it anyway")
    return model


def _latency(model, requested: int | None) -> int:
    latency = requested if requested is not None else model.config.encoder.default_latency_ms
    model.config.encoder.mode(latency)  # raises a clear error for an unknown mode
    return latency


# ---------------------------------------------------------------- convert
def cmd_convert(args) -> int:
    from .convert.random_model import RANDOM_PREFIX
    from .model_config import ModelConfig
    from .model_store import convert_source

    source = RANDOM_PREFIX + args.random if args.random else args.source
    if not source:
        raise StreamASRError("give a SOURCE (.nemo file or hub repo id) or --random NAME")
    if not args.random and source.endswith(".nemo") and not Path(source).is_file():
        raise StreamASRError(f"no such .nemo file: {source}")
    t0 = time.perf_counter()
    out = convert_source(source, Path(args.output))
    if args.fuse and args.fuse != "none":  # first: the fusions match the fp32 graph only
        from .convert.optimize import FUSIONS, optimize_model_dir

        optimize_model_dir(out, set(FUSIONS) if args.fuse == "all" else {f.strip() for f in args.fuse.split(",")})
    if args.quant and args.quant != "fp32":
        from .convert.quantize import quantize_model_dir

        quantize_model_dir(out, args.quant, block_size=args.block_size, accuracy_level=args.accuracy_level,
                           sensitivity=args.sensitivity, mixed_budget=args.mixed_budget, mixed_kept=args.mixed_kept)
    cfg = ModelConfig.load(out)
    print(f"converted {source} -> {out} ({cfg.size_bytes / 1e6:.1f} MB, {cfg.quantization.get('method')}, "
          f"latency modes {', '.join(str(m.latency_ms) for m in cfg.encoder.latency_modes)} ms) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


# ---------------------------------------------------------------- transcribe
class _LiveLine:
    """Text as it arrives: on a terminal one line overwritten in place ("tty"); into a pipe the new text
    appended as it comes, then a newline ("append"); or nothing ("off")."""

    def __init__(self, mode: str):
        self.mode = mode
        self.shown = ""

    def update(self, text: str) -> None:
        if self.mode == "tty":
            import shutil

            width = shutil.get_terminal_size((100, 20)).columns - 1
            sys.stdout.write("\r\x1b[K" + text[-width:])
            self.shown = text
        elif self.mode == "append" and text.startswith(self.shown):
            sys.stdout.write(text[len(self.shown) :])
            self.shown = text
        sys.stdout.flush()

    def clear(self) -> None:
        """Remove the partial text from a terminal line (before a final is printed in its place)."""
        if self.mode == "tty" and self.shown:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
        self.shown = ""

    def finish(self, final_text: str) -> bool:
        """End the live line; True when the final text has been printed by it."""
        if self.mode == "tty":
            self.clear()
        elif self.mode == "append":
            rest = final_text[len(self.shown) :] if final_text.startswith(self.shown) else "\n" + final_text
            sys.stdout.write(rest + "\n")
        sys.stdout.flush()
        printed = self.mode == "append"
        self.shown = ""
        return printed


def _transcribe_samples(model, blocks, latency: int, live: _LiveLine, nemo_compat: bool):
    stream = model.stream(latency, nemo_compat=nemo_compat)
    t0 = time.perf_counter()
    for block in blocks:
        if stream.accept(block):
            live.update(stream.text)
    return stream.finish(), time.perf_counter() - t0


def cmd_transcribe(args) -> int:
    from .audio import iter_pcm, read_audio, stream_resample

    model = _load(args, allow_random=args.allow_random)
    latency = _latency(model, args.latency)
    block = int(model.sample_rate * 0.1)
    for name in args.audio:
        if name == "-":
            if args.raw_sample_rate is None:
                raise StreamASRError("reading raw PCM from stdin needs --raw-sample-rate")
            blocks = stream_resample(iter_pcm(encoding=args.raw_encoding), args.raw_sample_rate, model.sample_rate)
            # live text as it arrives, also into a pipe (e.g. a captioning process reading our stdout)
            live = _LiveLine("off" if args.json else "tty" if sys.stdout.isatty() else "append")
        else:
            samples = read_audio(name, model.sample_rate)
            blocks = (samples[i : i + block] for i in range(0, samples.size, block))
            live = _LiveLine("tty" if sys.stdout.isatty() and not args.json else "off")
        result, seconds = _transcribe_samples(model, blocks, latency, live, args.nemo_compat)
        if live.finish(result.text):
            continue
        if args.json:
            out = {"audio": name, **result.to_dict(), "processing_s": round(seconds, 4),
                   "rtfx": round(result.audio_s / seconds, 2) if seconds > 0 else None}
            print(json.dumps(out, ensure_ascii=False), flush=True)
        else:
            prefix = f"{name}: " if len(args.audio) > 1 else ""
            print(prefix + result.text, flush=True)
    return 0


# ---------------------------------------------------------------- verify
def cmd_verify(args) -> int:
    from .audio import read_audio
    from .convert.nemo_reference import load_nemo_model
    from .model_store import resolve_model
    from .runtime import Model
    from .verify import format_rows, verify

    if not Path(args.nemo).is_file():
        raise StreamASRError(f"no such .nemo file: {args.nemo}")
    model = Model.load_dir(Path(args.model_dir) if args.model_dir else resolve_model(args.nemo), threads=args.threads)
    audio = {a: read_audio(a, model.sample_rate) for a in args.audio}
    latencies = [int(x) for x in args.latency.split(",")] if args.latency else model.latency_modes
    for lat in latencies:
        model.config.encoder.mode(lat)
    nemo_model = load_nemo_model(args.nemo)
    rows = verify(nemo_model, model, audio, latencies)
    print(format_rows(rows))
    ok = all(r.tokens_identical and r.max_abs_diff <= args.tolerance for r in rows)
    print(f"\n{'PASS' if ok else 'FAIL'}: tokens identical and encoder max abs diff <= {args.tolerance:g} "
          f"in {sum(r.tokens_identical and r.max_abs_diff <= args.tolerance for r in rows)}/{len(rows)} runs")
    if args.quant:
        _verify_quantized(args, model, audio, latencies)
    return 0 if ok else 1


def _verify_quantized(args, model, audio, latencies) -> None:
    """verify --quant: each variant's token agreement and encoder error against the fp32 conversion."""
    from .bench.fidelity import compare
    from .convert.quantize import parse_variant, quantized_copy
    from .model_config import ModelConfig
    from .runtime import Model

    head = ["variant", "size MB", "latency", "token agreement vs fp32", "tokens fp32/quant", "identical",
            "enc max abs", "enc mean rel err", "enc cosine mean", "enc cosine min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec in args.quant.split(","):
        method, block = parse_variant(spec.strip(), args.block_size)
        qdir = quantized_copy(model.directory, method, block)
        qmodel = Model.load_dir(qdir, threads=args.threads)
        rows = [r for r in compare(model, qmodel, audio, latencies) if r.audio == "ALL" or len(audio) == 1]
        size = ModelConfig.load(qdir).size_bytes / 1e6
        for r in rows:
            lines.append(f"| {spec.strip()} | {size:.0f} | {r.latency_ms} ms | {r.token_agreement:.4f} | "
                         f"{r.tokens_reference}/{r.tokens_model} | {'yes' if r.identical else 'no'} | {r.max_abs:.3g} | "
                         f"{r.mean_rel:.4f} | {r.cosine_mean:.5f} | {r.cosine_min:.5f} |")
    print(f"\nquantized variants against the fp32 conversion {model.directory} "
          f"({model.config.size_bytes / 1e6:.0f} MB), all audio pooled per latency:\n")
    print("\n".join(lines))


def cmd_analyze_sensitivity(args) -> int:
    from .audio import read_audio
    from .convert.sensitivity import analyze, choose_kept, format_report

    if not Path(args.model, "config.json").is_file():
        raise StreamASRError(f"not a model directory: {args.model}")
    if args.audio:
        audio = {a: read_audio(a, 16000) for a in args.audio}
    else:
        from .shared_speech import SPEECH_DIR_ENV, find_speech_dir, read_speech

        d = find_speech_dir()
        if d is None:
            raise StreamASRError(f"no shared speech found (set {SPEECH_DIR_ENV} or pass --audio)")
        audio, total = {}, 0.0
        for name, samples in read_speech(d).items():
            if total >= args.max_seconds:
                break
            audio[name] = samples
            total += len(samples) / 16000
    try:
        from tqdm import tqdm

        def progress(items):
            return tqdm(items, desc="groups", unit="group", file=sys.stderr)
    except ImportError:
        progress = None
    report = analyze(Path(args.model), audio, args.latency, args.method, args.block_size, args.granularity,
                     threads=args.threads, progress=progress)
    print(format_report(report, [g.group for g in choose_kept(report, args.budget)]))
    if args.output:
        report.save(Path(args.output))
        print(f"\nwrote {args.output}")
    return 0


# ---------------------------------------------------------------- main
# bench name -> "module:add_parser"; each add_parser(bench_subparsers) registers its own options
BENCHES: dict[str, str] = {
    "serve": "streamasr.serve.bench:add_parser",
    "wer": "streamasr.bench.wer:add_parser",
    "speed": "streamasr.bench.speed:add_parser",
    "fidelity": "streamasr.bench.fidelity:add_parser",
    "fusion": "streamasr.bench.fusion:add_parser",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="streamasr", description="Streaming speech recognition on CPU (ONNX Runtime)")
    parser.add_argument("--version", action="version", version=f"streamasr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a NeMo checkpoint (.nemo or hub id) into a model directory")
    p.add_argument("source", nargs="?", help=".nemo file or Hugging Face repo id")
    p.add_argument("-o", "--output", required=True, help="output model directory")
    p.add_argument("--random", metavar="NAME", help="build a random-weight model of a named architecture "
                   "(nemotron-speech-streaming-en-0.6b, tiny-a, tiny-b) for benchmarks and tests")
    p.add_argument("--quant", default="fp32", help="encoder weight precision: fp32 (default), int8, int8-nbits, "
                   "int8-dynamic, int4-rtn, int4-hqq, int4-kquant, int4-mixed")
    p.add_argument("--block-size", type=int, default=32, help="MatMulNBits block size: 16, 32, 64 or 128")
    p.add_argument("--accuracy-level", type=int, default=4, help="MatMulNBits accuracy_level (0-4)")
    p.add_argument("--sensitivity", default=None, metavar="TABLE.json",
                   help="int4-mixed: the table from `streamasr analyze-sensitivity` (default: measure it now on "
                   "the shared speech)")
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
    p.add_argument("--audio", nargs="+", default=None, help="audio files (default: the shared speech)")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="use shared-speech utterances up to this many seconds in all (default: %(default)s)")
    p.add_argument("--budget", type=float, default=0.1, help="mark the groups int4-mixed would keep at this budget")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_analyze_sensitivity)

    p = sub.add_parser("transcribe", help="transcribe audio files (or raw PCM on stdin) in streaming mode")
    p.add_argument("audio", nargs="+", help="audio files (WAV/FLAC/OGG), or - for raw PCM on stdin")
    _add_model_arg(p)
    p.add_argument("--latency", type=int, default=None, help="latency mode in ms (default: the model's, 560)")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    p.add_argument("--raw-sample-rate", type=int, default=None, help="sample rate of raw PCM on stdin")
    p.add_argument("--raw-encoding", default="s16le", choices=["s16le", "f32le"])
    p.add_argument("--nemo-compat", action="store_true",
                   help="reproduce NeMo's loop exactly (drops a final partial chunk shorter than 80 ms of frames)")
    p.add_argument("--allow-random", action="store_true", help="run a random-weight benchmark model anyway")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("verify", help="compare NeMo's own streaming output with streamasr's, per latency mode")
    p.add_argument("nemo", help="the .nemo checkpoint")
    p.add_argument("audio", nargs="+")
    p.add_argument("--model-dir", default=None, help="converted model directory (default: convert into the cache)")
    p.add_argument("--latency", default=None, help="comma-separated modes in ms (default: all)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max abs encoder difference to pass")
    p.add_argument("--quant", default=None, metavar="VARIANTS",
                   help="also show quantized variants against fp32, e.g. int8,int4-kquant,int4-kquant:128,"
                   "int4-mixed (each made once, beside the fp32 model directory)")
    p.add_argument("--block-size", type=int, default=32, help="block size of --quant variants without one")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_verify)

    from .serve.commands import register as register_serve

    register_serve(sub)  # serve, client, mic
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    import importlib

    for target in BENCHES.values():
        module_name, func_name = target.split(":")
        getattr(importlib.import_module(module_name), func_name)(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StreamASRError as exc:
        print(f"streamasr: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
