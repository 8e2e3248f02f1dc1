"""Hotwords and the LM through the Python API and the command line (NeMo-free, on the tiny random model):
score 0 is unboosted decoding, `set_hotwords` acts from the next chunk, the cap bounds the change, `Result`
names the phrases found, a model directory without the joint's output layer is told to re-convert, and
every bad input is one clear line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from streamasr.cli import main
from streamasr.errors import ModelError
from streamasr.eval.nemo_boosting import write_token_arpa
from streamasr.runtime import Model

CANDIDATES = ["arctic_slt_a0002.wav", "arctic_slt_a0001.wav", "ls_3536-23268-0010.wav", "arctic_aew_a0002.wav",
              "librivox_sense_and_sensibility_0890.wav", "ls_1272-128104-0000.wav"]


@pytest.fixture(scope="module")
def name(loaded_tiny, speech) -> str:
    """The candidate utterance on which the random model writes the most tokens at 160 ms."""
    return max(CANDIDATES, key=lambda n: len(loaded_tiny.transcribe(speech[n], 160).token_ids))


@pytest.fixture(scope="module")
def phrases(loaded_tiny, speech) -> list[str]:
    """Words the tiny model writes for other audio, and its word-initial pieces as words."""
    words = loaded_tiny.transcribe(speech["jfk_inaugural_1961.wav"], 160).text.split()
    pieces = [p[1:] for p in loaded_tiny.text.pieces if p.startswith("\u2581") and p[1:].isalpha()]
    return list(dict.fromkeys(w for w in words if len(w) >= 3))[:6] + pieces[::2]


def _changed(a: list[int], b: list[int]) -> int:
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def test_score_zero_and_tiny_cap_are_unboosted_and_boosting_changes_tokens(loaded_tiny, speech, phrases, name):
    x = speech[name]
    plain = loaded_tiny.transcribe(x, 160)
    boosted = loaded_tiny.transcribe(x, 160, hotwords=phrases)
    assert _changed(boosted.token_ids, plain.token_ids) > 0
    assert loaded_tiny.transcribe(x, 160, hotwords=phrases, hotword_score=0.0).token_ids == plain.token_ids
    # a cap far above any bonus changes nothing; a vanishing one leaves only exact ties to re-rank
    assert loaded_tiny.transcribe(x, 160, hotwords=phrases, hotword_max_bonus=1e3).token_ids == boosted.token_ids
    assert loaded_tiny.transcribe(x, 160, hotwords=phrases, hotword_max_bonus=1e-7).token_ids == plain.token_ids
    assert boosted.hotwords and set(boosted.hotwords) <= set(phrases)
    assert boosted.to_dict()["hotwords"] == boosted.hotwords and "hotwords" not in plain.to_dict()
    # confidence stays the model's own (unbiased) log-probability of the chosen token
    assert all(lp <= 0 for lp in boosted.token_logprobs)


def test_set_hotwords_acts_from_the_next_chunk(loaded_tiny, speech, phrases, name):
    x = speech[name]
    plain = loaded_tiny.stream(160)
    plain.accept(x)
    plain.finish()
    plain_tokens = [(t.id, t.frame) for t in plain.tokens]
    stream = loaded_tiny.stream(160)
    half = 8000  # half a second: a few chunks
    stream.accept(x[:half])
    frames_before = stream.frames_decoded
    stream.set_hotwords(phrases)
    assert stream.frames_decoded == frames_before  # nothing re-decoded
    stream.accept(x[half:])
    result = stream.finish()
    ours = [(t.id, t.frame) for t in stream.tokens]
    before = [tok for tok in plain_tokens if tok[1] < frames_before]
    assert ours[: len(before)] == before
    assert ours != plain_tokens
    assert all(time >= frames_before * loaded_tiny.config.frame_seconds - 1e-6 for _, time in stream.hotword_matches)
    assert result.hotwords == list(dict.fromkeys(p for p, _ in stream.hotword_matches))
    off = loaded_tiny.stream(160, hotwords=phrases)
    off.set_hotwords(None)
    off.accept(x)
    assert off.finish().token_ids == [tok for tok, _ in plain_tokens]


def test_lm_changes_tokens_and_weight_zero_does_not(loaded_tiny, speech, tmp_path, name):
    seqs = [loaded_tiny.transcribe(speech[n], 560).token_ids for n in sorted(speech)[:8]]
    arpa = write_token_arpa(seqs, tmp_path / "lm.arpa", order=3)
    x = speech[name]
    plain = loaded_tiny.transcribe(x, 160)
    assert _changed(loaded_tiny.transcribe(x, 160, lm=arpa, lm_weight=0.5).token_ids, plain.token_ids) > 0
    assert loaded_tiny.transcribe(x, 160, lm=arpa, lm_weight=0.0).token_ids == plain.token_ids


def test_directory_without_joint_logits_is_told_to_reconvert(loaded_tiny, tiny_model_dir, tmp_path, speech, name):
    import onnx

    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    joint = onnx.load(old / "joint.onnx")  # a joint as converted before hotwords: no `logits` output
    kept = [o for o in joint.graph.output if o.name != "logits"]
    del joint.graph.output[:]
    joint.graph.output.extend(kept)
    onnx.save(joint, old / "joint.onnx")
    model = Model.load_dir(old, threads=1)
    x = speech[name][:16000]
    assert model.transcribe(x, 160).token_ids == loaded_tiny.transcribe(x, 160).token_ids
    for fusion in ({"hotwords": ["abc"]}, {"lm": tmp_path / "x.arpa"}):
        with pytest.raises(ModelError, match="re-convert"):
            model.stream(160, **fusion)


def test_cli_hotwords_and_lm(tiny_model_dir, loaded_tiny, speech_manifest, speech, tmp_path, capsys, phrases, name):
    item = next(it for it in speech_manifest if it["audio"] == name)
    terms = tmp_path / "terms.txt"
    terms.write_text("\n".join(phrases[3:]) + "\n\n", encoding="utf-8")
    args = ["transcribe", str(item["path"]), "--model", str(tiny_model_dir), "--allow-random", "--latency", "160",
            "--json", "--hotwords", *phrases[:3], "--hotwords-file", str(terms), "--hotword-score", "1.5"]
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)
    expected = loaded_tiny.transcribe(speech[name], 160, hotwords=phrases, hotword_score=1.5)
    assert row["token_ids"] == expected.token_ids and row.get("hotwords") == expected.hotwords
    arpa = write_token_arpa([expected.token_ids], tmp_path / "lm.arpa")
    assert main([*args, "--lm", str(arpa), "--lm-weight", "0.4"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["token_ids"] == loaded_tiny.transcribe(speech[name], 160, hotwords=phrases, hotword_score=1.5,
                                                      lm=arpa, lm_weight=0.4).token_ids


@pytest.mark.parametrize("case", ["empty", "latin1", "negative", "bad_arpa", "missing_arpa", "score"])
def test_cli_bad_fusion_input_is_one_clear_line(tiny_model_dir, speech_manifest, tmp_path, capsys, case):
    audio = str(speech_manifest[0]["path"])
    bad = tmp_path / "bad.txt"
    base = ["transcribe", audio, "--model", str(tiny_model_dir), "--allow-random"]
    extra, needle = {
        "empty": (["--hotwords-file", str(bad)], "has no phrases"),
        "latin1": (["--hotwords-file", str(bad)], "not UTF-8"),
        "negative": (["--hotwords", "Nemotron:-2"], "positive number"),
        "bad_arpa": (["--lm", str(bad)], "not an ARPA language model"),
        "missing_arpa": (["--lm", str(tmp_path / "none.arpa")], "no such file"),
        "score": (["--hotwords", "x", "--hotword-score", "-1"], "--hotword-score"),
    }[case]
    bad.write_bytes({"empty": b"\n\n", "latin1": "caf\xe9\n".encode("latin-1")}.get(case, b"hello\n"))
    assert main(base + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamasr: error:") and needle in err[0], err


def test_hotword_memory_per_stream_is_the_state_only(loaded_tiny, phrases):
    """The compiled tree is shared; a stream holds a state number (and the matches it found)."""
    hw = loaded_tiny.hotwords(phrases)
    a, b = loaded_tiny.stream(160, hotwords=hw), loaded_tiny.stream(160, hotwords=hw)
    assert a.decoder.hotwords is b.decoder.hotwords is hw
    assert np.isscalar(a.decoder._hw_state)


def test_bench_hotword_cost_measures_the_fused_path(loaded_tiny, speech, name):
    from streamasr.eval.hotword_cost import format_cost, measure

    cost = measure(loaded_tiny, speech[name][: 16000 * 4], 160, 200, rounds=1)
    assert cost.phrases == 200 and cost.chunks > 10 and cost.tree_bytes > 0
    assert cost.tokens["fused"] == cost.tokens["plain"] > 0  # the vanishing score keeps the output
    assert all(ms > 0 for ms in cost.ms_per_chunk.values())
    assert "200 random phrases" in format_cost(cost)
