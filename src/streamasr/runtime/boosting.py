"""Hotwords: NeMo 3.0.0's phrase-boosting tree (GPU-PB), built from phrases with the model's own tokenizer.

How NeMo builds it (`ContextGraph.build` + `GPUBoostingTreeModel.from_context_graph`), restated:

- each phrase is tokenized with the SentencePiece model as it is (case kept; SentencePiece's leading `▁`
  makes it word-initial); duplicate phrase strings count once;
- a trie over the token ids: the i-th token (0-based) of a phrase with context score cs weighs cs when
  i = 0 and cs * depth_scaling + ln(i + 1) after; a node shared by several phrases keeps
  max(cs, its existing weight); a node's score is its parent's score plus its weight;
- Aho-Corasick failure links; each node backs off to its failure node with weight
  node_score(fail) - node_score(node) (a partial match that fails takes its bonus back), except at the
  end of a phrase, where the backoff weighs 0 (a completed phrase keeps its bonus);
- the start state has an arc for every token: the first token of a phrase with its weight, any other
  token back to the start with weight 0.

The scores are then those of `runtime.fusion.BackoffGraph`; `hotword_score` is NeMo's
`boosting_tree_alpha`, `context_score` and `depth_scaling` its `boosting_tree.context_score` and
`.depth_scaling`, with NeMo's recommended values as defaults.

Where this differs from NeMo, it is to refuse or warn rather than crash or silently do nothing: an empty
phrase (NeMo: ZeroDivisionError) is skipped, a phrase with a piece the tokenizer cannot spell (NeMo would
boost `<unk>`) is dropped with a warning, and all problems of one phrase list are reported in one warning.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamasr.errors import StreamASRError
from streamasr.runtime.fusion import BackoffGraph, FusionModel, compile_graph

log = logging.getLogger("streamasr.hotwords")

#: NeMo's recommended values (word_boosting.rst; BoostingTreeModelConfig)
DEFAULT_SCORE = 1.0  # boosting_tree_alpha when phrases are given
DEFAULT_CONTEXT_SCORE = 1.0
DEFAULT_DEPTH_SCALING = 2.0


class HotwordError(StreamASRError):
    """Hotwords that cannot be used (an unreadable or empty phrase file, a negative weight)."""


#: a phrase and its own context score (None: the list's context score), as a phrase file line gives it
PhraseSpec = tuple[str, float | None]


def parse_phrase(text: str, where: str = "") -> PhraseSpec:
    """`phrase` or `phrase:weight`: the weight (a number after the last colon) replaces the context score
    for that phrase; a suffix that is not a number is part of the phrase ("foo:bar")."""
    text = text.strip()
    head, sep, tail = text.rpartition(":")
    if sep and head.strip():
        try:
            weight = float(tail)
        except ValueError:
            return text, None
        if not math.isfinite(weight) or weight <= 0:
            raise HotwordError(f"hotword weight must be a positive number{where}: {text!r}")
        return head.strip(), weight
    return text, None


def read_phrase_file(path: str | Path) -> list[PhraseSpec]:
    """One phrase per line, optionally `phrase:weight`; blank lines are skipped. A missing, non-UTF-8 or
    phrase-less file is a HotwordError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HotwordError(f"cannot read hotwords file {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HotwordError(f"hotwords file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    specs = [parse_phrase(line, f" ({path}, line {n})") for n, line in enumerate(text.split("\n"), 1)
             if line.strip()]
    if not specs:
        raise HotwordError(f"hotwords file {path} has no phrases (one phrase per line)")
    return specs


@dataclass
class _Trie:
    """NeMo's ContextGraph: the trie with its scores and failure links (node 0 is the root)."""

    context_score: float
    depth_scaling: float
    children: list[dict[int, int]] = field(default_factory=lambda: [{}])
    token_score: list[float] = field(default_factory=lambda: [0.0])
    node_score: list[float] = field(default_factory=lambda: [0.0])
    is_end: list[bool] = field(default_factory=lambda: [False])
    phrases: list[list[str]] = field(default_factory=lambda: [[]])
    fail: list[int] = field(default_factory=lambda: [0])

    def add(self, tokens: list[int], phrase: str, score: float | None) -> None:
        cs = self.context_score if not score else score
        node = 0
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            child = self.children[node].get(token)
            if child is None:
                weight = cs * self.depth_scaling + float(np.log(i + 1)) if i > 0 else cs
                child = len(self.children)
                self.children[node][token] = child
                self.children.append({})
                self.token_score.append(weight)
                self.node_score.append(self.node_score[node] + weight)
                self.is_end.append(last)
                self.phrases.append([])
                self.fail.append(0)
            else:  # shared: the larger weight, the node score from the parent's (descendants keep theirs)
                weight = max(cs, self.token_score[child])
                self.token_score[child] = weight
                self.node_score[child] = self.node_score[node] + weight
                self.is_end[child] = last or self.is_end[child]
            if last:
                self.phrases[child].append(phrase)
            node = child

    def link(self) -> list[int]:
        """Fill the failure links breadth-first; returns the nodes in that order."""
        order: list[int] = []
        queue = deque(self.children[0].values())
        while queue:
            node = queue.popleft()
            order.append(node)
            for token, child in self.children[node].items():
                f = self.fail[node] if node else 0
                while True:
                    nxt = self.children[f].get(token)
                    if nxt is not None and nxt != child:
                        self.fail[child] = nxt
                        break
                    if f == 0:
                        self.fail[child] = 0
                        break
                    f = self.fail[f]
                queue.append(child)
        return order


@dataclass(frozen=True)
class Hotwords:
    """A compiled phrase list: the boosting graph, the weights, and which phrases end in which state."""

    phrases: tuple[str, ...]  # the phrases accepted, in the order given
    fusion: FusionModel
    context_score: float
    depth_scaling: float
    state_phrases: dict[int, tuple[str, ...]]  # state -> phrases ending exactly there
    state_output: np.ndarray  # state -> nearest state on its backoff chain (itself included) ending a phrase, or -1
    warnings: tuple[str, ...] = ()

    @property
    def score(self) -> float:
        return self.fusion.alpha

    @property
    def graph(self) -> BackoffGraph:
        return self.fusion.graph

    def matched(self, state: int) -> list[str]:
        """The phrases that end at the token which led into `state` (longest first)."""
        found: list[str] = []
        s = int(self.state_output[state])
        while s > 0:
            found.extend(self.state_phrases[s])
            s = int(self.state_output[int(self.graph.backoff_to[s])])
        return found


def build_hotwords(phrases: Iterable[str | PhraseSpec], tokenizer, score: float = DEFAULT_SCORE,
                   context_score: float = DEFAULT_CONTEXT_SCORE, depth_scaling: float = DEFAULT_DEPTH_SCALING,
                   max_bonus: float | None = None, unk_score: float = 0.0) -> Hotwords:
    """Compile phrases (strings, or (phrase, own context score) pairs) with `tokenizer` (a SentencePiece
    processor) into NeMo's boosting tree. Problems with single phrases (empty, unspellable, duplicate) are
    collected into one warning (logged, and kept in `.warnings`); bad weights are a HotwordError."""
    for name, value in (("hotword score", score), ("hotword context score", context_score),
                        ("hotword depth scaling", depth_scaling)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise HotwordError(f"{name} must be a number >= 0, got {value!r}")
    if max_bonus is not None and (not math.isfinite(max_bonus) or max_bonus <= 0):
        raise HotwordError(f"hotword bonus cap must be a positive number, got {max_bonus!r}")
    vocab = tokenizer.get_piece_size()
    unk = tokenizer.unk_id()
    seen: set[str] = set()
    accepted: list[tuple[str, list[int], float | None]] = []
    duplicates, unspellable, empty = [], [], 0
    for item in phrases:
        text, weight = (item, None) if isinstance(item, str) else item
        if not isinstance(text, str):
            raise HotwordError(f"a hotword must be a string, got {text!r}")
        if weight is not None and (not math.isfinite(weight) or weight <= 0):
            raise HotwordError(f"hotword weight must be a positive number: {text!r}:{weight}")
        text = text.strip()
        if not text:
            empty += 1
            continue
        if text in seen:
            duplicates.append(text)
            continue
        seen.add(text)
        ids = [int(i) for i in tokenizer.encode(text, out_type=int)]
        if not ids or any(i == unk or not 0 <= i < vocab for i in ids):
            unspellable.append(text)
            continue
        accepted.append((text, ids, weight))
    problems = []
    if unspellable:
        problems.append(f"{len(unspellable)} the model's tokenizer cannot spell (dropped): "
                        + ", ".join(repr(p) for p in unspellable[:5]) + (" ..." if len(unspellable) > 5 else ""))
    if duplicates:
        problems.append(f"{len(duplicates)} duplicate(s) counted once: "
                        + ", ".join(repr(p) for p in duplicates[:5]) + (" ..." if len(duplicates) > 5 else ""))
    if empty:
        problems.append(f"{empty} empty phrase(s) skipped")
    warnings = ()
    if problems:
        warnings = (f"hotwords: {len(accepted)} phrase(s) used; " + "; ".join(problems),)
        log.warning(warnings[0])
    trie = _Trie(float(context_score), float(depth_scaling))
    for text, ids, weight in accepted:
        trie.add(ids, text, weight)
    order = trie.link()
    return _compile(trie, order, vocab, tuple(t for t, _, _ in accepted), float(score), max_bonus,
                    float(context_score), float(depth_scaling), float(unk_score), warnings)


def _compile(trie: _Trie, order: list[int], vocab: int, phrases: tuple[str, ...], score: float,
             max_bonus: float | None, context_score: float, depth_scaling: float, unk_score: float,
             warnings: tuple[str, ...]) -> Hotwords:
    state_of = {0: 0}
    for i, node in enumerate(order, 1):  # states numbered breadth-first (NeMo's numbering differs; no matter)
        state_of[node] = i
    n = len(order) + 1
    arcs: list[dict[int, tuple[float, int]]] = [{} for _ in range(n)]
    backoff: list[tuple[int, float]] = [(0, 0.0)] * n
    for node in order:
        s = state_of[node]
        arcs[s] = {tok: (trie.token_score[child], state_of[child]) for tok, child in trie.children[node].items()}
        f = trie.fail[node]
        weight = 0.0 if trie.is_end[node] else trie.node_score[f] - trie.node_score[node]
        backoff[s] = (state_of[f], weight)
    start = {tok: (trie.token_score[child], state_of[child]) for tok, child in trie.children[0].items()}
    graph = compile_graph(vocab, start, unk_score, arcs, backoff, initial_state=0)
    state_phrases = {state_of[node]: tuple(trie.phrases[node]) for node in order if trie.is_end[node]}
    output = np.full(n, -1, dtype=np.int32)
    for node in order:  # breadth-first: a node's failure node is done before it
        s = state_of[node]
        output[s] = s if trie.is_end[node] else output[state_of[trie.fail[node]]]
    return Hotwords(phrases, FusionModel(graph, score, max_bonus, unk_score), context_score, depth_scaling,
                    state_phrases, output, warnings)
