"""`streamasr bench wer`: streaming WER on the Open ASR Leaderboard English sets or local manifests.

    streamasr bench wer --model models/int4 --model models/fp32 --dataset esb:librispeech:test.clean \
        --latency 560 --max-samples 500 --out results/

Per (system, set) row: corpus WER (Whisper English normalizer as the leaderboard applies it, see
`normalize.py`), a 95% bootstrap interval over utterances, utterances and audio hours, RTFx (audio seconds /
processing seconds, audio decoding excluded), mean compute time per encoder chunk, and model size; the
unweighted mean WER over sets per system; and for every pair of systems on a set, a paired bootstrap of the
WER difference.

Multilingual sets (`fleurs:de_de`, manifests whose lines carry a "language"): a prompt model transcribes each
utterance with that language's prompt (`--language` overrides it for every utterance, e.g. `auto`); a
locale the model does not know stops the run before it starts, naming the manifest line. ja, zh, ko and th
are scored by CER (characters, spaces removed), other languages by WER, non-English text with Whisper's basic
normalizer (see `languages.py`, `normalize.py`). A per-language table (pooled over sets, with the prompt used,
and in `auto` mode how often the detected language was right) ends with the macro average over languages;
a set of several languages reports the macro average over its languages as its row.

Streaming (default) feeds each utterance in 80 ms blocks, as a microphone would, through `Model.stream` in
the `--latency` mode; a block that completes encoder chunks is timed and its time divided by the chunks it ran
(the mean per-chunk latency is the compute a live stream waits for after each chunk of audio). `--offline`
hands the whole utterance to the stream in one call in the *largest* latency mode: the exported encoder is a
streaming step with a bounded attention context, so this is the most accurate mode of the same graph, not
NeMo's unlimited-context offline encoder.

Outputs under --out: utterances/<system>__<set>.jsonl (per utterance: reference, hypothesis, normalized
forms, substitutions/deletions/insertions, timings; or the error of a skipped utterance), summary.json,
summary.md (the table printed on stdout) and wer_pareto.png. Re-running with the same --out reuses the
finished utterances of every row (results are appended and flushed per utterance), so an interrupted run
resumes where it stopped; --fresh starts over.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from streamasr.errors import StreamASRError
from streamasr.eval.datasets import Dataset, Item, dataset_specs, open_dataset, slug
from streamasr.eval.languages import (
    AUTO,
    display_locale,
    metric_for,
    prompt_for,
    same_language,
)
from streamasr.eval.nemo_reference import load_nemo_model, nemo_streaming
from streamasr.eval.normalize import (
    NORMALIZERS,
    is_scored_reference,
    normalize,
    normalizer_for,
)
from streamasr.eval.ray_engine import RayEngine
from streamasr.eval.results import write_summary
from streamasr.eval.stats import bootstrap_ci, corpus_wer, paired_bootstrap, unit_errors
from streamasr.eval.utterance import BLOCK_S, transcribe_item
from streamasr.model_store import resolve_model
from streamasr.runtime import Model

SUMMARY_VERSION = 1


@dataclass
class System:
    """One row source: an ONNX model directory, or NeMo's PyTorch streaming of a .nemo checkpoint."""

    label: str
    spec: str
    kind: str  # "onnx" | "nemo"
    latency_ms: int
    offline: bool
    size_bytes: int
    model_id: str
    quantization: str
    model_dir: str | None = None
    threads: int | None = None
    right_context: int | None = None
    _model: object = None
    extra: dict = field(default_factory=dict)
    languages: dict = field(default_factory=dict)  # a prompt model's locale -> slot; empty: English only
    default_language: str | None = None
    _prompts: dict = field(default_factory=dict)

    def prompt(self, language: str | None, where: str = "") -> str | None:
        """The prompt key for an utterance in `language` (None: the model's default); a StreamASRError
        starting with `where` when the model does not know it."""
        if language not in self._prompts:
            self._prompts[language] = prompt_for(language, self.languages, self.label, where)
        return self._prompts[language]

    def prompt_label(self, prompt: str | None) -> str | None:
        return prompt if prompt is not None else self.default_language

    @property
    def mode(self) -> str:
        return "offline" if self.offline else "streaming"

    def describe(self) -> dict:
        return {"label": self.label, "spec": self.spec, "kind": self.kind, "model_id": self.model_id,
                "model_dir": self.model_dir, "quantization": self.quantization, "size_bytes": self.size_bytes,
                "latency_ms": self.latency_ms, "mode": self.mode}

    def transcribe(self, item: Item) -> dict:
        if self.kind == "onnx":
            return transcribe_item(self._model, item, self.latency_ms, self.offline)

        try:
            samples = item.load(16000)
        except StreamASRError as exc:
            return {"error": str(exc)}
        t0 = time.perf_counter()
        out = nemo_streaming(self._model, samples, self.right_context, language=item.prompt or self.default_language)
        dt = time.perf_counter() - t0
        n = len(out.chunk_encodings)
        return {"ok": {"hyp": out.text, "audio_s": round(samples.size / 16000, 4), "processing_s": dt,
                       "chunks": n, "chunk_compute_s": dt if n else 0.0, "timed_chunks": n}}


