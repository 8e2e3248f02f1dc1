"""`streamasr bench ...`: each benchmark in eval/ registers its own options."""

from __future__ import annotations

import argparse

from streamasr.eval import fidelity, fusion, serve_load, sherpa_peer, soak, speed, wer
from streamasr.eval.compare import cli as compare


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    for module in (serve_load, soak, wer, speed, fidelity, fusion, compare, sherpa_peer):
        module.add_parser(bench_sub)
