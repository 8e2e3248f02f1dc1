"""`streamasr transcribe`: audio files (or raw PCM on stdin) through a stream, text live as it comes.

`--format text|json|srt|vtt|tsv` writes documents (streamasr.formats) whose segments are the runtime
endpointer's utterances, with words and times: the same segments, and so the same subtitle files, as the
server's `POST /v1/audio/transcriptions` gives for the same audio. `--output-dir DIR` writes one file per input.
`--engine ray` transcribes a manifest, a folder or a glob of files across a Ray cluster (streamasr.cli.bulk),
writing the same files, one per input, with the same function (`transcribe_document`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from streamasr.audio import iter_audio, iter_pcm, open_audio_file, stream_resample
from streamasr.cli import bulk, common
from streamasr.cli.common import (
    LiveLine,
    add_fusion_args,
    add_model_arg,
    fusion_options,
    load_model,
    prepare_output_dir,
    read_fusion_args,
)
from streamasr.errors import StreamASRError
from streamasr.formats import EXTENSIONS, Segment, SegmentCollector, render
from streamasr.runtime import Model, Result
from streamasr.runtime.decoder import Token
from streamasr.runtime.encoder import EncodedChunk
from streamasr.runtime.endpoint import EndpointConfig, Endpointer, Final

#: --format choices; `json` is OpenAI's verbose_json document (text, segments, words), as the server writes it
FORMATS = ("text", "json", "srt", "vtt", "tsv")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files (or raw PCM on stdin) in streaming mode")
    p.add_argument("audio", nargs="*", help="audio files (WAV/FLAC/OGG), or - for raw PCM on stdin; with "
                   "--engine ray: a manifest (.jsonl with \"audio\" paths relative to it), a folder or a glob")
    add_model_arg(p)
    p.add_argument("--latency", type=int, default=None, help="latency mode in ms (default: the model's)")
    p.add_argument("--language", default=None, metavar="LOCALE",
                   help="a multilingual model's language (a key of its prompt dictionary, e.g. de-DE, or auto: "
                        "the model picks and tags each segment); default en-US")
    p.add_argument("--list-languages", action="store_true",
                   help="print the languages the model offers (and its latency modes) and exit")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per input on stdout (tokens and times)")
    out.add_argument("--format", choices=FORMATS, default=None,
                     help="output document: plain text, json (OpenAI verbose_json: segments and words with "
                          "times), srt or vtt subtitles, or tsv (start and end in ms, text); segments are the "
                          "endpointer's utterances (800 ms of silence, at most 30 s)")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="write one file per input into DIR (NAME.txt/.json/.srt/.vtt/.tsv; stdin: stdin.EXT) "
                        "instead of printing; default format text")
    p.add_argument("--raw-sample-rate", type=int, default=None, help="sample rate of raw PCM on stdin")
    p.add_argument("--raw-encoding", default="s16le", choices=["s16le", "f32le"])
    p.add_argument("--nemo-compat", action="store_true",
                   help="reproduce NeMo's loop exactly (drops a final partial chunk shorter than 80 ms of frames)")
    p.add_argument("--allow-random", action="store_true", help="run a random-weight benchmark model anyway")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default): one process; ray: bulk transcription, one task per file across a Ray "
                        "cluster's workers (model loaded once per worker) into --output-dir, skipping files whose "
                        "output exists, failed files recorded in OUT/errors.jsonl (exit status 1 if any failed)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --engine ray: an existing cluster (ray://HOST:10001 or auto); default: a local one")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --engine ray: worker actors, one model each (default: the cluster's CPUs / --threads)")
    add_fusion_args(p)
    p.set_defaults(func=cmd_transcribe)


def transcribe_blocks(model: Model, blocks, latency: int, live: LiveLine, nemo_compat: bool,
                      endpoint: EndpointConfig | None = None,
                      fusion: dict | None = None, language: str | None = None) -> tuple[Result, float, list[Segment]]:
    """Stream the blocks through one stream, showing the text as it grows; (result, seconds of compute,
    segments). With `endpoint`, an Endpointer follows the stream through its `on_chunk` observer (as `mic`
    and the server do: after every chunk, then the last final at the end) and its finals become the
    segments; without it there are none."""
    finals: list[Final] = []
    endpointer: Endpointer | None = None

    def after_chunk(chunk: EncodedChunk, tokens: list[Token]) -> None:
        finals.extend(endpointer.update())

    stream = model.stream(latency, nemo_compat=nemo_compat, on_chunk=after_chunk if endpoint else None,
                          language=language, **(fusion or {}))
    if endpoint is not None:
        endpointer = Endpointer(stream, endpoint)
    t0 = time.perf_counter()
    for block in blocks:
        if endpointer is not None:
            endpointer.accept_audio(block)
        if stream.accept(block):
            live.update(stream.text)
    stream.on_chunk = None  # the tail's chunks are closed by the last final, as in the server's session
    result = stream.finish()
    segments: list[Segment] = []
    if endpointer is not None:
        finals.extend(endpointer.finish())
        collector = SegmentCollector(model.config.frame_seconds)
        for final in finals:
            collector.add(final.to_event(), stream.tokens)
        segments = collector.segments
    return result, time.perf_counter() - t0, segments


def describe_languages(model: Model) -> str:
    """`--list-languages`: the model's languages (keys sharing a prompt slot on one line) and latency modes."""
    modes = ", ".join(f"{m} ms" + (" (default)" if m == model.config.encoder.default_latency_ms else "")
                      for m in model.latency_modes)
    if not model.languages:
        return f"{model.config.model_id}: no language prompt (one language); latency modes: {modes}"
    by_slot: dict[int, list[str]] = {}
    for key, slot in model.languages.items():
        by_slot.setdefault(slot, []).append(key)
    lines = [f"{model.config.model_id}: {len(model.languages)} language keys in {len(by_slot)} prompt slots "
             f"(default {model.default_language}); latency modes: {modes}"]
    lines += [f"  {slot:3d}  {', '.join(keys)}" for slot, keys in sorted(by_slot.items())]
    return "\n".join(lines)


