"""`streamasr bench compare`: other ASR families beside Nemotron, in one run (the paper's Table 14).

    streamasr bench compare --dataset manifest:clips/manifest.jsonl \
        --system nemotron:models/en-int4@560 --system nemotron:models/en-int4@160 \
        --system whisper:tiny.en@batch --system whisper:base@chunk3s \
        --system 'parakeet-tdt:random:@chunk(5.6-0.8-1.6)' --threads 2 --out results/

--system BACKEND:MODEL@MODE, repeatable (see spec.py for the grammar; row 1 is the reference of the ratio
columns). MODEL is a hub id, a local directory or file, or `random:` (the real architecture with random
weights: speed, size and memory only; its WER cell says so). Systems run in a process each, interleaved per
utterance (`--schedule sequential` runs one after another when their memory does not fit together).

--out DIR receives summary.json, summary.md (the table, also printed), compare_pareto.png (WER against
RTFx, marker area = model size) and utterances/<system>.jsonl (per utterance: raw and normalized reference
and hypothesis, error counts, audio and compute seconds, simulated latencies).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamasr.errors import StreamASRError
from streamasr.eval.compare.harness import run_comparison
from streamasr.eval.compare.registry import BACKENDS
from streamasr.eval.compare.report import markdown, plot
from streamasr.eval.compare.spec import MODE_HELP
from streamasr.eval.normalize import NORMALIZERS
from streamasr.eval.results import write_summary


def run(args) -> int:
    if args.threads < 1:
        raise StreamASRError("--threads must be at least 1")
    if args.max_samples is not None and args.max_samples < 1:
        raise StreamASRError("--max-samples must be at least 1")
    if args.bootstrap < 10:
        raise StreamASRError("--bootstrap must be at least 10 replicates")
    summary = run_comparison(args)
    out = Path(args.out)
    png = write_summary(out, summary, markdown(summary), plot, "compare_pareto.png")
    print(f"\nwrote {out / 'summary.json'}, {out / 'summary.md'}, {png} and "
          f"{out / 'utterances'}/", file=sys.stderr)
    return 0


def add_parser(bench_sub) -> argparse.ArgumentParser:
    p = bench_sub.add_parser("compare", help="other ASR families beside Nemotron: WER, BSF, delay, RTFx, size, RSS",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", action="append", default=[], metavar="BACKEND:MODEL@MODE",
                   help=f"backends: {', '.join(BACKENDS)}; modes: {MODE_HELP}; repeatable")
    p.add_argument("--dataset", action="append", default=[],
                   help="manifest:PATH.jsonl or esb:CONFIG[:SPLIT]; repeatable")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per system (default: %(default)s)")
    p.add_argument("--out", default="results/compare", help="output directory (default: %(default)s)")
    p.add_argument("--max-samples", type=int, default=None, help="first N utterances of each set")
    p.add_argument("--normalizer", choices=NORMALIZERS, default="leaderboard", help="text normalizer")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--schedule", choices=["interleaved", "sequential"], default="interleaved",
                   help="interleaved: every utterance through each system in turn (all loaded at once); "
                        "sequential: one system after another (one in memory at a time)")
    p.add_argument("--in-process", action="store_true",
                   help="run the systems in this process (peak RSS is then shared by all rows)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p
