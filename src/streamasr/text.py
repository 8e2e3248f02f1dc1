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
        return text

    def piece(self, token_id: int) -> str:
        return self.pieces[token_id]
