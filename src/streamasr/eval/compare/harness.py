"""The comparison run: load the systems, feed every utterance to each in turn, score and summarize.

Timing. Each system reports the steps it took (`backend.Step`). RTFx = audio seconds / compute seconds,
summed over utterances (as the Open ASR Leaderboard scripts compute it). Latencies replay the steps on a
simulated real-time clock: audio arrives at real time, a step starts when its audio has arrived and the
previous step is done, and its text is shown when it ends. `first_partial_s` is when the first non-empty
text is shown (from the utterance start; streaming and chunked modes only), `final_lag_s` how long after
the end of the audio the final text is shown. Both are means over utterances.

Accuracy reuses `bench wer`'s pieces: the leaderboard normalizer, jiwer alignments and the percentile
bootstrap over utterances per set (`eval/stats.py`). The mean over sets is the unweighted mean of set WERs;
its interval resamples utterances within every set (a stratified bootstrap). BSF = WER of a streaming or
chunked row / WER of the same backend and model in batch, when that row ran too. Random-weight rows get
speed, size and memory only: their text is recorded, never scored.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamasr.errors import StreamASRError
from streamasr.eval.compare.backend import SAMPLE_RATE, SystemInfo, Transcript
from streamasr.eval.compare.registry import check
from streamasr.eval.compare.spec import SystemSpec
from streamasr.eval.compare.worker import InProcess, SystemProcess
from streamasr.eval.datasets import Dataset, Item, open_dataset, slug
from streamasr.eval.normalize import is_scored_reference, normalize
from streamasr.eval.stats import bootstrap_ci, corpus_wer
from streamasr.eval.wer import score_record

SUMMARY_VERSION = 1
WARMUP_S = 2.0
RANDOM_WER = "random weights"


@dataclass
class Row:
    """One system's state during the run, then its summary."""

    spec: SystemSpec
    runner: object = None
    info: SystemInfo | None = None
    records: list[dict] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    rss_shared: bool = False
    file: object = None

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def scored(self) -> bool:
        return self.info is not None and not self.info.random_weights


def simulated_latencies(tr: Transcript, duration_s: float, streams: bool) -> tuple[float | None, float]:
    """(first partial, final lag) in seconds on the real-time clock described in the module docstring."""
    clock, first = 0.0, None
    for step in tr.steps:
        clock = max(clock, step.audio_end_s) + step.compute_s
        if first is None and step.text.strip():
            first = clock
    return (first if streams else None), clock - duration_s


