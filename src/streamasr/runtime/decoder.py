"""Greedy RNN-T decoding with NeMo `greedy_batch` (label-looping) semantics, carried across chunks.

Per frame t: take the argmax of the joint for (frame t, current prediction output); blank moves to the next
frame, any other label is emitted at t, fed to the prediction network, and t is tried again, until blank or
`max_symbols` labels on that frame (then t advances without evaluating blank). The prediction network is
primed once with the blank id (a zero embedding) from a zero state; its state, its projected output and
the global frame count carry over from chunk to chunk.

Cost: the prediction network runs once per *emitted label* (its output is cached), and the joint runs once
per label plus once per chunk, each call scoring every remaining frame of the chunk at once and jumping
straight to the first non-blank frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamasr.model_config import DecoderConfig
from streamasr.runtime.backend import Backend


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

    def __post_init__(self) -> None:
        h = np.zeros((self.cfg.pred_layers, 1, self.cfg.pred_hidden), dtype=np.float32)
        self._pred, self._h, self._c = self.backend.predict(np.array([self.cfg.blank_id], dtype=np.int64), h, h.copy())

    def decode_chunk(self, encoded_proj: np.ndarray) -> list[Token]:
        """Decode one chunk's frames (T, J); returns the tokens it emitted."""
        new: list[Token] = []
        n_frames = encoded_proj.shape[0]
        blank = self.cfg.blank_id
        t = 0
        on_frame = 0
        while t < n_frames:
            best, logp = self.backend.joint(encoded_proj[None, t:], self._pred)
            labels = best[0]
            hits = np.flatnonzero(labels != blank)
            if hits.size == 0:
                break
            first = int(hits[0])
            if first > 0:
                on_frame = 0
            t += first
            label = int(labels[first])
            new.append(Token(label, self.frames_decoded + t, float(logp[0, first])))
            self._pred, self._h, self._c = self.backend.predict(np.array([label], dtype=np.int64), self._h, self._c)
            on_frame += 1
            if on_frame >= self.cfg.max_symbols_per_frame:
                t += 1
                on_frame = 0
        self.frames_decoded += n_frames
        self.tokens.extend(new)
        return new
