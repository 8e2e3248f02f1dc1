"""Greedy RNN-T decoding with NeMo `greedy_batch` (label-looping) semantics, carried across chunks.

Per frame t: take the argmax of the joint for (frame t, current prediction output); blank moves to the next
frame, any other label is emitted at t, fed to the prediction network, and t is tried again, until blank or
`max_symbols` labels on that frame (then t advances without evaluating blank). The prediction network is
primed once with the blank id (a zero embedding) from a zero state; its state, its projected output and
the global frame count carry over from chunk to chunk.

Cost: the prediction network runs once per *emitted label* (its output is cached), and the joint runs once
per label plus once per chunk, each call scoring every remaining frame of the chunk at once and jumping
straight to the first non-blank frame.

Fusion (hotwords, n-gram LM), NeMo's label-looping rule: whether a frame emits is decided on the unbiased
joint (the ONNX joint's argmax, as without fusion); when it emits, the label is re-ranked among the non-blank
labels by log_softmax(joint) + LM scores + hotword scores, computed once per emitted label from the fusion
states, which advance only on emitted labels and carry across chunks. The joint graph then also returns
every label's logit (fetched only while fusing; the graph computes them anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamasr.model_config import DecoderConfig
from streamasr.runtime.backend import Backend
from streamasr.runtime.boosting import Hotwords
from streamasr.runtime.fusion import FusionModel, log_softmax


@dataclass
class Token:
    id: int
    frame: int  # global encoder frame index
    logprob: float


@dataclass
class GreedyDecoder:
    backend: Backend
    cfg: DecoderConfig
    tokens: list[Token] = field(default_factory=list)
    frames_decoded: int = 0
    lm: FusionModel | None = None
    hotwords: Hotwords | None = None
    #: (index into `tokens`, phrase) for every hotword phrase completed by the emitted tokens
    hotword_matches: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        h = np.zeros((self.cfg.pred_layers, 1, self.cfg.pred_hidden), dtype=np.float32)
        self._pred, self._h, self._c = self.backend.predict(np.array([self.cfg.blank_id], dtype=np.int64), h, h.copy())
        self._lm_state = self.lm.graph.initial_state if self.lm is not None else 0
        self._hw_state = self.hotwords.graph.initial_state if self.hotwords is not None else 0
        self._rows: tuple | None = None  # the fusion score rows of the current states

    def set_hotwords(self, hotwords: Hotwords | None) -> None:
        """Replace the phrase list from the next decoded frame on; the new tree starts in its start state."""
        self.hotwords = hotwords
        self._hw_state = hotwords.graph.initial_state if hotwords is not None else 0
        self._rows = None

    def _fusing(self) -> bool:
        return ((self.lm is not None and self.lm.alpha != 0)
                or (self.hotwords is not None and self.hotwords.score != 0 and len(self.hotwords.phrases) > 0))

    def _fused_label(self, logits: np.ndarray) -> tuple[int, float]:
        """The non-blank label NeMo's fused greedy search emits for this frame's logits (V+1), and its
        unbiased log-probability."""
        logp = log_softmax(logits)
        if self._rows is None:
            lm = self.lm.scores(self._lm_state) if self.lm is not None and self.lm.alpha != 0 else None
            hw = (self.hotwords.fusion.scores(self._hw_state)
                  if self.hotwords is not None and self.hotwords.score != 0 and self.hotwords.phrases else None)
            self._rows = (lm, hw)
        biased = logp[: self.cfg.blank_id].copy()
        for row in self._rows:  # NeMo's order: the LM, then the boosting tree
            if row is not None:
                biased += row[0]
        label = int(np.argmax(biased))
        return label, float(logp[label])

    def _advance_fusion(self, label: int) -> None:
        lm, hw = self._rows if self._rows is not None else (None, None)
        if self.lm is not None:
            self._lm_state = int((lm or self.lm.scores(self._lm_state))[1][label])
        if self.hotwords is not None and self.hotwords.phrases:
            nxt = (hw or self.hotwords.fusion.scores(self._hw_state))[1]
            self._hw_state = int(nxt[label])
            for phrase in self.hotwords.matched(self._hw_state):
                self.hotword_matches.append((len(self.tokens), phrase))
        self._rows = None

    def decode_chunk(self, encoded_proj: np.ndarray) -> list[Token]:
        """Decode one chunk's frames (T, J); returns the tokens it emitted."""
        new: list[Token] = []
        n_frames = encoded_proj.shape[0]
        blank = self.cfg.blank_id
        t = 0
        on_frame = 0
        fusing = self._fusing()
        tracking = self.lm is not None or self.hotwords is not None  # states advance even at weight 0
        while t < n_frames:
            if fusing:
                best, logp, logits = self.backend.joint_logits(encoded_proj[None, t:], self._pred)
            else:
                best, logp = self.backend.joint(encoded_proj[None, t:], self._pred)
            labels = best[0]
            hits = np.flatnonzero(labels != blank)
            if hits.size == 0:
                break
            first = int(hits[0])
            if first > 0:
                on_frame = 0
            t += first
            label, logprob = int(labels[first]), float(logp[0, first])
            if fusing:
                label, logprob = self._fused_label(logits[0, first])
            if tracking:
                self._advance_fusion(label)
            new.append(Token(label, self.frames_decoded + t, logprob))
            self.tokens.append(new[-1])
            self._pred, self._h, self._c = self.backend.predict(np.array([label], dtype=np.int64), self._h, self._c)
            on_frame += 1
            if on_frame >= self.cfg.max_symbols_per_frame:
                t += 1
                on_frame = 0
        self.frames_decoded += n_frames
        return new