def load_systems(args) -> list[System]:
    systems: list[System] = []
    labels: set[str] = set()
    for spec in args.model:
        directory = resolve_model(spec)
        model = Model.load_dir(directory, threads=args.threads)
        cfg = model.config
        if cfg.random_weights and not args.allow_random:
            raise StreamASRError(f"{spec} has random weights; its WER is meaningless. Pass --allow-random to run it")
        if args.offline:
            latency = max(model.latency_modes)
        else:
            latency = args.latency if args.latency is not None else cfg.encoder.default_latency_ms
            cfg.encoder.mode(latency)  # clear error for an unknown mode
        label = Path(spec).name if Path(spec).expanduser().is_dir() else spec
        label = _unique(label, labels)
        systems.append(System(label=label, spec=spec, kind="onnx", latency_ms=latency, offline=args.offline,
                              size_bytes=cfg.size_bytes, model_id=cfg.model_id,
                              quantization=str(cfg.quantization.get("method", "?")), model_dir=str(directory),
                              threads=args.threads, _model=model, languages=dict(getattr(model, "languages", {})),
                              default_language=getattr(model, "default_language", None)))
    if args.reference == "nemo":
        if not args.reference_nemo:
            raise StreamASRError("--reference nemo needs --reference-nemo PATH (the .nemo checkpoint of the models)")
        nemo_path = Path(args.reference_nemo).expanduser()
        if not nemo_path.is_file():
            raise StreamASRError(f"no such .nemo file: {nemo_path}")

        first = systems[0]._model
        right = first.config.encoder.mode(systems[0].latency_ms).right_context
        systems.append(System(label=_unique(f"nemo-pytorch:{nemo_path.stem}", labels), spec=str(nemo_path),
                              kind="nemo", latency_ms=systems[0].latency_ms, offline=args.offline,
                              size_bytes=nemo_path.stat().st_size, model_id=f"nemo:{nemo_path.name}",
                              quantization="fp32 (PyTorch)", right_context=right,
                              _model=load_nemo_model(nemo_path), languages=systems[0].languages,
                              default_language=systems[0].default_language))
    return systems


def check_languages(args, systems: list[System], datasets: list[Dataset]) -> None:
    """Every utterance's language prompt resolved for every model before any work starts: --language, a
    set's locale, or each manifest line's "language" (an unknown one names the line)."""
    for s in systems:
        if args.language is not None:
            s.prompt(args.language, "--language")
            continue
        for ds in datasets:
            if ds.language is not None:
                s.prompt(ds.language, f"dataset {ds.spec}")
            if ds.size() is not None:
                for item in ds.items(args.max_samples):
                    if not item.error:
                        item_prompt(s, item, args)


