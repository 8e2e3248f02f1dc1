"""`streamasr bench wer`: WER arithmetic, normalization, bootstrap, outputs, resume, bad input, Ray.

Random-weight tiny models transcribe nonsense, so WERs are ~100%: these tests check the machinery.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jiwer
import numpy as np
import pytest

from streamasr.cli import main
from streamasr.errors import StreamASRError
from streamasr.eval import utterance as utterance_mod
from streamasr.eval.datasets import ESB_REPO, HubDataset, open_dataset
from streamasr.eval.normalize import get_normalizer, is_scored_reference, normalize
from streamasr.eval.stats import bootstrap_ci, corpus_wer, paired_bootstrap, word_errors

SPEECH_DIR = Path(os.environ.get("STREAMASR_SPEECH_DIR", Path(__file__).resolve().parents[3] / "shared/data/speech"))
MANIFEST = SPEECH_DIR / "manifest.jsonl"


# ----------------------------------------------------------------------------- normalization
# Expected outputs checked against the Open ASR Leaderboard's normalizer (normalizer/normalizer.py, Sept 2025).
LEADERBOARD_CASES = [
    ("Mr. Smith paid $20 million for 1,000 shares.", "mister smith paid $20000000 for 1000 shares"),
    ("I'm gonna call Dr. Jones at 5:30 p.m.", "i am going to call doctor jones at 5 30 p m"),
    ("It's one hundred and twenty-three point five percent.", "it is 123.5%"),
    ("Hmm, uh, I kinda dunno 'cause the colour was grey.", "i kinda dunno cause the color was gray"),
    ("The cancellation of the archaeology travelogue", "the cancelation of the archeology travelog"),
    ("[noise] hello (laughs) world <unk>", "hello world"),
    ("two thousand and nineteen", "2019"),
    ("one oh one", "101"),
    ("Twenty first century", "21st century"),
    ("She won't, can't, let's go!", "she will not can not let us go"),
    ("Café naïve Œuvre", "cafe naive oeuvre"),
    ("first second third", "1st 2nd 3rd"),
    ("$2 and 7 cents", "$2.07"),
    ("double seven", "77"),
    ("I'd been there", "i had been there"),
    ("IF THE READER WILL EXCUSE ME", "if the reader will excuse me"),
]


@pytest.mark.parametrize("text,expected", LEADERBOARD_CASES)
def test_leaderboard_normalizer(text, expected):
    assert normalize(text) == expected


def test_whisper_flavour_differs_where_documented():
    # whisper-normalizer expands newer informal contractions and keeps Whisper's spelling-list entries
    assert normalize("I kinda dunno", "whisper") == "i kind of do not know"
    assert normalize("the cancellation", "whisper") == "the cancellation"
    assert is_scored_reference(normalize("ignore time segment in scoring")) is False
    assert is_scored_reference(normalize("(laughs) [noise]")) is False
    with pytest.raises(StreamASRError, match="unknown normalizer"):
        get_normalizer("nope")


# ----------------------------------------------------------------------------- WER arithmetic
@pytest.mark.parametrize("ref,hyp,s,d,i,n", [
    ("a b c", "a x c", 1, 0, 0, 3),        # substitution
    ("a b", "a b c", 0, 0, 1, 2),          # insertion
    ("a b c d", "a d", 0, 2, 0, 4),        # deletions
    ("a b c", "", 0, 3, 0, 3),             # empty hypothesis: all deleted
    ("", "x y", 0, 0, 2, 0),               # empty reference: all inserted
    ("", "", 0, 0, 0, 0),
    ("the cat sat", "a cat sat down", 1, 0, 1, 3),
])
def test_word_errors_hand_computed(ref, hyp, s, d, i, n):
    e = word_errors(ref, hyp)
    assert (e.substitutions, e.deletions, e.insertions, e.ref_words) == (s, d, i, n)


def test_corpus_wer_is_total_errors_over_total_words():
    refs = ["a b c d", "e f", "g h i j k l"]
    hyps = ["a x c d", "e f g", ""]
    errs = [word_errors(r, h) for r, h in zip(refs, hyps)]
    assert [x.errors for x in errs] == [1, 1, 6]
    assert corpus_wer([x.errors for x in errs], [x.ref_words for x in errs]) == pytest.approx(8 / 12)
    # jiwer's own corpus-level WER (no empty hypothesis allowed there) agrees
    assert corpus_wer([1, 1], [4, 2]) == pytest.approx(jiwer.wer(refs[:2], hyps[:2]))
    # not the mean of per-utterance WERs
    assert corpus_wer([1, 1], [4, 2]) != pytest.approx((1 / 4 + 1 / 2) / 2)
    assert np.isnan(corpus_wer([2], [0]))


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_contains_estimate_and_narrows():
    rng = np.random.default_rng(1)
    words = rng.integers(5, 30, size=40)
    errors = rng.binomial(words, 0.15)
    point = corpus_wer(errors, words)
    lo, hi = bootstrap_ci(errors, words, n_boot=500, seed=3)
    assert lo <= point <= hi and hi - lo > 0
    assert (lo, hi) == bootstrap_ci(errors, words, n_boot=500, seed=3)  # seedable
    big_w = np.tile(words, 16)
    big_e = np.tile(errors, 16)
    lo2, hi2 = bootstrap_ci(big_e, big_w, n_boot=500, seed=3)
    assert lo2 <= corpus_wer(big_e, big_w) <= hi2
    assert hi2 - lo2 < (hi - lo) / 2  # ~1/sqrt(16) as wide


def test_paired_bootstrap():
    rng = np.random.default_rng(2)
    words = rng.integers(5, 30, size=200)
    a = rng.binomial(words, 0.10)
    same = paired_bootstrap(a, a, words, n_boot=300)
    assert same.diff == 0 and same.ci_low == 0 and same.ci_high == 0
    worse = a + rng.binomial(words, 0.05)  # b makes strictly more errors on the same utterances
    r = paired_bootstrap(worse, a, words, n_boot=300)
    assert r.diff > 0 and r.ci_low > 0 and r.p_value < 0.01
    assert r.ci_low <= r.diff <= r.ci_high


# ----------------------------------------------------------------------------- end to end
def _run(capsys, *argv):
    code = main(["bench", "wer", "--allow-random", "--threads", "1", "--no-progress", "--bootstrap", "200", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_end_to_end_outputs(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "res"
    code, stdout, err = _run(capsys, "--model", str(tiny_model_dir), "--model", str(tiny_model_dir),
                             "--dataset", f"manifest:{MANIFEST}", "--max-samples", "3", "--out", str(out))
    assert code == 0, err
    assert "| model | set |" in stdout and "Paired bootstrap" in stdout
    summary = json.loads((out / "summary.json").read_text())
    labels = [s["label"] for s in summary["systems"]]
    assert len(set(labels)) == 2  # the same directory twice gets two distinct row labels
    assert len(summary["rows"]) == 2
    for row in summary["rows"]:
        assert row["n_utterances"] == 3 and row["n_skipped"] == 0
        assert row["ci_low"] <= row["wer"] <= row["ci_high"]
        assert row["rtfx"] > 0 and row["mean_chunk_latency_ms"] > 0 and row["audio_hours"] > 0
        assert row["size_bytes"] > 0 and row["latency_ms"] == 560
        assert row["wer"] == pytest.approx((row["substitutions"] + row["deletions"] + row["insertions"])
                                           / row["ref_words"], abs=1e-6)
    (pair,) = summary["paired"]
    assert pair["diff"] == 0  # same model, same audio
    files = sorted((out / "utterances").glob("*.jsonl"))
    assert len(files) == 2
    recs = [json.loads(x) for x in files[0].read_text().splitlines()]
    assert len(recs) == 3
    for r in recs:
        assert {"id", "ref", "hyp", "ref_norm", "hyp_norm", "substitutions", "deletions", "insertions",
                "ref_words", "audio_s", "processing_s"} <= set(r)
        assert r["ref_norm"] == normalize(r["ref"]) and r["errors"] == word_errors(r["ref_norm"], r["hyp_norm"]).errors
    assert (out / "wer_pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "summary.md").read_text().strip() in stdout


def test_offline_mode_uses_largest_latency(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "off"
    code, stdout, err = _run(capsys, "--model", str(tiny_model_dir), "--dataset", f"manifest:{MANIFEST}",
                             "--max-samples", "1", "--offline", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "offline" and summary["rows"][0]["latency_ms"] == 1120
    assert "largest latency mode" in stdout


def test_resume_skips_finished_utterances(tmp_path, tiny_model_dir, capsys, monkeypatch):
    out = tmp_path / "resume"
    calls = []
    real = utterance_mod.transcribe_samples
    monkeypatch.setattr(utterance_mod, "transcribe_samples", lambda *a: calls.append(1) or real(*a))
    args = ["--model", str(tiny_model_dir), "--dataset", f"manifest:{MANIFEST}", "--out", str(out)]
    assert _run(capsys, *args, "--max-samples", "2")[0] == 0
    assert len(calls) == 2
    first = json.loads((out / "summary.json").read_text())["rows"][0]
    # simulate an interrupted write: the last line cut in half is redone
    f = next((out / "utterances").glob("*.jsonl"))
    lines = f.read_text().splitlines()
    f.write_text(lines[0] + "\n" + lines[1][:20])
    calls.clear()
    assert _run(capsys, *args, "--max-samples", "4")[0] == 0
    assert len(calls) == 3  # utterance 2 (cut) + 3 + 4; utterance 1 reused
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert rows[0]["n_utterances"] == 4
    calls.clear()
    assert _run(capsys, *args, "--max-samples", "2")[0] == 0
    assert calls == []
    again = json.loads((out / "summary.json").read_text())["rows"][0]
    assert again["wer"] == first["wer"] and again["ci_low"] == first["ci_low"]
    assert _run(capsys, *args, "--max-samples", "1", "--fresh")[0] == 0 and len(calls) == 1


# ----------------------------------------------------------------------------- bad input
def _manifest(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def _good(name):
    return json.dumps({"audio": str(SPEECH_DIR / name), "text": "hello world"})


def test_missing_audio_file(tmp_path, tiny_model_dir, capsys):
    m = _manifest(tmp_path, [_good("arctic_slt_a0005.wav"), json.dumps({"audio": "nope.wav", "text": "x"}),
                             _good("pocketsphinx_cards_001.wav")])
    code, _, err = _run(capsys, "--model", str(tiny_model_dir), "--dataset", f"manifest:{m}", "--out",
                        str(tmp_path / "o"))
    assert code == 2 and "nope.wav" in err and "not found" in err and "m.jsonl:2" in err
    code, stdout, err = _run(capsys, "--model", str(tiny_model_dir), "--dataset", f"manifest:{m}", "--out",
                             str(tmp_path / "o"), "--skip-errors")
    assert code == 0 and "skipped utterance nope.wav" in err
    row = json.loads((tmp_path / "o" / "summary.json").read_text())["rows"][0]
    assert row["n_utterances"] == 2 and row["n_skipped"] == 1
    recs = [json.loads(x) for x in next((tmp_path / "o" / "utterances").glob("*.jsonl")).read_text().splitlines()]
    assert [r["id"] for r in recs if "error" in r] == ["nope.wav"]


def test_unreadable_line_and_corrupt_audio(tmp_path, tiny_model_dir, capsys):
    bad_audio = tmp_path / "bad.wav"
    bad_audio.write_bytes(b"not a wav file")
    m = _manifest(tmp_path, [_good("arctic_slt_a0005.wav"), "{this is not json",
                             json.dumps({"audio": str(bad_audio), "text": "x"})])
    code, _, err = _run(capsys, "--model", str(tiny_model_dir), "--dataset", f"manifest:{m}", "--out",
                        str(tmp_path / "o"))
    assert code == 2 and "m.jsonl:2" in err and "unreadable manifest line" in err
    code, _, err = _run(capsys, "--model", str(tiny_model_dir), "--dataset", f"manifest:{m}", "--out",
                        str(tmp_path / "o"), "--skip-errors")
    assert code == 0 and "bad.wav" in err
    row = json.loads((tmp_path / "o" / "summary.json").read_text())["rows"][0]
    assert row["n_utterances"] == 1 and row["n_skipped"] == 2


@pytest.mark.parametrize("spec,message", [
    ("nosuch:thing", "unknown dataset"),
    ("esb:nosuchset", "unknown ESB config"),
    ("manifest:/nonexistent/m.jsonl", "no such manifest"),
])
def test_unknown_dataset(spec, message):
    with pytest.raises(StreamASRError, match=message):
        open_dataset(spec)


def test_hub_offline_error_names_dataset_and_suggests_manifest(monkeypatch, tiny_model_dir, tmp_path, capsys):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'hf-audio/esb-datasets-test-only-sorted' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(StreamASRError) as exc:
        list(HubDataset("ami", "test", "esb:ami").items(2))
    assert ESB_REPO in str(exc.value) and "manifest:" in str(exc.value)
    code, _, err = _run(capsys, "--model", str(tiny_model_dir), "--dataset", "esb:librispeech:test.clean",
                        "--out", str(tmp_path / "o"))
    assert code == 2 and ESB_REPO in err and "test.clean" in err


def test_option_errors(tiny_model_dir, tmp_path, capsys):
    base = ["--dataset", f"manifest:{MANIFEST}", "--out", str(tmp_path / "o")]
    assert "at least one --model" in _run(capsys, *base)[2]
    assert "unknown latency mode" in _run(capsys, "--model", str(tiny_model_dir), "--latency", "123", *base)[2]
    assert "--reference-nemo" in _run(capsys, "--model", str(tiny_model_dir), "--reference", "nemo", *base)[2]
    code = main(["bench", "wer", "--model", str(tiny_model_dir), "--no-progress", *base])
    assert code == 2 and "random weights" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Ray
def test_ray_engine_matches_single_process(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("ray")
    common = ["--model", str(tiny_model_dir), "--dataset", f"manifest:{MANIFEST}", "--max-samples", "4"]
    assert _run(capsys, *common, "--out", str(tmp_path / "local"))[0] == 0
    code, _, err = _run(capsys, *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-workers", "2")
    assert code == 0, err

    def per_utt(d):
        f = next((tmp_path / d / "utterances").glob("*.jsonl"))
        return {r["id"]: (r["hyp"], r["errors"], r["chunks"], r["audio_s"])
                for r in map(json.loads, f.read_text().splitlines())}

    local, ray_ = per_utt("local"), per_utt("ray")
    assert len(local) == 4 and local == ray_
    a = json.loads((tmp_path / "local" / "summary.json").read_text())["rows"][0]
    b = json.loads((tmp_path / "ray" / "summary.json").read_text())["rows"][0]
    assert (a["wer"], a["ci_low"], a["ci_high"], a["n_utterances"]) == (b["wer"], b["ci_low"], b["ci_high"],
                                                                         b["n_utterances"])


def test_reference_nemo_row_runs_nemo_on_the_same_utterances(tmp_path, tiny_model, capsys):
    """--reference nemo adds NeMo's own PyTorch streaming of the checkpoint as a row. The .nemo here was
    written by streamasr's own writer, so this also shows NeMo restores it."""
    nemo_path, model_dir, _ = tiny_model
    out = tmp_path / "ref"
    code, stdout, err = _run(capsys, "--model", str(model_dir), "--reference", "nemo", "--reference-nemo",
                             str(nemo_path), "--dataset", f"manifest:{MANIFEST}", "--max-samples", "3",
                             "--latency", "160", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    kinds = {s["label"]: s["kind"] for s in summary["systems"]}
    assert sorted(kinds.values()) == ["nemo", "onnx"]
    assert len(summary["rows"]) == 2 and "nemo-pytorch" in stdout
    by_kind = {}
    for path in (out / "utterances").glob("*.jsonl"):
        kind = "nemo" if path.name.startswith("nemo-pytorch") else "onnx"
        by_kind[kind] = {r["id"]: r["hyp"] for r in map(json.loads, path.read_text().splitlines())}
    assert by_kind["nemo"].keys() == by_kind["onnx"].keys() and len(by_kind["nemo"]) == 3
    for utt, nemo_hyp in by_kind["nemo"].items():
        # same tokens, except that streamasr also decodes the tail chunk NeMo's loop drops
        assert nemo_hyp and by_kind["onnx"][utt].startswith(nemo_hyp), utt
