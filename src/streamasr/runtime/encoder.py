"""The cache-aware encoder step and NeMo's chunk schedule, for one stream.

NeMo's streaming buffer (`CacheAwareStreamingAudioBuffer`) feeds the encoder as follows, for a mode with
right context R and subsampling s (8): the first step takes 1 + s*R mel frames with no pre-encode cache
and drops nothing; every later step takes the next s*(R+1) frames with the previous 9 mel frames
prepended (zeros where the stream has fewer) and drops the first 2 pre-encoded frames, whose receptive
field reached into the conv padding. At the end of the stream NeMo silently drops a last chunk of fewer
than s frames; by default we encode it too (users lose their last word otherwise), and `nemo_compat`
restores NeMo's behaviour exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamasr.model_config import EncoderConfig, LatencyMode
from streamasr.runtime.backend import Backend
from streamasr.runtime.cache import EncoderCache


@dataclass(frozen=True)
class ChunkSchedule:
    first_chunk: int  # mel frames of the first step
    chunk: int  # new mel frames of every later step
    pre_encode_cache: int
    drop: int
    min_tail: int  # NeMo's minimum frames for a later step (shorter tails are dropped in nemo_compat)

    @staticmethod
    def for_mode(enc: EncoderConfig, mode: LatencyMode) -> "ChunkSchedule":
        s = enc.subsampling_factor
        return ChunkSchedule(
            first_chunk=1 + s * mode.right_context,
            chunk=s * (mode.right_context + 1),
            pre_encode_cache=enc.pre_encode_cache,
            drop=enc.drop_extra_pre_encoded,
            min_tail=s,
        )


@dataclass
class EncodedChunk:
    encoded: np.ndarray  # (T, D)
    encoded_proj: np.ndarray  # (T, J) the joint's projection of `encoded`
    first_frame: int  # global index of encoded[0]


class StreamingEncoder:
    """Accumulates mel frames and runs the encoder step whenever a chunk is complete."""

    def __init__(self, backend: Backend, enc: EncoderConfig, mode: LatencyMode, n_mels: int, nemo_compat: bool = False,
                 language: int | None = None):
        """`language`: a prompt model's prompt slot (None for a model without a prompt); see `EncoderCache`."""
        self.backend = backend
        self.schedule = ChunkSchedule.for_mode(enc, mode)
        self.nemo_compat = nemo_compat
        self._pending = np.zeros((0, n_mels), dtype=np.float32)
        self._history = np.zeros((self.schedule.pre_encode_cache, n_mels), dtype=np.float32)
        self._steps = 0
        self._frames_out = 0
        self.frames_consumed = 0  # mel frames taken by the steps so far
        self.cache = EncoderCache(enc, language)

    @property
    def steps(self) -> int:
        return self._steps

    def next_width(self) -> int:
        """New mel frames the next step consumes (the first step is wider than later ones)."""
        return self.schedule.first_chunk if self._steps == 0 else self.schedule.chunk

    def frames_missing(self) -> int:
        """Mel frames the next step still needs beyond those buffered (0 when it can run)."""
        return max(0, self.next_width() - self._pending.shape[0])

    def ready(self) -> bool:
        """A full chunk is waiting (used by schedulers that batch steps of many streams)."""
        return self._pending.shape[0] >= self.next_width()

    def buffer(self, frames: np.ndarray) -> None:
        """Add mel frames (n, n_mels) without encoding: a batching scheduler runs the steps itself."""
        if frames.size:
            self._pending = np.concatenate((self._pending, frames))

    def push(self, frames: np.ndarray) -> list[EncodedChunk]:
        """Add mel frames (n, n_mels); encode every chunk that is now complete."""
        self.buffer(frames)
        out = []
        while self.ready():
            out.append(self._step(self.next_width()))
        return out

    def finish(self, final_frames: np.ndarray) -> list[EncodedChunk]:
        """Add the last frames and encode what remains (see the module docstring for the tail rule)."""
        out = self.push(final_frames)
        left = self._pending.shape[0]
        if left and (self._steps == 0 or not self.nemo_compat or left >= self.schedule.min_tail):
            out.append(self._step(left))
        self._pending = self._pending[:0]
        return out

    def next_input(self, width: int) -> tuple[np.ndarray, int]:
        """The mel input (W, n_mels) and drop count of the next step over `width` new frames."""
        new = self._pending[:width]
        if self._steps == 0:
            return new, 0
        return np.concatenate((self._history, new)), self.schedule.drop

    def advance(self, width: int, encoded: np.ndarray, encoded_proj: np.ndarray) -> EncodedChunk:
        """Commit a step's result (`cache` must already be updated): consume frames, keep mel history."""
        consumed = self._pending[:width]
        self._pending = self._pending[width:]
        self.frames_consumed += consumed.shape[0]
        self._history = np.concatenate((self._history, consumed))[-self.schedule.pre_encode_cache :]
        chunk = EncodedChunk(encoded, encoded_proj, self._frames_out)
        self._steps += 1
        self._frames_out += encoded.shape[0]
        return chunk

    def _step(self, width: int) -> EncodedChunk:
        mel, drop = self.next_input(width)
        enc, proj, k_new, v_new, conv_next = self.backend.encode(mel[None], drop, self.cache.feeds())
        self.cache.update(k_new[0], v_new[0], conv_next[0])
        return self.advance(width, enc[0], proj[0])
