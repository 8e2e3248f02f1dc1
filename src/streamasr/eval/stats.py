"""Word (or character) error counts and bootstrap confidence intervals for corpus-level WER and CER.

Corpus WER of a set = (substitutions + deletions + insertions summed over utterances) / (reference words summed
over utterances), what `jiwer.wer(list_of_refs, list_of_hyps)` computes. Confidence intervals resample
utterances with replacement (the unit that is sampled from the population), recomputing the corpus ratio on
each resample; the paired bootstrap resamples the same utterance indices for two systems, so the interval of
the difference reflects the between-system variation on the same audio only.

CER counts characters instead of words, with whitespace removed first: the languages it is used for (see
`languages.CER_LANGUAGES`) do not separate words by spaces, or references do so inconsistently, so a space is
not a character to be scored. Everything downstream (corpus ratio, bootstrap) is the same arithmetic over
"units", which are words or characters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WordErrors:
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int
    hits: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def to_dict(self) -> dict:
        return {"substitutions": self.substitutions, "deletions": self.deletions, "insertions": self.insertions,
                "errors": self.errors, "ref_words": self.ref_words}


def word_errors(ref: str, hyp: str) -> WordErrors:
    """Levenshtein alignment of two already-normalized strings (jiwer); empty sides are allowed."""
    import jiwer

    r, h = ref.split(), hyp.split()
    if not r:
        return WordErrors(0, 0, len(h), 0, 0)
    if not h:
        return WordErrors(0, len(r), 0, len(r), 0)
    out = jiwer.process_words(" ".join(r), " ".join(h))
    return WordErrors(out.substitutions, out.deletions, out.insertions, len(r), out.hits)


def char_errors(ref: str, hyp: str) -> WordErrors:
    """Character-level Levenshtein alignment of two normalized strings, whitespace removed (units: characters)."""
    import jiwer

    r, h = "".join(ref.split()), "".join(hyp.split())
    if not r:
        return WordErrors(0, 0, len(h), 0, 0)
    if not h:
        return WordErrors(0, len(r), 0, len(r), 0)
    out = jiwer.process_characters(r, h)
    return WordErrors(out.substitutions, out.deletions, out.insertions, len(r), out.hits)


def unit_errors(ref: str, hyp: str, metric: str = "wer") -> WordErrors:
    """`word_errors` for metric "wer", `char_errors` for "cer"."""
    if metric not in ("wer", "cer"):
        raise ValueError(f"unknown metric {metric!r}")
    return char_errors(ref, hyp) if metric == "cer" else word_errors(ref, hyp)


def corpus_wer(errors, ref_words) -> float:
    """Total errors / total reference words; NaN when there are no reference words."""
    e, n = int(np.sum(errors)), int(np.sum(ref_words))
    return e / n if n else float("nan")


def _resample_sums(values: list[np.ndarray], n_boot: int, seed: int, batch: int = 200):
    """Yield, per batch of bootstrap replicates, the resampled sums of each array (same indices for all)."""
    rng = np.random.default_rng(seed)
    n = values[0].size
    done = 0
    while done < n_boot:
        b = min(batch, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        yield [v[idx].sum(axis=1) for v in values]
        done += b


def bootstrap_ci(errors, ref_words, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of corpus WER, resampling utterances. (nan, nan) if undefined."""
    e = np.asarray(errors, dtype=np.float64)
    w = np.asarray(ref_words, dtype=np.float64)
    if e.size == 0 or w.sum() == 0:
        return float("nan"), float("nan")
    stats = []
    for se, sw in _resample_sums([e, w], n_boot, seed):
        with np.errstate(divide="ignore", invalid="ignore"):
            stats.append(np.where(sw > 0, se / np.maximum(sw, 1), np.nan))
    s = np.concatenate(stats)
    s = s[np.isfinite(s)]
    alpha = (1 - confidence) / 2
    return float(np.quantile(s, alpha)), float(np.quantile(s, 1 - alpha))


@dataclass(frozen=True)
class PairedResult:
    wer_a: float
    wer_b: float
    diff: float  # wer_a - wer_b
    ci_low: float
    ci_high: float
    p_value: float  # two-sided: how often the resampled difference falls on the other side of zero
    n: int


def paired_bootstrap(errors_a, errors_b, ref_words, n_boot: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> PairedResult:
    """Paired bootstrap of WER(a) - WER(b) on the same utterances (aligned arrays)."""
    ea = np.asarray(errors_a, dtype=np.float64)
    eb = np.asarray(errors_b, dtype=np.float64)
    w = np.asarray(ref_words, dtype=np.float64)
    if not (ea.size == eb.size == w.size):
        raise ValueError("paired bootstrap needs aligned per-utterance arrays")
    wa, wb = corpus_wer(ea, w), corpus_wer(eb, w)
    if ea.size == 0 or w.sum() == 0:
        nan = float("nan")
        return PairedResult(wa, wb, nan, nan, nan, nan, int(ea.size))
    diffs = []
    for sa, sb, sw in _resample_sums([ea, eb, w], n_boot, seed):
        ok = sw > 0
        diffs.append((sa[ok] - sb[ok]) / sw[ok])
    d = np.concatenate(diffs)
    alpha = (1 - confidence) / 2
    p = 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0)))
    return PairedResult(wa, wb, wa - wb, float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha)),
                        min(1.0, p), int(ea.size))