def _unique(label: str, seen: set[str]) -> str:
    out, i = label, 2
    while out in seen:
        out, i = f"{label}#{i}", i + 1
    seen.add(out)
    return out


# ----------------------------------------------------------------------------- per-utterance records
def score_record(rec: dict, normalizer: str) -> dict:
    """Fill normalized forms and error counts (recomputed, so a resumed run scores consistently). The
    record's "language" picks the metric (CER for ja, zh, ko, th) and the normalizer (`normalizer` for
    English, basic for the rest); "ref_words" then counts the metric's units (words or characters)."""
    language = rec.get("language")
    name, metric = normalizer_for(language, normalizer), metric_for(language)
    ref_n, hyp_n = normalize(rec["ref"], name), normalize(rec.get("hyp", ""), name)
    rec["ref_norm"], rec["hyp_norm"], rec["metric"] = ref_n, hyp_n, metric
    rec.update(unit_errors(ref_n, hyp_n, metric).to_dict())
    return rec


def utterance_language(item: Item, args) -> str | None:
    """The language an utterance is scored as: its own (the manifest line's, the set's), else `--language`;
    `auto` names a prompt, not a language, so it leaves the language unknown. As a BCP 47 tag (FLEURS's
    de_de -> de-DE)."""
    language = next((x for x in (item.language, args.language) if x and x != AUTO), None)
    return display_locale(language)


def item_prompt(system: System, item: Item, args) -> str | None:
    """The prompt `system` transcribes `item` with: --language, else the utterance's language."""
    if args.language is not None:
        return system.prompt(args.language, "--language")
    where = item.meta.get("where") or f"utterance {item.id}"
    return system.prompt(item.language, where)


class RecordFile:
    """utterances/<system>__<set>.jsonl: appended per utterance; the last record of an id wins."""

    def __init__(self, path: Path, system: System, set_name: str, fresh: bool):
        self.path = path
        self.records: dict[str, dict] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and path.exists():
            path.unlink()
        if path.exists():
            self._load(system, set_name)
        self._fh = open(path, "a", encoding="utf-8")

    def _load(self, system: System, set_name: str) -> None:
        raw = self.path.read_bytes()
        lines = raw.decode("utf-8", errors="replace").splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines) and not raw.endswith(b"\n"):
                    # a line cut short by an interrupted run: drop it, that utterance is redone
                    with open(self.path, "rb+") as fh:
                        fh.truncate(raw.rfind(b"\n") + 1)
                    break
                raise StreamASRError(f"{self.path}:{n}: corrupt results line; delete the file or run with --fresh")
            if rec.get("model") != system.label or rec.get("latency_ms") != system.latency_ms \
                    or rec.get("mode") != system.mode or rec.get("set") != set_name:
                raise StreamASRError(
                    f"{self.path} holds results of another configuration ({rec.get('model')}, {rec.get('mode')} "
                    f"{rec.get('latency_ms')} ms); use another --out or --fresh")
            self.records[rec["id"]] = rec
        with open(self.path, "rb+") as fh:  # appends must start on a line of their own
            fh.seek(0, 2)
            if fh.tell():
                fh.seek(-1, 2)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")

    def done(self, uid: str, prompt: str | None = None) -> bool:
        """Finished with the same language prompt (failed utterances, and a rerun with another --language,
        are redone)."""
        rec = self.records.get(uid)
        return rec is not None and "error" not in rec and rec.get("prompt") == prompt

    def write(self, rec: dict) -> None:
        self.records[rec["id"]] = rec
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


