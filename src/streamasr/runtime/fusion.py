"""Shallow fusion on the greedy path: the backoff automaton shared by phrase boosting and the n-gram LM.

NeMo 3.0.0 compiles both its boosting tree and its n-gram LM into one kind of weighted automaton: every
state has forward arcs (label -> weight, next state) and one backoff arc (weight, state); the start state
has an arc for every label. The score of label v from state s walks s -> backoff(s) -> ... and stops at the
first state with an arc for v: score = (backoff weights of the states left) + that arc's weight, and the
next state is that arc's target. `BackoffGraph.row` computes the whole row at once, in float32 and in the
same order of additions as NeMo's `_advance_pytorch`, so that near-ties break the same way.

The greedy rule (`FusionModel`, used by `runtime/decoder.py`): whether a frame emits at all is decided on the
unbiased joint; only which non-blank label it emits is re-ranked by `log_softmax(joint) + sum alpha * row`.
A model's weighted rows are cached per state (read-only arrays, shared by all its streams).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: score rows kept per fusion model (shared by its streams): the start state and the states near it recur
ROW_CACHE = 256


@dataclass(frozen=True)
class BackoffGraph:
    """An immutable backoff automaton over labels 0..vocab_size-1 (no blank), shared by every stream.

    Forward arcs are stored per state as a contiguous run (`arc_start[s]:arc_end[s]`) of `arc_label`,
    `arc_weight` and `arc_to`; the start state's arcs are the dense `start_weight`/`start_to` rows."""

    vocab_size: int
    start_weight: np.ndarray  # (V,) float32
    start_to: np.ndarray  # (V,) int32
    arc_start: np.ndarray  # (S,) int64
    arc_end: np.ndarray  # (S,) int64
    arc_label: np.ndarray  # (A,) int64
    arc_weight: np.ndarray  # (A,) float32
    arc_to: np.ndarray  # (A,) int32
    backoff_to: np.ndarray  # (S,) int32
    backoff_weight: np.ndarray  # (S,) float32
    initial_state: int  # the state a stream starts in (NeMo: 0 for a tree, the BOS state for an LM)

    START = 0  # the state with an arc for every label

    @property
    def num_states(self) -> int:
        return int(self.backoff_to.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in (
            "start_weight", "start_to", "arc_start", "arc_end", "arc_label", "arc_weight", "arc_to",
            "backoff_to", "backoff_weight"))

    def chain(self, state: int) -> tuple[list[int], list[np.float32]]:
        """The states from `state` back to the start state, and the float32 backoff sum accumulated on
        arriving at each (0 at `state` itself), accumulated in walk order as NeMo does."""
        states, accs = [], []
        acc = np.float32(0.0)
        s = int(state)
        while True:
            states.append(s)
            accs.append(acc)
            if s == self.START:
                return states, accs
            acc = np.float32(acc + self.backoff_weight[s])
            s = int(self.backoff_to[s])

    def row(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (V,) float32, next states (V,) int32) for every label from `state`."""
        states, accs = self.chain(state)
        scores = (accs[-1] + self.start_weight).astype(np.float32, copy=False)
        nxt = self.start_to.copy()
        # the state nearest `state` wins: write from the start state's side inwards
        for s, acc in zip(reversed(states[:-1]), reversed(accs[:-1])):
            a, b = self.arc_start[s], self.arc_end[s]
            if b > a:
                labels = self.arc_label[a:b]
                scores[labels] = acc + self.arc_weight[a:b]
                nxt[labels] = self.arc_to[a:b]
        return scores, nxt

    def base(self, state: int, off_label_weight: float) -> np.float32:
        """The score from `state` of a label with no arc on the backoff chain whose start-state arc weighs
        `off_label_weight` (for a boosting tree: a token that starts no phrase)."""
        _, accs = self.chain(state)
        return np.float32(accs[-1] + np.float32(off_label_weight))


def compile_graph(vocab_size: int, start_arcs: dict[int, tuple[float, int]], off_weight: float,
                  arcs: list[dict[int, tuple[float, int]]], backoff: list[tuple[int, float]],
                  initial_state: int) -> BackoffGraph:
    """Pack a graph given as Python structures: `start_arcs` label -> (weight, to) of the start state (any
    other label loops to the start state with `off_weight`), `arcs[s]` and `backoff[s]` = (to, weight)
    for every state s (index 0, the start state, is ignored). Weights are rounded to float32 here, once."""
    n = len(backoff)
    start_weight = np.full(vocab_size, off_weight, dtype=np.float32)
    start_to = np.zeros(vocab_size, dtype=np.int32)
    for label, (w, to) in start_arcs.items():
        start_weight[label] = w
        start_to[label] = to
    counts = np.array([0] + [len(arcs[s]) for s in range(1, n)], dtype=np.int64)
    arc_end = np.cumsum(counts)
    arc_start = arc_end - counts
    total = int(arc_end[-1]) if n else 0
    labels = np.zeros(total, dtype=np.int64)
    weights = np.zeros(total, dtype=np.float32)
    targets = np.zeros(total, dtype=np.int32)
    for s in range(1, n):
        if arcs[s]:
            items = sorted(arcs[s].items())
            a, b = int(arc_start[s]), int(arc_end[s])
            labels[a:b] = [k for k, _ in items]
            weights[a:b] = [w for _, (w, _) in items]
            targets[a:b] = [t for _, (_, t) in items]
    backoff_to = np.array([0] + [t for t, _ in backoff[1:]], dtype=np.int32)
    backoff_weight = np.array([0.0] + [w for _, w in backoff[1:]], dtype=np.float32)
    return BackoffGraph(vocab_size, start_weight, start_to, arc_start, arc_end, labels, weights, targets,
                        backoff_to, backoff_weight, initial_state)


@dataclass(frozen=True)
class FusionModel:
    """A graph with its weight (NeMo's `*_alpha`) and an optional cap: with `max_bonus`, no label's weighted
    score exceeds that of a label outside every phrase by more than `max_bonus` (log-probability units), so a
    token the model ranks more than `max_bonus` below its best non-blank choice can never be chosen."""

    graph: BackoffGraph
    alpha: float
    max_bonus: float | None = None
    off_label_weight: float = 0.0  # the start-state weight of a label outside every phrase (for the cap)
    _rows: dict = field(default_factory=dict, compare=False, repr=False)

    def scores(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """alpha * row(state) (float32, as NeMo scales it), capped if asked, and the next states (read-only)."""
        cached = self._rows.get(state)
        if cached is not None:
            return cached
        raw, nxt = self.graph.row(state)
        scaled = raw * np.float32(self.alpha)
        if self.max_bonus is not None:
            base = self.graph.base(state, self.off_label_weight) * np.float32(self.alpha)
            np.minimum(scaled, np.float32(base + self.max_bonus), out=scaled)
        scaled.flags.writeable = False
        nxt.flags.writeable = False
        if len(self._rows) >= ROW_CACHE:  # (threads may race here: at worst a row is computed twice)
            self._rows.clear()
        self._rows[state] = (scaled, nxt)
        return scaled, nxt


def log_softmax(z: np.ndarray) -> np.ndarray:
    """float32 log-softmax of one row (what NeMo's CPU joint returns)."""
    m = z.max()
    return (z - (m + np.log(np.exp(z - m).sum(dtype=np.float32)))).astype(np.float32, copy=False)
