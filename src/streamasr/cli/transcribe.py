"""`streamasr transcribe`: audio files (or raw PCM on stdin) through a stream, text live as it comes."""

from __future__ import annotations

import argparse
import json
import sys
import time

from streamasr.audio import iter_audio, iter_pcm, open_audio_file, stream_resample
from streamasr.cli.common import LiveLine, add_model_arg, load_model
from streamasr.errors import StreamASRError
from streamasr.runtime import Model, Result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files (or raw PCM on stdin) in streaming mode")
    p.add_argument("audio", nargs="+", help="audio files (WAV/FLAC/OGG), or - for raw PCM on stdin")
    add_model_arg(p)
    p.add_argument("--latency", type=int, default=None, help="latency mode in ms (default: the model's, 560)")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    p.add_argument("--raw-sample-rate", type=int, default=None, help="sample rate of raw PCM on stdin")
    p.add_argument("--raw-encoding", default="s16le", choices=["s16le", "f32le"])
    p.add_argument("--nemo-compat", action="store_true",
                   help="reproduce NeMo's loop exactly (drops a final partial chunk shorter than 80 ms of frames)")
    p.add_argument("--allow-random", action="store_true", help="run a random-weight benchmark model anyway")
    p.set_defaults(func=cmd_transcribe)


def transcribe_blocks(model: Model, blocks, latency: int, live: LiveLine, nemo_compat: bool) -> tuple[Result, float]:
    """Stream the blocks through one stream, showing the text as it grows; (result, seconds of compute)."""
    stream = model.stream(latency, nemo_compat=nemo_compat)
    t0 = time.perf_counter()
    for block in blocks:
        if stream.accept(block):
            live.update(stream.text)
    return stream.finish(), time.perf_counter() - t0


def check_inputs(args: argparse.Namespace) -> None:
    """The inputs' problems (a missing, unreadable or empty file, a directory, stdin without its rate) said at
    once: before the model is resolved, which on first use downloads and converts it for minutes. Only the
    headers are read here."""
    for name in args.audio:
        if name == "-":
            if args.raw_sample_rate is None:
                raise StreamASRError("reading raw PCM from stdin needs --raw-sample-rate")
            continue
        open_audio_file(name).close()


def cmd_transcribe(args: argparse.Namespace) -> int:
    check_inputs(args)
    model = load_model(args, allow_random=args.allow_random)
    latency = model.latency(args.latency)
    for name in args.audio:
        if name == "-":
            if args.raw_sample_rate is None:
                raise StreamASRError("reading raw PCM from stdin needs --raw-sample-rate")
            blocks = stream_resample(iter_pcm(encoding=args.raw_encoding), args.raw_sample_rate, model.sample_rate)
            # live text as it arrives, also into a pipe (e.g. a captioning process reading our stdout)
            live = LiveLine("off" if args.json else "tty" if sys.stdout.isatty() else "append")
        else:
            # in blocks, resampled as a stream: memory stays flat however long the file (opened and checked
            # here, so a bad file is one line before any work)
            blocks = iter_audio(name, model.sample_rate, block_s=0.1)
            live = LiveLine("tty" if sys.stdout.isatty() and not args.json else "off")
        result, seconds = transcribe_blocks(model, blocks, latency, live, args.nemo_compat)
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
