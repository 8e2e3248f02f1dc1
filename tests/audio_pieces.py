"""Splitting audio into random-sized pieces, for tests of streaming continuity."""

from __future__ import annotations

import numpy as np


def pieces(samples: np.ndarray, rng: np.random.Generator, max_len: int) -> list[np.ndarray]:
    """Split samples into consecutive pieces of 1..max_len samples."""
    out, i = [], 0
    while i < samples.size:
        n = int(rng.integers(1, max_len + 1))
        out.append(samples[i : i + n])
        i += n
    return out
