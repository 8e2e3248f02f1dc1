"""How a benchmark that scores systems on datasets leaves its results: one folder per run.

`bench wer` and `bench compare` both write `summary.json` (everything, for scripts), `summary.md` (the table,
also printed) and a Pareto plot beside their per-utterance records, so both go through `write_summary`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_summary(out: Path, summary: dict, table: str, plot: Callable[[dict, Path], None], plot_name: str) -> Path:
    """Write summary.json, summary.md and the plot `plot_name` into `out`, print the table; returns the plot's
    path."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (out / "summary.md").write_text(table + "\n")
    plot(summary, out / plot_name)
    print(table)
    return out / plot_name