# ----------------------------------------------------------------------------- engines
class LocalEngine:
    batch = 1

    def run(self, system: System, items: list[Item]) -> list[dict]:
        return [system.transcribe(it) for it in items]

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- the run
def evaluate(args, systems: list[System], datasets: list[Dataset], engine, out: Path) -> dict:
    """Transcribe everything not already done; returns the summary (also written to out)."""
    per_set: list[dict] = []
    progress = not args.no_progress
    for ds in datasets:
        files = {s.label: RecordFile(out / "utterances" / f"{slug(s.label)}__{slug(ds.name)}.jsonl", s, ds.name,
                                     args.fresh) for s in systems}
        order: list[str] = []
        running = {s.label: [0, 0] for s in systems}
        total = ds.size()
        if total is not None and args.max_samples:
            total = min(total, args.max_samples)
        bar = _progress(ds.name, total, progress)
        try:
            batch: list[Item] = []
            for item in ds.items(args.max_samples):
                order.append(item.id)
                batch.append(item)
                if len(batch) >= engine.batch:
                    _run_batch(args, systems, ds, batch, files, engine, running, bar)
                    batch = []
            if batch:
                _run_batch(args, systems, ds, batch, files, engine, running, bar)
        finally:
            if bar is not None:
                bar.close()
            for f in files.values():
                f.close()
        per_set.append({"dataset": ds, "order": order, "records": {k: f.records for k, f in files.items()}})
    return summarize(args, systems, per_set)


def _base(item: Item, ds: Dataset, system: System, args) -> dict:
    return {"id": item.id, "set": ds.name, "model": system.label, "latency_ms": system.latency_ms,
            "mode": system.mode, "ref": item.text, "language": utterance_language(item, args),
            "prompt": item.prompt, "prompt_label": system.prompt_label(item.prompt)}


def _run_batch(args, systems, ds, batch, files, engine, running, bar) -> None:
    for system in systems:
        f = files[system.label]
        todo: list[Item] = []
        for item in batch:
            item = replace(item, prompt=None if item.error else item_prompt(system, item, args))
            if f.done(item.id, item.prompt):
                rec = f.records[item.id]
                if "excluded" not in rec:
                    score_record(rec, args.normalizer)
                    running[system.label][0] += rec["errors"]
                    running[system.label][1] += rec["ref_words"]
                continue
            base = _base(item, ds, system, args)
            if item.error:
                _bad(args, f, base, item.error, ds)
                continue
            if not is_scored_reference(normalize(item.text, normalizer_for(base["language"], args.normalizer))):
                f.write({**base, "excluded": "empty reference after normalization (not scored, as the leaderboard)"})
                continue
            todo.append(item)
        if todo:
            for item, res in zip(todo, engine.run(system, todo)):
                base = _base(item, ds, system, args)
                if "error" in res:
                    _bad(args, f, base, res["error"], ds)
                    continue
                rec = score_record({**base, **res["ok"]}, args.normalizer)
                f.write(rec)
                running[system.label][0] += rec["errors"]
                running[system.label][1] += rec["ref_words"]
    if bar is not None:
        bar.set_postfix_str(" | ".join(f"{k} WER {100 * e / n:.1f}%" if n else f"{k} WER -"
                                       for k, (e, n) in running.items()))
        bar.update(len(batch))


def _bad(args, f: RecordFile, base: dict, message: str, ds: Dataset) -> None:
    if not args.skip_errors:
        raise StreamASRError(f"{ds.spec}: utterance {base['id']}: {message} "
                             "(--skip-errors records and skips bad utterances)")
    print(f"streamasr: skipped utterance {base['id']} of {ds.spec}: {message}", file=sys.stderr)
    f.write({**base, "error": message})


