"""NeMo 3.0.0's own fused decoding (phrase boosting, n-gram LM) as the reference for streamasr's.

`fused_decoding` puts NeMo's documented keys into the model's decoding config (`greedy_batch` with
label looping, `greedy.boosting_tree` + `boosting_tree_alpha`, `greedy.ngram_lm_model` + `ngram_lm_alpha`)
for the duration of a `with` block, so that `eval.nemo_reference.nemo_streaming` runs NeMo's cache-aware
streaming loop with them; the model's decoding is restored afterwards. `write_token_arpa` writes a small
n-gram LM over token ids in the encoding NeMo's loader reads (token i spelled chr(i + 100)).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from streamasr.runtime.ngram_lm import TOKEN_OFFSET


@contextlib.contextmanager
def fused_decoding(model, phrases: list[str] | None = None, alpha: float = 1.0, context_score: float = 1.0,
                   depth_scaling: float = 2.0, lm_path: str | Path | None = None,
                   lm_alpha: float = 0.0) -> Iterator[None]:
    """NeMo `model` decodes with a boosting tree over `phrases` and/or the ARPA LM `lm_path` inside."""
    from omegaconf import open_dict

    original = copy.deepcopy(model.cfg.decoding)
    decoding = copy.deepcopy(model.cfg.decoding)
    with open_dict(decoding):
        decoding.strategy = "greedy_batch"
        decoding.greedy.loop_labels = True
        decoding.greedy.max_symbols = 10
        if phrases:
            decoding.greedy.boosting_tree = {
                "key_phrases_list": list(phrases), "context_score": context_score, "depth_scaling": depth_scaling,
                "unk_score": 0.0, "score_per_phrase": 0.0, "use_triton": False,
            }
            decoding.greedy.boosting_tree_alpha = alpha
        if lm_path is not None:
            decoding.greedy.ngram_lm_model = str(lm_path)
            decoding.greedy.ngram_lm_alpha = lm_alpha
    model.change_decoding_strategy(decoding, verbose=False)
    try:
        yield
    finally:
        model.change_decoding_strategy(original, verbose=False)


def write_token_arpa(sequences: list[list[int]], path: str | Path, order: int = 3, discount: float = 0.7) -> Path:
    """A valid ARPA backoff LM of `order` over token-id sequences (each wrapped in <s> ... </s>): every
    n-gram seen, probability discount * count / context count, backoff 1 - discount, unknown tokens through
    <unk>. Not a smoothed estimate worth using, only a well-formed file with real structure."""
    counts: list[Counter] = [Counter() for _ in range(order + 1)]
    for seq in sequences:
        words = ["<s>", *(chr(t + TOKEN_OFFSET) for t in seq), "</s>"]
        for n in range(1, order + 1):
            for i in range(len(words) - n + 1):
                gram = tuple(words[i:i + n])
                if n == 1 and gram == ("<s>",):
                    continue
                counts[n][gram] += 1
    counts[1][("<s>",)] = 0
    counts[1][("<unk>",)] = 0
    context: Counter = Counter()
    for n in range(1, order + 1):
        for gram, c in counts[n].items():
            context[gram[:-1]] += c
    lines = ["\\data\\"] + [f"ngram {n}={len(counts[n])}" for n in range(1, order + 1)] + [""]
    total = sum(counts[1].values())
    for n in range(1, order + 1):
        lines.append(f"\\{n}-grams:")
        for gram in sorted(counts[n]):
            c = counts[n][gram]
            if gram == ("<s>",):
                logp = -99.0
            elif gram == ("<unk>",):
                logp = math.log10(0.5 / total)
            else:
                logp = math.log10(discount * c / context[gram[:-1]])
            fields = [f"{logp:.6f}", " ".join(gram)]
            if n < order and gram[-1] != "</s>":
                fields.append(f"{math.log10(1 - discount):.6f}")
            lines.append("\t".join(fields))
        lines.append("")
    lines.append("\\end\\")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)
