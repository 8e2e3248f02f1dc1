"""Token ids to text, as NeMo's RNNTBPEDecoding does it.

SentencePiece turns pieces into text (`▁` becomes a space); then NeMo removes a single whitespace
character before any punctuation mark that occurs in the vocabulary, because the model emits
punctuation as separate `▁,`-style pieces in places.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from streamasr.errors import ModelError

#: the body of a language tag piece (`de-DE`, `fil-PH`), as the multilingual tokenizers spell them
LANGUAGE_TAG_BODY = r"[a-z]{2,3}-[A-Za-z]{2,4}"


class TextDecoder:
    def __init__(self, tokenizer_model: Path):
        import sentencepiece as spm

        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"cannot load tokenizer {tokenizer_model}: {exc}") from exc
        self.pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        punct = sorted(self._vocab_punctuation(self.pieces))
        self._punct_re = re.compile(r"\s([" + re.escape("".join(punct)) + r"])") if punct else None
        # a multilingual model in `auto` mode emits language tags (`<de-DE>`) at segment ends: kept in the
        # token ids, removed from the text with the whitespace before them (NeMo's `strip_lang_tags` rule)
        self.tag_languages = {i: m.group(1) for i, p in enumerate(self.pieces)
                              if (m := re.fullmatch("\u2581?<(" + LANGUAGE_TAG_BODY + ")>", p))}
        self._tag_re = re.compile(r"\s*<(?:" + LANGUAGE_TAG_BODY + ")>") if self.tag_languages else None

    @staticmethod
    def _vocab_punctuation(pieces: list[str]) -> set[str]:
        found: set[str] = set()
        for piece in pieces:
            if (piece.startswith("[") and piece.endswith("]")) or (piece.startswith("<") and piece.endswith(">")):
                continue
            if piece.startswith("##") or piece.startswith("▁") or not piece.strip():
                continue
            found.update(ch for ch in piece if unicodedata.category(ch).startswith("P"))
        return found

    def decode(self, ids: list[int]) -> str:
        pieces = [self.pieces[i] for i in ids if 0 <= i < len(self.pieces)]
        text = self.sp.decode_pieces(pieces)
        if self._punct_re is not None:
            text = self._punct_re.sub(r"\1", text)
        if self._tag_re is not None:
            text = self._tag_re.sub("", text)
        return text

    def piece(self, token_id: int) -> str:
        return self.pieces[token_id]

    def language_of(self, token_id: int) -> str | None:
        """The locale a language-tag token names (`<de-DE>` -> "de-DE"); None for any other token."""
        return self.tag_languages.get(token_id)

    def last_language(self, ids: list[int]) -> str | None:
        """The locale of the last language tag among `ids` (what `auto` mode detected for them), or None."""
        if self.tag_languages:
            for i in reversed(ids):
                if i in self.tag_languages:
                    return self.tag_languages[i]
        return None

    def starts_word(self, token_id: int) -> bool:
        # neither a tag nor a lone `▁` (which precedes a tag) is a word start: a tag's text goes with the space
        # before it, so the text before them is not settled until the next real word begins
        piece = self.pieces[token_id] if 0 <= token_id < len(self.pieces) else ""
        return piece.startswith("\u2581") and piece != "\u2581" and token_id not in self.tag_languages

    def join(self, left: str, right_ids: list[int]) -> str:
        """decode(left_ids + right_ids) from decode(left_ids) when `right_ids` starts a new word: the word's
        leading space, unless NeMo's rule takes the space before a punctuation mark away."""
        right = self.decode(right_ids)
        if not left:
            return right
        if right and self._punct_re is not None and self._punct_re.match(" " + right[0]):
            return left + right
        return left + " " + right


class IncrementalText:
    """The text of an append-only token sequence, kept in time proportional to the new tokens.

    A long stream's text cannot be decoded from all its tokens at every chunk (the cost would grow with the
    stream's age). Text before the last word start is settled: later tokens cannot change it, so only the
    tokens from there on are decoded again."""

    def __init__(self, decoder: TextDecoder):
        self.decoder = decoder
        self.ids: list[int] = []
        self.settled = ""  # decode(ids[:settled_n])
        self.settled_n = 0
        self.text = ""

    def extend(self, ids: list[int]) -> str:
        """Append token ids; returns the whole text."""
        self.ids.extend(ids)
        last_start = next((i for i in range(len(self.ids) - 1, self.settled_n, -1)
                           if self.decoder.starts_word(self.ids[i])), None)
        # (while the settled text is empty, e.g. only a language tag so far, decoding from the first token keeps
        # the whitespace a removed tag leaves exactly as a full decode does)
        if last_start is not None:
            part = self.ids[self.settled_n : last_start]
            self.settled = (self.decoder.join(self.settled, part) if self.settled
                            else self.decoder.decode(self.ids[:last_start]))
            self.settled_n = last_start
        tail = self.ids[self.settled_n :]
        self.text = self.decoder.join(self.settled, tail) if self.settled else self.decoder.decode(self.ids)
        return self.text
