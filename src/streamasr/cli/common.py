"""What the commands share: the model and latency arguments, loading, and the live line of partial text."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from streamasr.convert.random_model import RANDOM_PREFIX
from streamasr.errors import ModelError, StreamASRError
from streamasr.model_store import DEFAULT_MODEL, Progress, resolve_model
from streamasr.runtime import Model
from streamasr.runtime.boosting import (
    DEFAULT_CONTEXT_SCORE,
    DEFAULT_DEPTH_SCALING,
    DEFAULT_SCORE,
    HotwordError,
    PhraseSpec,
    parse_phrase,
    read_phrase_file,
)
from streamasr.runtime.ngram_lm import DEFAULT_WEIGHT as DEFAULT_LM_WEIGHT


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model directory, .nemo file, Hugging Face repo id or random:NAME (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")


def add_fusion_args(p: argparse.ArgumentParser) -> None:
    """Hotwords and n-gram LM fusion: NeMo's knobs under streamasr names, with NeMo's recommended values."""
    g = p.add_argument_group("hotwords and language model (NeMo's phrase boosting and n-gram LM fusion)")
    g.add_argument("--hotwords", nargs="+", default=None, metavar="PHRASE",
                   help="phrases to boost, case kept (after the audio files, or they are taken for phrases)")
    g.add_argument("--hotwords-file", default=None, metavar="FILE",
                   help="UTF-8 file, one phrase per line, optionally PHRASE:WEIGHT (its own context score)")
    g.add_argument("--hotword-score", type=float, default=DEFAULT_SCORE,
                   help="NeMo's boosting_tree_alpha (default %(default)s; 0 turns boosting off)")
    g.add_argument("--hotword-context-score", type=float, default=DEFAULT_CONTEXT_SCORE,
                   help="NeMo's context_score: bonus of a phrase's first token (default %(default)s)")
    g.add_argument("--hotword-depth-scaling", type=float, default=DEFAULT_DEPTH_SCALING,
                   help="NeMo's depth_scaling for the tokens after the first (default %(default)s)")
    g.add_argument("--hotword-max-bonus", type=float, default=None, metavar="NATS",
                   help="cap: no token gains more than this (log-probability) over a token outside every "
                        "phrase (default: no cap, as NeMo)")
    g.add_argument("--lm", default=None, metavar="ARPA",
                   help="word-piece n-gram LM over the model's tokens (ARPA in NeMo's encoding, token i = chr(i+100))")
    g.add_argument("--lm-weight", type=float, default=DEFAULT_LM_WEIGHT,
                   help="NeMo's ngram_lm_alpha (default %(default)s)")


def read_fusion_args(args: argparse.Namespace) -> list[PhraseSpec] | None:
    """The phrases of --hotwords and --hotwords-file (both may be given), and the weights checked, before
    the model is loaded: a bad file or number is one line before any work."""
    for name in ("hotword_score", "hotword_context_score", "hotword_depth_scaling", "lm_weight"):
        value = getattr(args, name)
        if not value >= 0:
            raise HotwordError(f"--{name.replace('_', '-')} must be a number >= 0, got {value}")
    if args.hotword_max_bonus is not None and not args.hotword_max_bonus > 0:
        raise HotwordError(f"--hotword-max-bonus must be a positive number, got {args.hotword_max_bonus}")
    if args.lm is not None and not Path(args.lm).is_file():
        raise StreamASRError(f"--lm {args.lm}: no such file")
    if args.hotwords is None and args.hotwords_file is None:
        return None
    phrases = [parse_phrase(p, " (--hotwords)") for p in args.hotwords or []]
    if args.hotwords_file is not None:
        phrases += read_phrase_file(args.hotwords_file)
    return phrases


def fusion_options(args: argparse.Namespace, model: Model, phrases: list[PhraseSpec] | None) -> dict:
    """`Model.stream` keyword arguments for the fusion options, compiled once for every stream."""
    options: dict = {}
    if phrases is not None:
        options["hotwords"] = model.hotwords(phrases, score=args.hotword_score,
                                             context_score=args.hotword_context_score,
                                             depth_scaling=args.hotword_depth_scaling,
                                             max_bonus=args.hotword_max_bonus)
    if args.lm is not None:
        options["lm"] = model.load_lm(args.lm, args.lm_weight)
    return options


def output_paths(names: list, out_dir: Path, ext: str) -> dict:
    """Input -> the file it is written to under `out_dir`: NAME.EXT after the input's stem (stdin, `-`:
    stdin.EXT), as both the single-process and the Ray path name them. Two inputs that would write the same
    file are an error, said before any work."""
    paths: dict = {}
    seen: dict[Path, object] = {}
    for name in names:
        path = Path(out_dir) / f"{'stdin' if str(name) == '-' else Path(name).stem}.{ext}"
        if path in seen:
            raise StreamASRError(f"{seen[path]} and {name} would both be written to {path}; transcribe them into "
                                 "different --output-dir folders")
        seen[path] = name
        paths[name] = path
    return paths


def random_build_progress(source: str | None) -> Progress | None:
    """For a `random:NAME` source, a progress callback printing each build step to stderr (the first build
    takes about a minute, which a command should not spend silent); None for any other source."""
    if not str(source or "").startswith(RANDOM_PREFIX):
        return None
    label = f"building random {str(source)[len(RANDOM_PREFIX):]}"
    return lambda step: print(f"streamasr: {label}: {step}", file=sys.stderr, flush=True)


def load_model(args: argparse.Namespace, allow_random: bool = True, release_mapped: bool = True) -> Model:
    """The model `--model` names (converted into the cache on first use), refusing random weights unless
    allowed: their transcripts are meaningless. `release_mapped`: see `Model.load_dir`."""
    model = Model.load_dir(resolve_model(args.model, progress=random_build_progress(args.model)), threads=args.threads,
                           release_mapped=release_mapped)
    if model.config.random_weights and not allow_random:
        raise ModelError(f"{args.model} has random weights (a benchmark model); its transcripts are meaningless. "
                         "Pass --allow-random to run it anyway")
    return model


class LiveLine:
    """Text as it arrives: on a terminal one line overwritten in place ("tty"); into a pipe the new text
    appended as it comes, then a newline ("append"); or nothing ("off")."""

    def __init__(self, mode: str):
        self.mode = mode
        self.shown = ""

    def update(self, text: str) -> None:
        if self.mode == "tty":
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


def prepare_output_dir(path: str | Path) -> Path:
    """`--output-dir`, created if needed, or one clear error (a file there, not creatable, not writable)
    before any transcription starts."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise StreamASRError(f"--output-dir {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StreamASRError(f"cannot create --output-dir {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK):
        raise StreamASRError(f"--output-dir {out} is not writable")
    return out
