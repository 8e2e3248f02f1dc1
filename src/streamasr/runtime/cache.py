"""A stream's encoder caches, kept as ring buffers, and how a step's cache inputs are assembled.

The encoder step (model format 3) reads each layer's attention cache where it lies and returns only the
step's new keys and values; this module owns the rest of the bookkeeping: writing those frames over the
oldest slots, the ring's start and fill level, and, for a batched step, one copy of each stream's rings
into a batch buffer: one copy per stream and batched step, none for a stream stepped alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamasr.model_config import EncoderConfig, cache_shapes


def encoder_input_names(n_layers: int, prompt: bool = False) -> list[str]:
    """The encoder graph's inputs, in order (see torch_modules.EncoderStep): the exporter names them with
    this, and `CacheFeeds` feeds them by it. A prompt model's graph also takes each stream's language slot."""
    return (["mel", "drop", "cache_len", "cache_start", "conv_cache"] + [f"k_cache_{i}" for i in range(n_layers)]
            + [f"v_cache_{i}" for i in range(n_layers)] + (["language"] if prompt else []))


@dataclass
class CacheFeeds:
    """The encoder step's cache inputs for a batch of B streams (see torch_modules.EncoderStep)."""

    cache_len: np.ndarray  # (B,) int64
    cache_start: np.ndarray  # (B,) int64
    conv: np.ndarray  # (B, L, K-1, D)
    k: list[np.ndarray]  # L arrays (B, H, left, d_k), C-contiguous
    v: list[np.ndarray]
    language: np.ndarray | None = None  # (B,) int64 prompt slots, for a prompt model

    def as_inputs(self) -> dict[str, np.ndarray]:
        """Named graph inputs (the ONNX encoder's input names)."""
        return dict(zip(encoder_input_names(len(self.k), self.language is not None)[2:], self.as_args()))

    def as_args(self) -> tuple[np.ndarray, ...]:
        """Positional graph inputs after mel and drop, in the exported order."""
        language = () if self.language is None else (self.language,)
        return (self.cache_len, self.cache_start, self.conv, *self.k, *self.v, *language)


class EncoderCache:
    """One stream's caches: per-layer rings of projected keys and values (L, H, left, d_k), the conv states
    (L, K-1, D), how many ring frames are valid and which slot holds the oldest.

    A prompt model's language slot travels with them (`language`, None without a prompt): like the caches it
    is per stream and fed to every step, and the caches themselves never depend on it, so a stream may change
    it between any two steps."""

    def __init__(self, enc: EncoderConfig, language: int | None = None):
        self.language = language
        shapes = cache_shapes(enc, 1)
        self.left = enc.left_context
        self.k = np.zeros((enc.n_layers,) + shapes["k_cache"][1:], dtype=np.float32)
        self.v = np.zeros((enc.n_layers,) + shapes["v_cache"][1:], dtype=np.float32)
        self.conv = np.zeros(shapes["conv_cache"][1:], dtype=np.float32)
        self.length = 0
        self.start = 0

    def feeds(self) -> CacheFeeds:
        """Inputs for a step of this stream alone: views of its own arrays, nothing copied."""
        return CacheFeeds(np.array([self.length], dtype=np.int64), np.array([self.start], dtype=np.int64),
                          self.conv[None], [k[None] for k in self.k], [v[None] for v in self.v],
                          None if self.language is None else np.array([self.language], dtype=np.int64))

    def update(self, k_new: np.ndarray, v_new: np.ndarray, conv_next: np.ndarray) -> None:
        """Write a step's new keys and values over the T oldest slots; take its conv states.

        The graph returns them stacked along their first axis, (L*H, T, d_k) and (L*(K-1), D) (a model format 3
        graph: (L, H, T, d_k) and (L, K-1, D)); both are read here as views of the per-layer layout."""
        layers, heads, _, d_k = self.k.shape
        k_new = k_new.reshape(layers, heads, -1, d_k)
        v_new = v_new.reshape(layers, heads, -1, d_k)
        t = k_new.shape[2]
        if t > self.left:
            raise ValueError(f"a step of {t} frames does not fit a ring of {self.left}")
        end = self.start + t
        if end <= self.left:
            self.k[:, :, self.start : end] = k_new
            self.v[:, :, self.start : end] = v_new
        else:  # wraps around
            first = self.left - self.start
            self.k[:, :, self.start :] = k_new[:, :, :first]
            self.v[:, :, self.start :] = v_new[:, :, :first]
            self.k[:, :, : end - self.left] = k_new[:, :, first:]
            self.v[:, :, : end - self.left] = v_new[:, :, first:]
        self.conv[...] = conv_next.reshape(self.conv.shape)
        self.start = end % self.left
        self.length = min(self.length + t, self.left)

    def oldest_first(self) -> tuple[np.ndarray, np.ndarray]:
        """The valid cached keys and values in time order (L, H, length, d_k): for tests and inspection."""
        order = (self.start + np.arange(self.left)) % self.left
        order = order[self.left - self.length :]
        return self.k[:, :, order], self.v[:, :, order]


class BatchBuffers:
    """Reusable arrays for batched cache inputs.

    Gathering into fresh arrays would cost every batched step an allocation and page faults for each
    stream's caches (tens of MB per stream at full size).
    The buffers grow to the largest batch seen and are dropped when the server has no streams, so that
    memory returns to its idle level.
    """

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], axis: int = 0) -> np.ndarray:
        """A float32 array of `shape` whose `axis` (the batch axis) is a leading slice of a larger buffer,
        so that with axis 1 every `[i]` is C-contiguous; its contents are whatever was there."""
        have = self._arrays.get(name)
        other = shape[:axis] + shape[axis + 1 :]
        if have is None or have.shape[:axis] + have.shape[axis + 1 :] != other or have.shape[axis] < shape[axis]:
            have = np.empty(shape, dtype=np.float32)
            self._arrays[name] = have
        return have[(slice(None),) * axis + (slice(0, shape[axis]),)]

    def clear(self) -> None:
        self._arrays.clear()


def batch_feeds(caches: list[EncoderCache], buffers: BatchBuffers | None = None) -> CacheFeeds:
    """The inputs of one batched step over these streams: each stream's rings copied once into a
    layer-major batch array (from `buffers` when given), whose per-layer slices the graph reads."""
    if len(caches) == 1:
        return caches[0].feeds()
    buffers = buffers if buffers is not None else BatchBuffers()  # (a throwaway one: fresh arrays)
    n = len(caches)
    first = caches[0]
    rings = {}
    for name in ("k", "v"):
        shape = (first.k.shape[0], n) + first.k.shape[1:]
        out = buffers.get(name, shape, axis=1)
        for b, c in enumerate(caches):
            out[:, b] = getattr(c, name)
        rings[name] = [out[i] for i in range(shape[0])]
    conv = buffers.get("conv", (n,) + first.conv.shape)
    np.stack([c.conv for c in caches], out=conv)
    languages = [c.language for c in caches]
    if len({lang is None for lang in languages}) != 1:
        raise ValueError("batch_feeds: streams of a prompt model and of a model without one")
    return CacheFeeds(np.array([c.length for c in caches], dtype=np.int64),
                      np.array([c.start for c in caches], dtype=np.int64), conv, rings["k"], rings["v"],
                      None if languages[0] is None else np.array(languages, dtype=np.int64))