def _progress(name: str, total, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="utt", file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------- summary
def summarize(args, systems: list[System], per_set: list[dict]) -> dict:
    rows, paired = [], []
    pooled: dict[str, list[dict]] = {s.label: [] for s in systems}  # every scored record, for the language table
    for entry in per_set:
        ds, order = entry["dataset"], entry["order"]
        arrays = {}
        single_language = True
        for s in systems:
            recs = entry["records"][s.label]
            chosen = [recs[i] for i in order if i in recs]
            ok = [r for r in chosen if "error" not in r and "excluded" not in r]
            pooled[s.label] += ok
            e = np.array([r["errors"] for r in ok], dtype=np.int64)
            w = np.array([r["ref_words"] for r in ok], dtype=np.int64)
            arrays[s.label] = {r["id"]: (r["errors"], r["ref_words"]) for r in ok}
            if len({r.get("language") for r in ok}) > 1:
                # a set of several languages is summed up as they are compared, the mean over its languages
                # (words and characters would not add up anyway)
                single_language = False
                metric, rate, lo, hi = "macro", _macro([x["error_rate"] for x in _by_language(ok, args)]), None, None
            else:
                metric, rate = (ok[0].get("metric", "wer") if ok else "wer"), corpus_wer(e, w)
                lo, hi = bootstrap_ci(e, w, n_boot=args.bootstrap, seed=args.seed)
            audio = sum(r["audio_s"] for r in ok)
            proc = sum(r["processing_s"] for r in ok)
            chunk_s = sum(r["chunk_compute_s"] for r in ok)
            chunks = sum(r["timed_chunks"] for r in ok)
            rows.append({
                "model": s.label, "set": ds.name, "dataset": ds.spec, "kind": s.kind, "mode": s.mode,
                "latency_ms": s.latency_ms, "metric": metric, "wer": _num(rate), "ci_low": _num(lo),
                "ci_high": _num(hi), "n_utterances": len(ok), "n_skipped": sum("error" in r for r in chosen),
                "n_excluded": sum("excluded" in r for r in chosen), "ref_words": int(w.sum()),
                "substitutions": sum(r["substitutions"] for r in ok), "deletions": sum(r["deletions"] for r in ok),
                "insertions": sum(r["insertions"] for r in ok), "audio_hours": round(audio / 3600, 6),
                "processing_s": round(proc, 4), "rtfx": _num(audio / proc if proc > 0 else float("nan")),
                "mean_chunk_latency_ms": _num(1000 * chunk_s / chunks if chunks else float("nan")),
                "size_bytes": s.size_bytes, "quantization": s.quantization,
            })
        if single_language:
            paired += _paired_rows(args, systems, order, arrays, {"set": ds.name})
    means = []
    for s in systems:
        mine = [r for r in rows if r["model"] == s.label]
        wers = [r["wer"] for r in mine if r["wer"] is not None]
        audio = sum(r["audio_hours"] for r in mine) * 3600
        proc = sum(r["processing_s"] for r in mine)
        means.append({"model": s.label, "mean_wer": _num(float(np.mean(wers)) if wers else float("nan")),
                      "n_sets": len(wers), "sets_without_wer": [r["set"] for r in mine if r["wer"] is None],
                      "rtfx": _num(audio / proc if proc > 0 else float("nan")), "size_bytes": s.size_bytes})
    summary = {
        "version": SUMMARY_VERSION,
        "normalizer": args.normalizer,
        "mode": "offline" if args.offline else "streaming",
        "mode_note": ("offline: whole utterance in one accept() call in the largest latency mode of the "
                      "streaming graph (bounded attention context), not NeMo's unlimited-context encoder"
                      if args.offline else f"streaming: {int(BLOCK_S * 1000)} ms blocks through Model.stream"),
        "bootstrap": {"replicates": args.bootstrap, "seed": args.seed, "confidence": 0.95,
                      "unit": "utterance", "ci": "percentile"},
        "max_samples": args.max_samples,
        "engine": args.engine,
        "language": args.language,
        "systems": [s.describe() for s in systems],
        "rows": rows, "means": means, "paired": paired,
    }
    if any(r.get("language") for recs in pooled.values() for r in recs):
        summary.update(_language_summary(args, systems, pooled))
    return summary


def _by_language(records: list[dict], args) -> list[dict]:
    """One row per language of `records` (in first-seen order): corpus error rate in that language's metric,
    bootstrap CI, the prompts used and, for utterances transcribed in `auto` mode, language-ID accuracy."""
    groups: dict[str | None, list[dict]] = {}
    for r in records:
        groups.setdefault(r.get("language"), []).append(r)
    out = []
    for language, recs in groups.items():
        e = np.array([r["errors"] for r in recs], dtype=np.int64)
        w = np.array([r["ref_words"] for r in recs], dtype=np.int64)
        lo, hi = bootstrap_ci(e, w, n_boot=args.bootstrap, seed=args.seed)
        lid = [r for r in recs if r.get("prompt") == AUTO and language]
        correct = sum(same_language(r.get("detected_language"), language) for r in lid)
        out.append({"language": language, "metric": metric_for(language),
                    "prompts": sorted({r["prompt_label"] for r in recs if r.get("prompt_label")}),
                    "error_rate": _num(corpus_wer(e, w)), "ci_low": _num(lo), "ci_high": _num(hi),
                    "n_utterances": len(recs), "ref_units": int(w.sum()), "errors": int(e.sum()),
                    "lid_accuracy": _num(correct / len(lid)) if lid else None, "n_lid": len(lid)})
    return out


def _macro(rates: list) -> float:
    """The unweighted mean over languages (NaN when none has a rate): each language counts once, however
    many utterances or words it has."""
    vals = [x for x in rates if x is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _language_summary(args, systems: list[System], pooled: dict[str, list[dict]]) -> dict:
    rows, means, paired = [], [], []
    for s in systems:
        mine = _by_language(pooled[s.label], args)
        rows += [{"model": s.label, **r} for r in mine]
        means.append({"model": s.label, "macro_average": _num(_macro([r["error_rate"] for r in mine])),
                      "n_languages": len(mine),
                      "metrics": {m: sum(r["metric"] == m for r in mine) for m in ("wer", "cer")}})
    languages = list(dict.fromkeys(r["language"] for r in rows))
    for language in languages:
        arrays = {s.label: {(r["set"], r["id"]): (r["errors"], r["ref_words"]) for r in pooled[s.label]
                            if r.get("language") == language} for s in systems}
        order = list(dict.fromkeys(k for a in arrays.values() for k in a))
        paired += _paired_rows(args, systems, order, arrays, {"language": language})
    return {"languages": rows, "language_means": means, "language_paired": paired}


def _paired_rows(args, systems: list[System], order: list, arrays: dict, key: dict) -> list[dict]:
    out = []
    for i, a in enumerate(systems):
        for b in systems[i + 1:]:
            common = [k for k in order if k in arrays[a.label] and k in arrays[b.label]]
            if not common:
                continue
            res = paired_bootstrap([arrays[a.label][k][0] for k in common],
                                   [arrays[b.label][k][0] for k in common],
                                   [arrays[a.label][k][1] for k in common], n_boot=args.bootstrap, seed=args.seed)
            out.append({**key, "model_a": a.label, "model_b": b.label, "n_utterances": res.n,
                        "wer_a": _num(res.wer_a), "wer_b": _num(res.wer_b), "diff": _num(res.diff),
                        "ci_low": _num(res.ci_low), "ci_high": _num(res.ci_high), "p_value": _num(res.p_value)})
    return out


def _num(x: float, nd: int = 6):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), nd)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown(summary: dict) -> str:
    multilingual = "languages" in summary
    norm = summary["normalizer"] + (" for English, basic for other languages" if multilingual else "")
    lines = [f"WER ({summary['mode']}, normalizer: {norm}; 95% bootstrap CI over utterances)", "",
             ("| model | set | metric | latency ms | WER/CER % | 95% CI | n | skipped | hours | RTFx | chunk ms "
              "| size MB |"),
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        ci = "-" if r["ci_low"] is None else f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"
        metric = {"macro": "macro avg"}.get(r.get("metric", "wer"), r.get("metric", "wer").upper())
        lines.append(f"| {r['model']} | {r['set']} | {metric} | {r['latency_ms']} | {_pct(r['wer'])} | {ci} | "
                     f"{r['n_utterances']} | {r['n_skipped']} | {r['audio_hours']:.3f} | "
                     f"{_fmt(r['rtfx'], '.1f')} | {_fmt(r['mean_chunk_latency_ms'], '.1f')} | "
                     f"{r['size_bytes'] / 1e6:.1f} |")
    if len({r["set"] for r in summary["rows"]}) > 1:
        for m in summary["means"]:
            lines.append(f"| {m['model']} | **mean of {m['n_sets']} sets** | | | {_pct(m['mean_wer'])} | | | | | "
                         f"{_fmt(m['rtfx'], '.1f')} | | {m['size_bytes'] / 1e6:.1f} |")
    if summary["paired"]:
        lines += _paired_markdown("Paired bootstrap, WER(a) - WER(b) on the same utterances:", "set",
                                  [(p["set"], p) for p in summary["paired"]])
    if multilingual:
        lines += _language_markdown(summary)
    if summary["mode"] == "offline":
        lines += ["", f"Note: {summary['mode_note']}."]
    return "\n".join(lines)


def _paired_markdown(title: str, first_column: str, comparisons: list[tuple[str, dict]]) -> list[str]:
    """A paired-bootstrap table: one row per (where, comparison), `where` in the first column."""
    lines = ["", title, "", f"| {first_column} | a | b | n | diff (pts) | 95% CI | p |", "|---|---|---|---:|---:|---|---:|"]
    for where, p in comparisons:
        ci = "-" if p["ci_low"] is None else f"[{_pct(p['ci_low'])}, {_pct(p['ci_high'])}]"
        lines.append(f"| {where} | {p['model_a']} | {p['model_b']} | {p['n_utterances']} | {_pct(p['diff'])} | "
                     f"{ci} | {_fmt(p['p_value'], '.3f')} |")
    return lines


def _language_markdown(summary: dict) -> list[str]:
    lines = ["", ("Per language, pooled over sets (CER for ja, zh, ko, th; WER otherwise); the macro average is "
                  "the unweighted mean over languages:"), "",
             "| model | language | prompt | metric | error % | 95% CI | n | LID correct % |",
             "|---|---|---|---|---:|---|---:|---:|"]
    for r in summary["languages"]:
        ci = "-" if r["ci_low"] is None else f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"
        lid = "-" if r["lid_accuracy"] is None else f"{100 * r['lid_accuracy']:.1f} (n={r['n_lid']})"
        lines.append(f"| {r['model']} | {r['language'] or 'unspecified'} | {', '.join(r['prompts']) or '-'} | "
                     f"{r['metric'].upper()} | {_pct(r['error_rate'])} | {ci} | {r['n_utterances']} | {lid} |")
    for m in summary["language_means"]:
        used = " + ".join(f"{n} {k.upper()}" for k, n in m["metrics"].items() if n)
        lines.append(f"| {m['model']} | **macro average, {m['n_languages']} languages** | | {used} | "
                     f"{_pct(m['macro_average'])} | | | |")
    if summary["language_paired"]:
        lines += _paired_markdown("Paired bootstrap per language, error(a) - error(b) on the same utterances:",
                                  "language", [(p["language"] or "unspecified", p) for p in summary["language_paired"]])
    return lines


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    pts = [m for m in summary["means"] if m["mean_wer"] is not None]
    for ax, key, xlabel in ((axes[0], "size", "model size (MB)"), (axes[1], "rtfx", "RTFx (higher is faster)")):
        for m in pts:
            x = m["size_bytes"] / 1e6 if key == "size" else m["rtfx"]
            if x is None:
                continue
            ax.scatter([x], [100 * m["mean_wer"]], s=40)
            ax.annotate(m["model"], (x, 100 * m["mean_wer"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean WER over sets (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"WER vs size and speed ({summary['mode']}; {len({r['set'] for r in summary['rows']})} sets)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI
def run(args) -> int:
    if not args.model:
        raise StreamASRError("give at least one --model")
    if args.max_samples is not None and args.max_samples < 1:
        raise StreamASRError("--max-samples must be at least 1")
    if args.bootstrap < 10:
        raise StreamASRError("--bootstrap must be at least 10 replicates")
    if args.engine != "ray" and args.ray_address:
        raise StreamASRError("--ray-address needs --engine ray")
    specs = dataset_specs(args.dataset, args.suite)
    datasets = [open_dataset(s) for s in specs]
    names: set[str] = set()
    for ds in datasets:
        ds.name = _unique(ds.name, names)
    if not args.skip_errors:  # fail before hours of work on a manifest with a bad line or missing file
        for ds in datasets:
            if ds.size() is not None:
                bad = [it for it in ds.items(args.max_samples) if it.error]
                if bad:
                    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                    raise StreamASRError(f"{bad[0].error}{more}; fix the manifest or pass --skip-errors")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    systems = load_systems(args)
    check_languages(args, systems, datasets)
    if args.engine == "ray":

        engine = RayEngine(address=args.ray_address, workers=args.ray_workers, threads=args.threads)
    else:
        engine = LocalEngine()
    try:
        summary = evaluate(args, systems, datasets, engine, out)
    finally:
        engine.close()
    png = write_summary(out, summary, markdown(summary), plot, "wer_pareto.png")
    skipped = sum(r["n_skipped"] for r in summary["rows"])
    if skipped:
        print(f"\n{skipped} utterance(s) skipped because of errors; see the \"error\" records in "
              f"{out / 'utterances'}", file=sys.stderr)
    print(f"\nwrote {out / 'summary.json'}, {out / 'summary.md'}, {png} and "
          f"{out / 'utterances'}/", file=sys.stderr)
    return 0


def add_parser(bench_sub) -> argparse.ArgumentParser:
    p = bench_sub.add_parser("wer", help="streaming WER with bootstrap error bars (Open ASR Leaderboard sets, manifests)",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[],
                   help="model directory, .nemo, hub repo id or random:NAME; repeat to compare models")
    p.add_argument("--dataset", action="append", default=[],
                   help="manifest:PATH.jsonl, esb:CONFIG[:SPLIT] (hf-audio/esb-datasets-test-only-sorted) or "
                        "fleurs:LOCALE[:SPLIT] (google/fleurs, e.g. fleurs:de_de); repeatable")
    p.add_argument("--suite", default=None, help="a named group of datasets: open-asr-en (the 8 English sets)")
    p.add_argument("--latency", type=int, default=None, help="latency mode in ms (default: each model's default)")
    p.add_argument("--language", default=None,
                   help="transcribe every utterance with this language prompt (a locale of the model, or auto) and "
                        "score sets without a language of their own as this language (default: each utterance's "
                        "own language, from the manifest line or the FLEURS locale)")
    p.add_argument("--offline", action="store_true",
                   help="whole utterance in one call, in the largest latency mode (the graph is a streaming step)")
    p.add_argument("--max-samples", type=int, default=None, help="first N utterances of each set")
    p.add_argument("--out", default="results/wer", help="output directory (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="discard earlier results in --out instead of resuming")
    p.add_argument("--normalizer", choices=NORMALIZERS, default="leaderboard",
                   help="text normalizer (default: the Open ASR Leaderboard's Whisper English normalizer)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--skip-errors", action="store_true",
                   help="record and skip utterances that cannot be read (counted in the summary)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per model (default: all cores)")
    p.add_argument("--reference", choices=["nemo"], default=None,
                   help="add NeMo's PyTorch streaming inference as a row (needs the verify extra)")
    p.add_argument("--reference-nemo", default=None, help="the .nemo checkpoint for --reference nemo")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (default) or ray: shard utterances over Ray workers")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--ray-workers", type=int, default=None, help="Ray workers per model (default: cluster CPUs)")
    p.add_argument("--allow-random", action="store_true", help="accept random-weight test models")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p