def render_document(fmt: str, result: Result, segments: list[Segment], to_file: bool) -> str:
    """The --format document of one input: `json` is OpenAI's verbose_json, indented in a file."""
    fmt = "verbose_json" if fmt == "json" else fmt
    text = render(fmt, result.text.strip(), segments, result.audio_s, language=result.language or "en")
    if fmt == "verbose_json" and to_file:
        text = json.dumps(json.loads(text), ensure_ascii=False, indent=1) + "\n"
    return text


def transcribe_document(model: Model, name: str, fmt: str, latency: int, nemo_compat: bool) -> tuple[str, Result]:
    """One audio file's --output-dir document (and its result), with no live text: what `--engine ray`'s
    workers run for each file, the same as the single-process loop writes."""
    blocks = iter_audio(name, model.sample_rate, block_s=0.1)
    result, _, segments = transcribe_blocks(model, blocks, latency, LiveLine("off"), nemo_compat, EndpointConfig())
    return render_document(fmt, result, segments, to_file=True), result


def planned_outputs(args: argparse.Namespace) -> dict[str, Path]:
    """Input -> the file it is written to under --output-dir (NAME.EXT; stdin: stdin.EXT). Two inputs that
    would write the same file are an error, said before any work."""
    if args.output_dir is None:
        return {}
    return common.output_paths(args.audio, Path(args.output_dir), EXTENSIONS[args.format])


