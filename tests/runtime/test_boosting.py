"""Hotwords and the n-gram LM at the level of their score tables: NeMo 3.0.0's own `advance` rows, bit for
bit, for every reachable state; the worked example of the research notes; phrase lists and files, ARPA
files and their bad inputs; the bonus cap. Decoding against NeMo is in tests/convert/test_hotwords_parity.py.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from streamasr.eval.nemo_boosting import write_token_arpa
from streamasr.runtime.boosting import HotwordError, build_hotwords, read_phrase_file
from streamasr.runtime.ngram_lm import LanguageModelError, load_lm, read_arpa


class LetterTokenizer:
    """A stand-in SentencePiece: one token per letter a-z (ids 10..35), spaces dropped, else <unk> (0)."""

    def get_piece_size(self) -> int:
        return 40

    def unk_id(self) -> int:
        return 0

    def encode(self, text: str, out_type=int) -> list[int]:
        return [ord(c) - ord("a") + 10 if "a" <= c <= "z" else 0 for c in text if c != " "]


def _walk_rows(ref_advance, ours, ref_start: int, our_start: int, vocab: int, limit: int = 400) -> int:
    """Compare rows of every state reachable from the starts (pairing states by the arcs taken)."""
    import torch

    pairs, todo = {}, [(ref_start, our_start)]
    while todo and len(pairs) < limit:
        r, o = todo.pop()
        if r in pairs:
            assert pairs[r] == o
            continue
        pairs[r] = o
        scores, nxt = ref_advance(torch.tensor([r]))
        scores, nxt = scores[0].detach().numpy(), nxt[0].detach().numpy()
        our_scores, our_next = ours.row(o)
        assert np.array_equal(scores, our_scores), (r, np.abs(scores - our_scores).max())
        todo.extend((int(nxt[v]), int(our_next[v])) for v in range(vocab))
    return len(pairs)


@pytest.mark.parametrize("phrases,cs,ds,weights", [
    (["cache aware streaming", "aware streaming", "streaming", "nemotron", "nemotron speech", "nemo"], 1.0, 2.0, None),
    (["abracadabra", "cadabra", "bra", "abra cadabra"], 1.5, 1.0, None),
    (["the", "the man", "them", "a man", "and the", "there"], 1.0, 0.3, [0.0, 2.5, 0.0, 0.7, 0.0, 3.0]),
])
def test_tree_rows_equal_nemo_bit_for_bit(loaded_tiny, phrases, cs, ds, weights):
    from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import (
        GPUBoostingTreeModel,
    )
    from nemo.collections.asr.parts.context_biasing.context_graph_universal import (
        ContextGraph,
    )
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import (
        SentencePieceTokenizer,
    )

    tok = SentencePieceTokenizer(str(loaded_tiny.directory / "tokenizer.model"))
    graph = ContextGraph(context_score=cs, depth_scaling=ds)  # what GPUBoostingTreeModel.from_config builds
    graph.build(token_ids=[tok.text_to_ids(p) for p in phrases], phrases=phrases,
                scores=weights or [0.0] * len(phrases))
    ref = GPUBoostingTreeModel.from_context_graph(graph, vocab_size=tok.vocab_size, use_triton=False)
    specs = [(p, w or None) for p, w in zip(phrases, weights or [0.0] * len(phrases))]
    ours = build_hotwords(specs, loaded_tiny.text.sp, context_score=cs, depth_scaling=ds)
    assert _walk_rows(ref.advance, ours.graph, 0, 0, tok.vocab_size) == ours.graph.num_states > len(phrases)


@pytest.mark.parametrize("order", [2, 4])
def test_lm_rows_equal_nemo_bit_for_bit(loaded_tiny, tmp_path, order):
    from nemo.collections.asr.parts.submodules.ngram_lm.ngram_lm_batched import (
        NGramGPULanguageModel,
    )

    vocab = loaded_tiny.config.decoder.vocab_size
    rng = np.random.default_rng(order)
    seqs = [list(rng.integers(0, 40, size=int(rng.integers(3, 15)))) for _ in range(30)]
    arpa = write_token_arpa(seqs, tmp_path / "lm.arpa", order=order)
    ref = NGramGPULanguageModel.from_file(arpa, vocab_size=vocab, use_triton=False)
    ours = read_arpa(arpa, vocab)
    assert _walk_rows(ref.advance, ours, 1, ours.initial_state, vocab) > 40
    assert np.isfinite(ours.row(0)[0]).all()  # tokens outside the LM get the <unk> share, not -inf


def test_worked_example_of_the_research_notes():
    """cs=1, ds=2, a 6-piece phrase: continuing gains 1, 2.6931, 3.0986, ...; an unrelated piece takes the
    bonus so far back; a completed phrase keeps it (research/hotwords.md §2.3)."""
    hw = build_hotwords(["abcdef"], LetterTokenizer())
    cont = [1.0, 2.6931, 3.0986, 3.3863, 3.6094, 3.7918]
    unrelated = [0.0, -1.0, -3.6931, -6.7918, -10.1781, -13.7875]
    state = 0
    for depth in range(6):
        scores, nxt = hw.graph.row(state)
        assert scores[10 + depth] == pytest.approx(cont[depth], abs=1e-4)
        assert scores[30] == pytest.approx(unrelated[depth], abs=1e-4)  # "u": starts no phrase
        state = int(nxt[10 + depth])
    scores, _ = hw.graph.row(state)
    assert scores[30] == 0.0 and hw.matched(state) == ["abcdef"]


def test_matches_name_every_phrase_ending_here():
    hw = build_hotwords(["abc", "bc", "c", "xbc"], LetterTokenizer())
    state, found = 0, []
    for ch in "zabcc":
        state = int(hw.graph.row(state)[1][ord(ch) - ord("a") + 10])
        found.append(hw.matched(state))
    assert found == [[], [], [], ["abc", "bc", "c"], ["c"]]


def test_bonus_cap_bounds_every_label_and_is_off_by_default():
    free = build_hotwords(["abcdef", "abx"], LetterTokenizer(), score=2.0)
    capped = build_hotwords(["abcdef", "abx"], LetterTokenizer(), score=2.0, max_bonus=1.5)
    state = 0
    for ch in "abcd":
        scores, nxt = free.fusion.scores(state)
        cap_scores, cap_next = capped.fusion.scores(state)
        base = scores[30]  # a label outside every phrase
        assert cap_scores.max() <= base + 1.5 + 1e-6 < scores.max()
        assert np.array_equal(nxt, cap_next)
        assert np.array_equal(np.minimum(scores, base + np.float32(1.5)), cap_scores)
        state = int(nxt[ord(ch) - ord("a") + 10])


def test_phrase_list_problems_make_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="streamasr.hotwords"):
        hw = build_hotwords(["abc", "abc ", "", "  ", "ab1", "d", "d"], LetterTokenizer())
    assert hw.phrases == ("abc", "d")
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "2 phrase(s) used" in message and "cannot spell" in message and "'ab1'" in message
    assert "2 duplicate(s)" in message and "2 empty" in message
    assert hw.warnings == (message,)


def test_phrase_file(tmp_path):
    f = tmp_path / "terms.txt"
    f.write_text("\ufeffNemotron\n\nONNX Runtime:2.5\n  Kowalczyk : 3  \nfoo:bar\n", encoding="utf-8")
    assert read_phrase_file(f) == [("Nemotron", None), ("ONNX Runtime", 2.5), ("Kowalczyk", 3.0), ("foo:bar", None)]
    cases = {"empty.txt": b"\n  \n", "latin1.txt": "caf\xe9\n".encode("latin-1"), "neg.txt": b"abc:-1\n",
             "zero.txt": b"ok\nabc:0\n"}
    messages = {"empty.txt": "has no phrases", "latin1.txt": "not UTF-8", "neg.txt": "positive number",
                "zero.txt": "line 2"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(HotwordError, match=messages[name]):
            read_phrase_file(tmp_path / name)
    with pytest.raises(HotwordError, match="cannot read"):
        read_phrase_file(tmp_path / "missing.txt")


@pytest.mark.parametrize("kwargs,match", [({"score": -1.0}, "hotword score"),
                                          ({"context_score": -0.5}, "context score"),
                                          ({"depth_scaling": float("nan")}, "depth scaling"),
                                          ({"max_bonus": 0.0}, "cap")])
def test_bad_weights_are_one_clear_error(kwargs, match):
    with pytest.raises(HotwordError, match=match):
        build_hotwords(["abc"], LetterTokenizer(), **kwargs)


def test_bad_arpa_files_are_one_clear_error(tmp_path):
    good = write_token_arpa([[1, 2, 3], [2, 3, 4]], tmp_path / "good.arpa", order=2).read_text()
    cases = {
        "not ARPA": ("hello\n", "no \\\\data\\\\ header"),
        "count": (good.replace("ngram 2=", "ngram 2=9", 1), "announces"),
        "vocab": (write_token_arpa([[1, 2, 5000]], tmp_path / "v.arpa", order=2).read_text(),
                  "not a token of this model"),
        "no bos": (good.replace("<s>", "<q>"), "symbols in a"),
        "unigram": ("\\data\\\nngram 1=2\n\n\\1-grams:\n-1\t<s>\n-1\t</s>\n\\end\\\n", "unigram-only"),
        "number": (good.replace("\n-", "\nx", 1), "not a number"),
    }
    for name, (text, match) in cases.items():
        path = tmp_path / f"{name}.arpa"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(LanguageModelError, match=match):
            read_arpa(path, 128)
    (tmp_path / "bin.arpa").write_bytes(b"\\data\\\n\xff\xfe")
    with pytest.raises(LanguageModelError, match="not a UTF-8"):
        read_arpa(tmp_path / "bin.arpa", 128)
    with pytest.raises(LanguageModelError, match="weight"):
        load_lm(tmp_path / "good.arpa", 128, -0.3)


def test_thousands_of_phrases_compile_fast(loaded_tiny):
    rng = np.random.default_rng(0)
    words = [p[1:] for p in loaded_tiny.text.pieces if p.startswith("\u2581") and p[1:].isalpha()]
    phrases = [" ".join(rng.choice(words, size=int(rng.integers(1, 4)))) for _ in range(3000)]
    start = time.perf_counter()
    hw = loaded_tiny.hotwords(phrases)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    assert len(hw.phrases) == len(set(phrases)) and hw.graph.nbytes < 1 << 20


class ScriptedJoint:
    """A backend whose joint gives fixed logits per frame value (encoded_proj[..., 0]), whatever was emitted."""

    def __init__(self, table: dict[int, list[float]]):
        self.table = table

    def predict(self, label, h, c):
        return np.zeros((1, 4), np.float32), h, c

    def joint_logits(self, encoded_proj, pred_proj):
        logits = np.array([[self.table[int(v)] for v in encoded_proj[0, :, 0]]], dtype=np.float32)
        best = logits.argmax(-1)
        logp = logits.max(-1) - np.log(np.exp(logits).sum(-1))
        return best, logp, logits

    def joint(self, encoded_proj, pred_proj):
        return self.joint_logits(encoded_proj, pred_proj)[:2]


def test_bonus_re_ranks_labels_but_never_beats_blank():
    """NeMo's rule: a frame whose unbiased best is blank stays blank whatever the bonus; a frame that emits
    takes the label with the best log-probability + bonus among the labels (confidence stays unbiased)."""
    from streamasr.model_config import DecoderConfig
    from streamasr.runtime.decoder import GreedyDecoder

    vocab = 40  # LetterTokenizer's labels; blank = 40
    blank_frame = [0.0] * vocab + [5.0]
    emit_frame = [0.0] * vocab + [-5.0]
    emit_frame[30] = 3.0  # "u": the model's choice; "a" (10) is 2 nats behind it
    emit_frame[10] = 1.0
    cfg = DecoderConfig(vocab_size=vocab, blank_id=vocab, pred_hidden=4, pred_layers=1, joint_hidden=4,
                        max_symbols_per_frame=1)
    frames = np.array([[0.0] * 4, [1.0] * 4, [0.0] * 4], dtype=np.float32)
    for score, expected in ((0.5, 30), (3.0, 10), (100.0, 10)):
        hw = build_hotwords(["a"], LetterTokenizer(), score=score)
        dec = GreedyDecoder(ScriptedJoint({0: blank_frame, 1: emit_frame}), cfg, hotwords=hw)
        tokens = dec.decode_chunk(frames)
        assert [(t.id, t.frame) for t in tokens] == [(expected, 1)], score
        logp = np.array(emit_frame) - np.log(np.exp(emit_frame).sum())
        assert tokens[0].logprob == pytest.approx(logp[expected], abs=1e-5)
    assert dec.hotword_matches == [(0, "a")]
