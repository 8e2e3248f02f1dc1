"""Words with times and confidence, assembled from RNN-T tokens; and the endpoint rule.

A SentencePiece piece that starts with `▁` begins a new word; the pieces up to the next such piece belong
to it (a segment that opens with a continuation piece starts a word with it). A word starts at its first
token's encoder frame and ends one frame (`frame_seconds`, 80 ms) after its last token's frame.

Confidence: the greedy decoder keeps, for every emitted token, the joint's log-probability of that label
on its frame (log-softmax over vocabulary + blank). A word's confidence is the geometric mean of its
tokens' probabilities, exp(mean log p), in (0, 1]: it does not shrink with word length the way the product
would, and a single unsure piece still pulls the word down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WORD_START = "\u2581"


@dataclass
class Word:
    word: str
    start_s: float
    end_s: float
    confidence: float

    def to_dict(self) -> dict:
        return {"word": self.word, "start_s": self.start_s, "end_s": self.end_s, "confidence": self.confidence}


def assemble_words(tokens, pieces: list[str], decode, frame_s: float) -> list[Word]:
    """tokens: objects with .id, .frame, .logprob; pieces: their SentencePiece pieces; decode: ids -> text."""
    groups: list[list] = []
    for tok, piece in zip(tokens, pieces):
        if not groups or piece.startswith(WORD_START):
            groups.append([])
        groups[-1].append(tok)
    words = []
    for group in groups:
        text = decode([t.id for t in group]).strip()
        if not text:  # a lone `▁` or a control piece: no visible word
            continue
        mean_lp = sum(t.logprob for t in group) / len(group)
        words.append(Word(
            word=text,
            start_s=round(group[0].frame * frame_s, 3),
            end_s=round((group[-1].frame + 1) * frame_s, 3),
            confidence=round(math.exp(min(0.0, mean_lp)), 4),
        ))
    return words


def trailing_blank_frames(frames_decoded: int, last_token_frame: int | None, segment_start_frame: int) -> int:
    """Frames decoded since the last token of the segment (since its start when it has none)."""
    since = segment_start_frame if last_token_frame is None else last_token_frame + 1
    return max(0, frames_decoded - since)
