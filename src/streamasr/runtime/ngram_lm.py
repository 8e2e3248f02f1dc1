"""Word-piece n-gram language model from an ARPA file, as NeMo 3.0.0's NGPU-LM reads it.

NeMo fuses an n-gram LM over the model's own token ids (`decoding.greedy.ngram_lm_model` +
`ngram_lm_alpha`) on the same greedy path as phrase boosting. Its ARPA files (made by NeMo's KenLM
scripts) spell token i as the single character chr(i + 100); `<s>`, `</s>` and `<unk>` are special. The LM
compiles to the same backoff automaton as the boosting tree (`runtime.fusion.BackoffGraph`):

- log10 weights and backoffs become natural logs (then float32);
- the start state has an arc per unigram to that unigram's state; a token the LM does not know loops to
  the start with the `<unk>` log-probability spread evenly over all unknown tokens (-inf without `<unk>`);
- every n-gram below the highest order is a state that backs off to the state of its suffix with the
  n-gram's backoff weight; an n-gram of the highest order is an arc to the state of its suffix;
- a stream starts in the `<s>` state (which backs off to the start state).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from streamasr.errors import StreamASRError
from streamasr.runtime.fusion import BackoffGraph, FusionModel, compile_graph

TOKEN_OFFSET = 100  # NeMo's DEFAULT_TOKEN_OFFSET
#: the LM weight when none is given (NeMo's ngram_lm_alpha defaults to 0, which silently turns fusion off)
DEFAULT_WEIGHT = 0.3
_BOS, _EOS, _UNK = -1, -2, -3
_SPECIAL = {"<s>": _BOS, "</s>": _EOS, "<unk>": _UNK}
_SYMBOL = re.compile("(" + "|".join(re.escape(s) for s in _SPECIAL) + r"|.)\s?")
_LOG10_E = np.log10(np.e)


class LanguageModelError(StreamASRError):
    """An ARPA file that cannot be read or does not fit the model."""


def _ln(value: str, where: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise LanguageModelError(f"{where}: {value!r} is not a number") from None
    if math.isnan(x):
        raise LanguageModelError(f"{where}: weight is NaN")
    return x / _LOG10_E


def read_arpa(path: str | Path, vocab_size: int) -> BackoffGraph:
    """Parse an ARPA file over token ids 0..vocab_size-1 into a BackoffGraph; a LanguageModelError (one
    line, with the file and line number) for anything that does not parse or does not fit the model."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LanguageModelError(f"cannot read language model {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LanguageModelError(f"language model {path} is not a UTF-8 ARPA file") from None
    lines = text.split("\n")
    n = 0
    while n < len(lines) and not lines[n].strip():
        n += 1
    if n >= len(lines) or lines[n].strip() != "\\data\\":
        raise LanguageModelError(f"{path} is not an ARPA language model (no \\data\\ header)")
    counts: dict[int, int] = {}
    n += 1
    while n < len(lines) and lines[n].strip():
        m = re.fullmatch(r"ngram\s+(\d+)\s*=\s*(\d+)", lines[n].strip())
        if not m:
            raise LanguageModelError(f"{path}, line {n + 1}: expected 'ngram N=COUNT' in the header")
        counts[int(m.group(1))] = int(m.group(2))
        n += 1
    if not counts or sorted(counts) != list(range(1, max(counts) + 1)):
        raise LanguageModelError(f"{path}: the header must count n-grams of every order from 1")
    max_order = max(counts)
    if max_order < 2:
        raise LanguageModelError(f"{path}: a unigram-only model cannot be fused (NeMo needs order >= 2)")
    grams: dict[int, list[tuple[tuple[int, ...], float, float]]] = {k: [] for k in counts}
    order = 0
    for n in range(n, len(lines)):  # noqa: B020 (continues from the header's end)
        line = lines[n].removesuffix("\r")
        if not line.strip():
            continue
        if line.startswith("\\end\\"):
            break
        m = re.fullmatch(r"\\(\d+)-grams:", line.strip())
        if m:
            order = int(m.group(1))
            if order not in counts:
                raise LanguageModelError(f"{path}, line {n + 1}: {order}-grams not announced in the header")
            continue
        where = f"{path}, line {n + 1}"
        if order == 0:
            raise LanguageModelError(f"{where}: n-gram before any \\N-grams: section")
        fields = line.split("\t")
        if len(fields) not in (2, 3):
            raise LanguageModelError(f"{where}: expected 'logprob<TAB>tokens[<TAB>backoff]'")
        weight = _ln(fields[0], where)
        backoff = _ln(fields[2], where) if len(fields) == 3 else 0.0
        symbols = tuple(_SPECIAL[s] if s in _SPECIAL else ord(s) - TOKEN_OFFSET for s in _SYMBOL.findall(fields[1]))
        if len(symbols) != order:
            raise LanguageModelError(f"{where}: {len(symbols)} symbols in a {order}-gram")
        bad = [s for s in symbols if not (0 <= s < vocab_size or s in (_BOS, _EOS, _UNK))]
        if bad:
            raise LanguageModelError(f"{where}: symbol {chr(bad[0] + TOKEN_OFFSET)!r} is not a token of this model "
                                     f"(the ARPA must spell token i as chr(i + {TOKEN_OFFSET}), as NeMo's scripts do)")
        grams[order].append((symbols, weight, backoff))
    for k, want in counts.items():
        if len(grams[k]) != want:
            raise LanguageModelError(f"{path}: the header announces {want} {k}-grams, the file has {len(grams[k])}")
    return _compile(path, grams, max_order, vocab_size)


def _compile(path: Path, grams, max_order: int, vocab: int) -> BackoffGraph:
    # states: 0 = start, 1 = <s>, then one per n-gram of order < max_order
    arcs: list[dict[int, tuple[float, int]]] = [{}, {}]
    backoff: list[tuple[int, float]] = [(0, 0.0), (0, 0.0)]
    state_of: dict[tuple[int, ...], int] = {(_BOS,): 1}
    start: dict[int, tuple[float, int]] = {}
    unk = float("-inf")
    have_bos = False
    for symbols, weight, bo in sorted(grams[1]):
        (s,) = symbols
        if s == _UNK:
            unk = np.float32(weight)
        elif s == _BOS:
            have_bos = True
            backoff[1] = (0, bo)
        elif s >= 0:
            state_of[symbols] = len(arcs)
            start[s] = (weight, len(arcs))
            arcs.append({})
            backoff.append((0, bo))
    if not have_bos:
        raise LanguageModelError(f"{path}: no <s> unigram (NeMo needs one)")
    unknown = vocab - len(start)
    if unknown > 1:
        unk = unk - np.log(unknown)  # float32 weight minus a float64 log, as NeMo rounds it
    for k in range(2, max_order + 1):
        for symbols, weight, bo in sorted(grams[k]):
            label = symbols[-1]
            if label < 0:
                if label == _EOS:
                    continue  # end-of-sentence weights: not used by a transducer's greedy search
                raise LanguageModelError(f"{path}: <s> or <unk> inside a {k}-gram {symbols}")
            src, suffix = state_of.get(symbols[:-1]), state_of.get(symbols[1:])
            if src is None or suffix is None:
                raise LanguageModelError(f"{path}: the {k}-gram {_spell(symbols)} has no lower-order "
                                         "n-gram for its context or suffix (not a valid backoff model)")
            if k < max_order:
                state_of[symbols] = len(arcs)
                arcs[src][label] = (weight, len(arcs))
                arcs.append({})
                backoff.append((suffix, bo))
            else:
                arcs[src][label] = (weight, suffix)
    return compile_graph(vocab, start, float(np.float32(unk)), arcs, backoff, initial_state=1)


def _spell(symbols: tuple[int, ...]) -> str:
    names = {v: k for k, v in _SPECIAL.items()}
    return " ".join(names.get(s, str(s)) for s in symbols)


def load_lm(path: str | Path, vocab_size: int, weight: float) -> FusionModel:
    """An ARPA LM with its fusion weight (NeMo's `ngram_lm_alpha`)."""
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise LanguageModelError(f"LM weight must be a number >= 0, got {weight!r}")
    return FusionModel(read_arpa(path, vocab_size), float(weight))
