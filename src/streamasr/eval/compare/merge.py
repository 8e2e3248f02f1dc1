"""Stitching the text of overlapping windows, and the LocalAgreement commit policy.

Merge rule for overlapping windows (`merge_overlap`): the words of a new window that repeat the end of the
text so far are dropped. Concretely, the longest run of consecutive words (compared lower-case without
punctuation) shared by the last `search` words of the text so far and the first `search` words of the new
window is found; the text so far is kept up to the end of that run and the new window continues after it.
With no shared word the new window is appended whole. `search` is the number of words the overlap can hold
(about 4 words per second of overlap, plus slack), so a repeated word far from the seam is never taken for
the seam. This needs no word timestamps, so every backend (and random weights) can use it.

LocalAgreement-2 (`LocalAgreement`): after each update the system re-transcribes its audio buffer; the
words on which two consecutive hypotheses agree (their longest common prefix past what is already
committed) are committed and never change, which is how UFAL's whisper_streaming makes stable partials.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_PUNCT = re.compile(r"[^\w']+")
WORDS_PER_S = 4.0  # generous speaking rate for the overlap search window


def _key(word: str) -> str:
    return _PUNCT.sub("", word.lower())


def overlap_search_words(overlap_s: float) -> int:
    return math.ceil(overlap_s * WORDS_PER_S) + 2


def merge_overlap(merged: list[str], new: list[str], search: int) -> list[str]:
    """`merged` followed by `new` with the words both windows heard once (see the module docstring)."""
    if not merged or not new or search <= 0:
        return merged + new
    tail_start = max(0, len(merged) - search)
    tail = [_key(w) for w in merged[tail_start:]]
    head = [_key(w) for w in new[:search]]
    best_len, best_tail_end, best_head_end = 0, 0, 0
    for i in range(len(tail)):  # longest common run of words (small lists: quadratic is fine)
        for j in range(len(head)):
            k = 0
            while i + k < len(tail) and j + k < len(head) and tail[i + k] and tail[i + k] == head[j + k]:
                k += 1
            if k > best_len:
                best_len, best_tail_end, best_head_end = k, i + k, j + k
    if best_len == 0:
        return merged + new
    return merged[: tail_start + best_tail_end] + new[best_head_end:]


@dataclass
class TimedWord:
    word: str
    start: float
    end: float


@dataclass
class LocalAgreement:
    """Commits the words two consecutive hypotheses agree on; `committed` only ever grows."""

    committed: list[TimedWord] = field(default_factory=list)
    pending: list[TimedWord] = field(default_factory=list)

    @property
    def last_end(self) -> float:
        return self.committed[-1].end if self.committed else 0.0

    def _fresh(self, hyp: list[TimedWord]) -> list[TimedWord]:
        """Words of a hypothesis past the committed text: later than its end, minus a repeated seam."""
        words = [w for w in hyp if w.start >= self.last_end - 0.1]
        tail = [_key(w.word) for w in self.committed[-5:]]
        for n in range(min(5, len(tail), len(words)), 0, -1):
            if tail[-n:] == [_key(w.word) for w in words[:n]]:
                return words[n:]
        return words

    def update(self, hyp: list[TimedWord]) -> list[TimedWord]:
        """Feed one hypothesis of the buffer (absolute times); returns the newly committed words."""
        fresh = self._fresh(hyp)
        n = 0
        while n < min(len(fresh), len(self.pending)) and _key(fresh[n].word) == _key(self.pending[n].word):
            n += 1
        new = fresh[:n]
        self.committed += new
        self.pending = fresh[n:]
        return new

    def finish(self, hyp: list[TimedWord]) -> list[TimedWord]:
        """The last hypothesis (all audio heard): everything past the committed text is committed."""
        fresh = self._fresh(hyp)
        self.committed += fresh
        self.pending = []
        return fresh

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.committed)
