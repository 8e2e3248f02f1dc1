"""The comparison's Markdown table (the paper's Table 14 columns, per set and averaged) and Pareto plot."""

from __future__ import annotations

from pathlib import Path

from streamasr.eval.compare.harness import RANDOM_WER


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _wer_cell(wer, lo, hi, random_weights: bool) -> str:
    if random_weights:
        return RANDOM_WER
    if wer is None:
        return "-"
    return f"{_pct(wer)} [{_pct(lo)}, {_pct(hi)}]" if lo is not None else _pct(wer)


def markdown(summary: dict) -> str:
    sets = [d["name"] for d in summary["datasets"]]
    multi = len(sets) > 1
    head = ["#", "system", "delay s"] + ([f"WER % {s} [95% CI]" for s in sets] if multi else []) + [
        "WER % [95% CI]" + (" (mean of sets)" if multi else ""), "BSF", "first partial s", "final lag s",
        "RTFx", "RTFx / #1", "size MB", "peak RSS MB", "precision"]
    lines = [(f"Threads: {summary['threads']}; normalizer: {summary['normalizer']}; {summary['isolation']}, "
              f"{summary['schedule']}; sets: {', '.join(sets)}"), "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---:" if h not in ("system", "precision") else "---"
                                                         for h in head) + "|"]
    for i, s in enumerate(summary["systems"], 1):
        delay = "utterance" if s["algorithmic_delay_s"] is None else f"{s['algorithmic_delay_s']:g}"
        cells = [str(i), f"`{s['label']}`", delay]
        if multi:
            for name in sets:
                v = s["sets"].get(name, {})
                cells.append(_wer_cell(v.get("wer"), v.get("ci_low"), v.get("ci_high"), s["random_weights"]))
        rss = "-" if s["peak_rss_bytes"] is None else f"{s['peak_rss_bytes'] / 1e6:.0f}" + (
            " (shared)" if s["peak_rss_shared"] else "")
        cells += [_wer_cell(s["wer"], s["ci_low"], s["ci_high"], s["random_weights"]), _fmt(s["bsf"], ".2f"),
                  _fmt(s["first_partial_s"], ".2f"), _fmt(s["final_lag_s"], ".2f"), _fmt(s["rtfx"], ".2f"),
                  _fmt(s["rtfx_vs_first"], ".2f"), f"{s['size_bytes'] / 1e6:.0f}", rss, s["precision"]]
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({f"`{s['label']}`: {n}" for s in summary["systems"] for n in s["notes"]})
    lines += ["", ("delay: algorithmic (chunk + right context, window, or 2 LocalAgreement steps); first partial "
                   "and final lag: simulated real-time clock, means over utterances; BSF: WER / WER of the same model "
                   "in batch; RTFx / #1: speed relative to row 1 in this run.")]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """WER against RTFx, marker area by model size; random-weight rows as hollow markers on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    sizes = [s["size_bytes"] for s in summary["systems"]] or [1]
    scale = 900 / max(max(sizes), 1)
    scored = [s for s in summary["systems"] if s["wer"] is not None]
    top = max([100 * s["wer"] for s in scored], default=10.0)
    for i, s in enumerate(summary["systems"], 1):
        if s["rtfx"] is None:
            continue
        area = max(20.0, s["size_bytes"] * scale)
        if s["wer"] is None:
            ax.scatter([s["rtfx"]], [0], s=area, facecolors="none", edgecolors="grey", clip_on=False)
            ax.annotate(f"#{i} {s['label']} (random weights)", (s["rtfx"], 0), textcoords="offset points",
                        xytext=(5, 5), fontsize=7, color="grey")
        else:
            y = 100 * s["wer"]
            ax.scatter([s["rtfx"]], [y], s=area, alpha=0.6)
            if s["ci_low"] is not None:
                ax.plot([s["rtfx"]] * 2, [100 * s["ci_low"], 100 * s["ci_high"]], color="k", lw=0.8)
            ax.annotate(f"#{i} {s['label']}", (s["rtfx"], y), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0, top=max(top * 1.3, 1))
    ax.set_xlabel(f"RTFx at {summary['threads']} threads (log; higher is faster)")
    ax.set_ylabel("WER % (mean of sets, 95% CI)")
    ax.set_title("WER vs speed; marker area = model size")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
