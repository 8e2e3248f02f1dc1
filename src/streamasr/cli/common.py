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


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model directory, .nemo file, Hugging Face repo id or random:NAME (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")


def random_build_progress(source: str | None) -> Progress | None:
    """For a `random:NAME` source, a progress callback printing each build step to stderr (the first build
    takes about a minute, which a command should not spend silent); None for any other source."""
    if not str(source or "").startswith(RANDOM_PREFIX):
        return None
    label = f"building random {str(source)[len(RANDOM_PREFIX):]}"
    return lambda step: print(f"streamasr: {label}: {step}", file=sys.stderr, flush=True)


def load_model(args: argparse.Namespace, allow_random: bool = True) -> Model:
    """The model `--model` names (converted into the cache on first use), refusing random weights unless
    allowed: their transcripts are meaningless."""
    model = Model.load_dir(resolve_model(args.model, progress=random_build_progress(args.model)), threads=args.threads)
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