def stratified_mean_ci(per_set: list[tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of set WERs, resampling utterances within each set."""
    per_set = [(e, w) for e, w in per_set if e.size and w.sum() > 0]
    if not per_set:
        return float("nan"), float("nan")
    if len(per_set) == 1:
        return bootstrap_ci(per_set[0][0], per_set[0][1], n_boot=n_boot, seed=seed, confidence=confidence)
    rng = np.random.default_rng(seed)
    total = np.zeros(n_boot)
    for e, w in per_set:
        idx = rng.integers(0, e.size, size=(n_boot, e.size))
        se, sw = e[idx].sum(axis=1), w[idx].sum(axis=1)
        total += se / np.maximum(sw, 1)
    total /= len(per_set)
    alpha = (1 - confidence) / 2
    return float(np.quantile(total, alpha)), float(np.quantile(total, 1 - alpha))


# ----------------------------------------------------------------------------- running
def _start(rows: list[Row], threads: int, in_process: bool) -> None:
    if in_process:
        for row in rows:
            row.runner = InProcess(row.spec.text, threads)
            row.info = row.runner.info
        return
    for row in rows:  # spawn all, then collect: the loads overlap
        row.runner = SystemProcess(row.spec.text, threads)
    for row in rows:
        row.info = row.runner.wait_loaded()


def _close(rows: list[Row]) -> None:
    for row in rows:
        if row.runner is not None:
            row.rss_shared = row.runner.shared_rss
            row.peak_rss_bytes = row.runner.close()
            row.runner = None


def _kill(rows: list[Row]) -> None:
    for row in rows:
        if isinstance(row.runner, SystemProcess):
            row.runner.kill()


def _record(row: Row, ds: Dataset, item: Item, duration: float, tr: Transcript, normalizer: str) -> dict:
    first, lag = simulated_latencies(tr, duration, row.info.streams)
    rec = {"system": row.label, "set": ds.name, "id": item.id, "ref": item.text, "hyp": tr.text,
           "audio_s": round(duration, 4), "processing_s": round(tr.processing_s, 6), "steps": len(tr.steps),
           "first_partial_s": None if first is None else round(first, 4), "final_lag_s": round(lag, 4)}
    if row.scored:
        score_record(rec, normalizer)
    else:
        rec["ref_norm"], rec["hyp_norm"] = normalize(item.text, normalizer), normalize(tr.text, normalizer)
        rec["not_scored"] = RANDOM_WER
    row.file.write(json.dumps(rec, ensure_ascii=False) + "\n")
    row.file.flush()
    row.records.append(rec)
    return rec


def _utterances(datasets: list[Dataset], max_samples: int | None, normalizer: str) -> list[tuple[Dataset, Item]]:
    out = []
    for ds in datasets:
        for item in ds.items(max_samples):
            if item.error:
                raise StreamASRError(item.error)
            if is_scored_reference(normalize(item.text, normalizer)):
                out.append((ds, item))
    if not out:
        raise StreamASRError("the datasets hold no scorable utterance")
    return out


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="compare", unit="utt·sys", file=sys.stderr, dynamic_ncols=True)


def _postfix(rows: list[Row]) -> str:
    parts = []
    for i, row in enumerate(rows, 1):
        if not row.scored:
            parts.append(f"#{i} random")
            continue
        e = sum(r["errors"] for r in row.records)
        n = sum(r["ref_words"] for r in row.records)
        parts.append(f"#{i} {100 * e / n:.1f}%" if n else f"#{i} -")
    return "WER " + " ".join(parts)


def _feed(batch: list[Row], work: list[tuple[Dataset, Item]], args, bar) -> None:
    warm = work[0][1].load(SAMPLE_RATE)[: int(WARMUP_S * SAMPLE_RATE)]
    for row in batch:  # first calls allocate and compile; keep them out of the figures
        row.runner.transcribe(warm)
    for ds, item in work:
        samples = item.load(SAMPLE_RATE)
        duration = samples.size / SAMPLE_RATE
        for row in batch:
            _record(row, ds, item, duration, row.runner.transcribe(samples), args.normalizer)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.set_postfix_str(_postfix(batch))


def run_comparison(args) -> dict:
    """Run every system over every utterance; write utterances/*.jsonl under args.out; return the summary."""
    specs = [check(text) for text in args.system]  # every spec checked before any model loads
    if not specs:
        raise StreamASRError("give at least one --system BACKEND:MODEL@MODE")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise StreamASRError(f"the same system is given twice: {min(x for x in labels if labels.count(x) > 1)}")
    datasets = [open_dataset(d) for d in args.dataset]
    if not datasets:
        raise StreamASRError("give at least one --dataset (manifest:PATH.jsonl or esb:CONFIG[:SPLIT])")
    names: set[str] = set()
    for ds in datasets:
        while ds.name in names:
            ds.name += "#2"
        names.add(ds.name)
    work = _utterances(datasets, args.max_samples, args.normalizer)
    out = Path(args.out)
    (out / "utterances").mkdir(parents=True, exist_ok=True)
    rows = [Row(spec) for spec in specs]
    for row in rows:
        row.file = (out / "utterances" / f"{slug(row.label)}.jsonl").open("w", encoding="utf-8")  # closed in run_comparison
    batches = [rows] if args.schedule == "interleaved" else [[r] for r in rows]
    bar = _progress(len(work) * len(rows), not args.no_progress)
    t0 = time.time()
    try:
        for batch in batches:
            _start(batch, args.threads, args.in_process)
            _feed(batch, work, args, bar)
            _close(batch)
    finally:
        _kill(rows)
        for row in rows:
            row.file.close()
        if bar is not None:
            bar.close()
    return summarize(args, rows, datasets, wall_s=time.time() - t0)


# ----------------------------------------------------------------------------- summary
def _num(x, nd: int = 6):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), nd)


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(args, rows: list[Row], datasets: list[Dataset], wall_s: float = 0.0) -> dict:
    systems = []
    for row in rows:
        recs = row.records
        audio = sum(r["audio_s"] for r in recs)
        proc = sum(r["processing_s"] for r in recs)
        entry = {"label": row.label, "system": row.spec.text, "backend": row.spec.backend,
                 "model": row.spec.model, "mode": row.spec.mode.to_dict(), **row.info.to_dict(),
                 "n_utterances": len(recs), "audio_s": round(audio, 3), "processing_s": round(proc, 4),
                 "rtfx": _num(audio / proc if proc > 0 else float("nan")),
                 "first_partial_s": _num(_mean([r["first_partial_s"] for r in recs]), 4),
                 "final_lag_s": _num(_mean([r["final_lag_s"] for r in recs]), 4),
                 "peak_rss_bytes": row.peak_rss_bytes,
                 "peak_rss_shared": row.rss_shared,
                 "sets": {}, "wer": None, "ci_low": None, "ci_high": None}
        if row.scored:
            per_set = []
            for ds in datasets:
                mine = [r for r in recs if r["set"] == ds.name]
                e = np.array([r["errors"] for r in mine], dtype=np.int64)
                w = np.array([r["ref_words"] for r in mine], dtype=np.int64)
                per_set.append((e, w))
                lo, hi = bootstrap_ci(e, w, n_boot=args.bootstrap, seed=args.seed)
                entry["sets"][ds.name] = {
                    "wer": _num(corpus_wer(e, w)), "ci_low": _num(lo), "ci_high": _num(hi), "n_utterances": len(mine),
                    "ref_words": int(w.sum()), "substitutions": sum(r["substitutions"] for r in mine),
                    "deletions": sum(r["deletions"] for r in mine), "insertions": sum(r["insertions"] for r in mine)}
            set_wers = [v["wer"] for v in entry["sets"].values()]
            lo, hi = stratified_mean_ci(per_set, args.bootstrap, args.seed)
            entry.update(wer=_num(_mean(set_wers)), ci_low=_num(lo), ci_high=_num(hi))
        else:
            entry["wer_note"] = RANDOM_WER
        systems.append(entry)
    _ratios(systems)
    return {"version": SUMMARY_VERSION, "normalizer": args.normalizer, "threads": args.threads,
            "schedule": args.schedule, "isolation": "in-process" if args.in_process else "process per system",
            "datasets": [{"name": d.name, "spec": d.spec} for d in datasets], "max_samples": args.max_samples,
            "bootstrap": {"replicates": args.bootstrap, "seed": args.seed, "confidence": 0.95,
                          "unit": "utterance", "ci": "percentile; mean over sets: stratified by set"},
            "timing": "RTFx = sum audio / sum compute; latencies on a simulated real-time clock (see harness.py)",
            "wall_s": round(wall_s, 1), "systems": systems}


def _ratios(systems: list[dict]) -> None:
    """BSF against the same backend+model in batch; speed and size against the first row."""
    batch = {(s["backend"], s["model"]): s for s in systems if s["mode"]["kind"] == "batch" and s["wer"] is not None}
    first = systems[0]
    for s in systems:
        ref = batch.get((s["backend"], s["model"]))
        s["bsf"] = (_num(s["wer"] / ref["wer"], 4) if ref is not None and s is not ref and s["wer"] is not None
                    and ref["wer"] else None)
        s["rtfx_vs_first"] = _num(s["rtfx"] / first["rtfx"], 4) if s["rtfx"] and first["rtfx"] else None
        s["size_vs_first"] = _num(s["size_bytes"] / first["size_bytes"], 4) if first["size_bytes"] else None
