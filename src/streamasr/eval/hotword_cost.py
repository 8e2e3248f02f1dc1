"""What hotwords cost the decoder (`bench speed --hotwords N`).

The audio is streamed once and every chunk's encoder output kept; then the same chunks are decoded again
and again by fresh decoders, without hotwords and with N random phrases from the model's vocabulary,
interleaved, timing only `decode_chunk` (prediction network, joint, and with hotwords the fetched logits,
their log-softmax and the boosting-tree scores). Reported: decoder ms per chunk both ways, the increase, and that increase as
a share of the whole step (encoder + decoder); the phrases' compile time and the tree's memory, shared by
every stream that uses the list (a stream itself holds one state number).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from streamasr.runtime.decoder import GreedyDecoder


@dataclass
class HotwordCost:
    phrases: int
    latency_ms: int
    chunks: int
    compile_s: float
    tree_bytes: int
    step_ms_per_chunk: float  # the whole unboosted step (front end, encoder, decoder), per chunk
    ms_per_chunk: dict[str, float]  # decoder time per chunk: plain, fused (same tokens), boosted
    tokens: dict[str, int]

    @property
    def fusion_overhead(self) -> float:
        """The fused decoder's extra time at identical output, relative to the plain decoder."""
        return self.ms_per_chunk["fused"] / self.ms_per_chunk["plain"] - 1 if self.ms_per_chunk["plain"] else 0.0


def random_phrases(model, n: int, seed: int = 0) -> list[str]:
    """n distinct phrases of 1-3 words, each word a word-initial piece of the model's vocabulary."""
    words = [p[1:] for p in model.text.pieces if p.startswith("\u2581") and len(p) > 1]
    rng = np.random.default_rng(seed)
    phrases: dict[str, None] = {}
    while len(phrases) < min(n, len(words) ** 2):
        phrases[" ".join(rng.choice(words, size=int(rng.integers(1, 4))))] = None
    return list(phrases)


def measure(model, samples: np.ndarray, latency_ms: int, n_phrases: int, rounds: int = 5) -> HotwordCost:
    """Decoder time per chunk without hotwords ("plain"), with N phrases at a vanishing score (the whole
    fused path, the same tokens: the machinery's own cost, "fused") and at the default score ("boosted",
    whose different tokens cost what they cost)."""
    chunks: list[np.ndarray] = []
    stream = model.stream(latency_ms, on_chunk=lambda chunk, tokens: chunks.append(chunk.encoded_proj))
    t0 = time.perf_counter()
    stream.accept(samples)
    stream.finish()
    total_s = time.perf_counter() - t0
    phrases = random_phrases(model, n_phrases)
    t0 = time.perf_counter()
    boosted = model.hotwords(phrases)
    compile_s = time.perf_counter() - t0
    variants = {"plain": None, "fused": model.hotwords(phrases, score=1e-9), "boosted": boosted}
    best = dict.fromkeys(variants, float("inf"))
    tokens = dict.fromkeys(variants, 0)
    for _ in range(rounds):
        for kind, hotwords in variants.items():
            decoder = GreedyDecoder(model.backend, model.config.decoder, hotwords=hotwords)
            t0 = time.perf_counter()
            for enc in chunks:
                decoder.decode_chunk(enc)
            best[kind] = min(best[kind], time.perf_counter() - t0)
            tokens[kind] = len(decoder.tokens)
    n = max(len(chunks), 1)
    return HotwordCost(phrases=len(boosted.phrases), latency_ms=latency_ms, chunks=len(chunks),
                       compile_s=compile_s, tree_bytes=boosted.graph.nbytes, step_ms_per_chunk=1e3 * total_s / n,
                       ms_per_chunk={k: 1e3 * v / n for k, v in best.items()}, tokens=tokens)


def format_cost(cost: HotwordCost) -> str:
    ms, tok = cost.ms_per_chunk, cost.tokens
    extra = ms["fused"] - ms["plain"]
    return (f"hotwords: {cost.phrases} random phrases, {cost.latency_ms} ms mode, {cost.chunks} chunks; decoder ms "
            f"per chunk: plain {ms['plain']:.3f} ({tok['plain']} tokens), fused at equal output {ms['fused']:.3f} "
            f"({tok['fused']} tokens; {100 * cost.fusion_overhead:+.1f}%, {100 * extra / cost.step_ms_per_chunk:+.2f}% "
            f"of the {cost.step_ms_per_chunk:.2f} ms step), boosted {ms['boosted']:.3f} ({tok['boosted']} tokens); "
            f"compiled in {1e3 * cost.compile_s:.0f} ms; tree {cost.tree_bytes / 1e3:.0f} kB shared by the streams "
            "using it (a stream holds one state)")
