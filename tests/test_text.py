"""Tokens to text: the incremental text a stream keeps equals decoding all its tokens at once.

A stream's text is kept incrementally (only the tokens after the last word start are decoded again), so that
a long stream's per-chunk cost does not grow with its age. Any token sequence, appended in any pieces, must
give exactly the text of one full decode: NeMo's punctuation rule and SentencePiece's spaces included.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamasr.text import IncrementalText, TextDecoder


def _decoder(model_dir) -> TextDecoder:
    return TextDecoder(model_dir / "tokenizer.model")


def test_incremental_text_equals_the_full_decode(tiny_model_dir):
    decoder = _decoder(tiny_model_dir)
    n = len(decoder.pieces)

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(st.lists(st.integers(0, n - 1), max_size=6), max_size=25))
    def check(pieces_of_ids):
        text = IncrementalText(decoder)
        seen: list[int] = []
        for ids in pieces_of_ids:
            seen += ids
            assert text.extend(ids) == decoder.decode(seen)

    check()


def test_settled_text_is_a_prefix_that_stops_growing_work(tiny_model_dir):
    decoder = _decoder(tiny_model_dir)
    words = [i for i, p in enumerate(decoder.pieces) if p.startswith("\u2581") and len(p) > 2][:5]
    text = IncrementalText(decoder)
    for _ in range(200):
        text.extend(words)
    # only the tokens after the last word start are decoded again
    assert len(text.ids) - text.settled_n == 1
    assert text.text.startswith(text.settled) and text.text == decoder.decode(text.ids)


def test_incremental_text_with_language_tags(tmp_path):
    """A multilingual tokenizer's language tags (`▁` `<de-DE>`) are removed from the text with the space before
    them, as NeMo's `strip_lang_tags` does, and the incremental text still equals the full decode."""
    from streamasr.convert.random_model import train_tokenizer

    train_tokenizer(tmp_path, 160, symbols=("<de-DE>", "<fr-FR>"))
    decoder = _decoder(tmp_path)
    tags = sorted(decoder.tag_languages)
    assert [decoder.language_of(t) for t in tags] == ["de-DE", "fr-FR"]
    space = decoder.pieces.index("\u2581")
    word = next(i for i, p in enumerate(decoder.pieces) if p.startswith("\u2581") and len(p) > 2)
    dot = decoder.pieces.index(".")
    assert decoder.decode([word, dot, space, tags[0], word]) == decoder.decode([word, dot, word])
    assert decoder.last_language([word, tags[0], word, tags[1], word]) == "fr-FR"
    n = len(decoder.pieces)
    ids = st.one_of(st.integers(0, n - 1), st.sampled_from([space, *tags, dot]))

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(st.lists(ids, max_size=6), max_size=25))
    def check(pieces_of_ids):
        text = IncrementalText(decoder)
        seen: list[int] = []
        for part in pieces_of_ids:
            seen += part
            assert text.extend(part) == decoder.decode(seen)
            assert "<" not in text.text or "<" in "".join(decoder.pieces[i] for i in seen if i not in tags)

    check()
