"""The `streamasr` command line: one module per command group, each registering its own sub-commands.

User errors (bad audio, unknown model, bad option) print one line and exit 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import sys

from streamasr import __version__
from streamasr.cli import bench, convert, serve, transcribe, verify
from streamasr.errors import StreamASRError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamasr", description="Streaming speech recognition on CPU (ONNX Runtime)")
    parser.add_argument("--version", action="version", version=f"streamasr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (convert, transcribe, verify, serve, bench):
        group.register(sub)
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