def check_inputs(args: argparse.Namespace) -> None:
    """The inputs' problems (a missing, unreadable or empty file, a directory, stdin without its rate) and the
    output options' said at once: before the model is resolved, which on first use downloads and converts it
    for minutes. Only the headers are read here."""
    for name in args.audio:
        if name == "-":
            if args.raw_sample_rate is None:
                raise StreamASRError("reading raw PCM from stdin needs --raw-sample-rate")
            continue
        open_audio_file(name).close()
    if args.output_dir is not None:
        if args.format is None:
            args.format = "text"
        prepare_output_dir(args.output_dir)
    elif args.format in ("srt", "vtt", "tsv") and len(args.audio) > 1:
        raise StreamASRError(f"{len(args.audio)} inputs would print their {args.format} files one after another on "
                             "stdout; give --output-dir DIR to write one file per input")
    planned_outputs(args)


def _write(path: Path, text: str) -> None:
    """Write through a temporary name and rename, so a killed run leaves no half-written file that a rerun
    or a reader would take for a finished one."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise StreamASRError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_transcribe(args: argparse.Namespace) -> int:
    if args.list_languages:
        model = load_model(args, allow_random=True)
        print(describe_languages(model))
        return 0
    if not args.audio:
        raise StreamASRError("no audio given: name audio files (or - for raw PCM on stdin)")
    if args.engine == "ray":
        if args.hotwords is not None or args.hotwords_file is not None or args.lm is not None:
            raise StreamASRError("--hotwords, --hotwords-file and --lm are not available with --engine ray")
        if args.language is not None:
            raise StreamASRError("--language is not available with --engine ray")
        return bulk.cmd_bulk(args, transcribe_document, _write)
    if args.ray_address or args.workers is not None:
        raise StreamASRError("--ray-address and --workers need --engine ray")
    check_inputs(args)
    phrases = read_fusion_args(args)
    model = load_model(args, allow_random=args.allow_random)
    latency = model.latency(args.latency)
    language = model.language(args.language)
    fusion = fusion_options(args, model, phrases)
    paths = planned_outputs(args)
    document = args.format not in (None, "text") or args.output_dir is not None
    for name in args.audio:
        if name == "-":
            if args.raw_sample_rate is None:
                raise StreamASRError("reading raw PCM from stdin needs --raw-sample-rate")
            blocks = stream_resample(iter_pcm(encoding=args.raw_encoding), args.raw_sample_rate, model.sample_rate)
            # live text as it arrives, also into a pipe (e.g. a captioning process reading our stdout)
            live = LiveLine("off" if args.json or document else "tty" if sys.stdout.isatty() else "append")
        else:
            # in blocks, resampled as a stream: memory stays flat however long the file (opened and checked
            # here, so a bad file is one line before any work)
            blocks = iter_audio(name, model.sample_rate, block_s=0.1)
            live = LiveLine("tty" if sys.stdout.isatty() and not args.json and args.format in (None, "text")
                            else "off")
        result, seconds, segments = transcribe_blocks(model, blocks, latency, live, args.nemo_compat,
                                                      EndpointConfig() if document or (args.json and model.languages) else None, fusion,
                                                      language)
        if live.finish(result.text):
            continue
        if document:
            text = render_document(args.format, result, segments, to_file=name in paths)
            if name in paths:
                _write(paths[name], text)
                print(f"streamasr: wrote {paths[name]}", file=sys.stderr, flush=True)
            else:
                sys.stdout.write(text)
                sys.stdout.flush()
        elif args.json:
            out = {"audio": name, **result.to_dict(), "processing_s": round(seconds, 4),
                   "rtfx": round(result.audio_s / seconds, 2) if seconds > 0 else None}
            if result.language is not None:  # each utterance's language (auto mode: as the model tagged it)
                out["segments"] = [{"text": s.text, "start_s": s.start, "end_s": s.end, "language": s.language}
                                   for s in segments if s.text]
            print(json.dumps(out, ensure_ascii=False), flush=True)
        else:
            prefix = f"{name}: " if len(args.audio) > 1 else ""
            print(prefix + result.text, flush=True)
    return 0
