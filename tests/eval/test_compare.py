"""`streamasr bench compare`: spec grammar, merge rules, the harness's statistics against jiwer, the real
Whisper models (tiny.en from the whisper-models extra), random rows, and one-line errors for bad input."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import jiwer
import pytest

from streamasr.cli import main
from streamasr.errors import OfflineError
from streamasr.eval.compare import whisper as whisper_backend
from streamasr.eval.compare.backend import window_starts
from streamasr.eval.compare.nemo_common import load_checkpoint
from streamasr.eval.compare.merge import LocalAgreement, TimedWord, merge_overlap
from streamasr.eval.compare.registry import check
from streamasr.eval.compare.spec import SpecError, parse_mode, parse_system
from streamasr.eval.normalize import normalize

SPEECH_DIR = Path(os.environ.get("STREAMASR_SPEECH_DIR", Path(__file__).resolve().parents[3] / "shared/data/speech"))
#: short real clips (seconds): LibriSpeech dev-clean 11.7 and 13.3, the JFK clip 11.0, CMU Arctic 3.9
CLIPS = ("ls_2412-153948-0000.wav", "ls_1272-141231-0002.wav", "jfk_inaugural_1961.wav", "arctic_aew_a0001.wav")


@pytest.fixture(scope="module")
def clips_manifest(tmp_path_factory) -> Path:
    rows = {json.loads(line)["audio"]: json.loads(line)
            for line in (SPEECH_DIR / "manifest.jsonl").read_text().splitlines() if line.strip()}
    path = tmp_path_factory.mktemp("clips") / "clips.jsonl"
    path.write_text("".join(json.dumps({"audio": str(SPEECH_DIR / a), "text": rows[a]["text"], "id": a}) + "\n"
                            for a in CLIPS))
    return path


def _run(capsys, manifest: Path, out: Path, *systems: str, extra: tuple[str, ...] = ("--in-process",)):
    argv = ["bench", "compare", "--dataset", f"manifest:{manifest}", "--out", str(out), "--threads", "2",
            "--no-progress", "--bootstrap", "200", *extra]
    for s in systems:
        argv += ["--system", s]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _records(out: Path, label_slug: str) -> list[dict]:
    return [json.loads(line) for line in (out / "utterances" / f"{label_slug}.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- grammar
def test_system_spec_grammar_keeps_the_issue_spelling():
    s = parse_system("parakeet-tdt:nvidia/parakeet-tdt-0.6b-v3@chunk(5.6-0.8-1.6)")
    assert (s.backend, s.model, s.mode.kind) == ("parakeet-tdt", "nvidia/parakeet-tdt-0.6b-v3", "lcr")
    assert (s.mode.left_s, s.mode.chunk_s, s.mode.right_s, s.mode.algorithmic_delay_s) == (5.6, 0.8, 1.6, 2.4)
    assert s.label == "parakeet-tdt:nvidia/parakeet-tdt-0.6b-v3@chunk(5.6-0.8-1.6)"
    q = parse_system("qwen3-asr:random:@chunk(3,1)")
    assert (q.model, q.random, q.mode.window_s, q.mode.overlap_s) == ("random:", True, 3.0, 1.0)
    assert parse_system("nemotron:models/en-int4@560").mode.latency_ms == 560
    assert parse_system("nemotron:/tmp/x/en-int4@160").label == "nemotron:en-int4@160"
    assert parse_mode("chunk3s").overlap_s == 1.0 and parse_mode("chunk3s").algorithmic_delay_s == 3.0
    assert parse_mode("stream").step_s == 1.0 and parse_mode("stream(0.5)").algorithmic_delay_s == 1.0
    assert parse_mode("batch").algorithmic_delay_s is None
    for bad in ("chunk(3,3)", "chunk(1-0-1)", "fast", "chunk(a,b)"):
        with pytest.raises(SpecError):
            parse_mode(bad)
    with pytest.raises(SpecError, match="unknown backend 'vosk'"):
        check("vosk:small@batch")
    with pytest.raises(SpecError, match="does not run mode"):
        check("whisper:tiny.en@560")
    with pytest.raises(SpecError, match="BACKEND:MODEL@MODE"):
        check("whisper")


def test_window_starts_cover_the_clip_and_one_window_when_it_fits():
    assert window_starts(2.5, 3.0, 2.0) == [0.0]
    assert window_starts(3.0, 3.0, 2.0) == [0.0]
    starts = window_starts(7.2, 3.0, 2.0)
    assert starts == [0.0, 2.0, 4.0, 6.0] and starts[-1] + 3.0 >= 7.2


# ----------------------------------------------------------------------------- merge rules
def test_overlap_merge_drops_the_words_both_windows_heard():
    assert merge_overlap(["ask", "not", "what", "your"], ["your", "country", "can", "do"], 6) == \
        ["ask", "not", "what", "your", "country", "can", "do"]
    # punctuation and case do not hide the seam; the text so far is kept up to the shared run
    assert merge_overlap(["so", "my", "fellow", "Americans,"], ["americans", "ask", "not"], 6) == \
        ["so", "my", "fellow", "Americans,", "ask", "not"]
    # nothing shared: appended whole; a repeat far from the seam is outside the search window
    assert merge_overlap(["a", "b"], ["c", "d"], 4) == ["a", "b", "c", "d"]
    assert merge_overlap(["the", "x", "y", "z", "w", "v"], ["the", "end"], 3) == ["the", "x", "y", "z", "w", "v", "the", "end"]


def test_local_agreement_commits_only_what_two_updates_agree_on():
    la = LocalAgreement()
    w = lambda text, t: [TimedWord(x, t + i * 0.3, t + i * 0.3 + 0.25) for i, x in enumerate(text.split())]
    assert la.update(w("and so my", 0)) == [] and la.text == ""
    assert [x.word for x in la.update(w("and so my fellow", 0))] == ["and", "so", "my"]
    assert [x.word for x in la.update(w("and so my follow Americans", 0))] == []  # fellow/follow disagree
    la.update(w("and so my follow Americans ask", 0))
    assert la.text == "and so my follow Americans"
    la.finish(w("and so my follow Americans ask not", 0))
    assert la.text == "and so my follow Americans ask not"


# ----------------------------------------------------------------------------- real Whisper
def test_whisper_tiny_en_wer_equals_jiwer_and_short_chunks_equal_batch(capsys, clips_manifest, tmp_path):
    out = tmp_path / "w"
    code, stdout, _ = _run(capsys, clips_manifest, out, "whisper:tiny.en@batch", "whisper:tiny.en@chunk(12,2)")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    batch, chunk = summary["systems"]
    assert batch["random_weights"] is False and batch["size_bytes"] > 70e6
    # the harness's WER is jiwer's corpus WER over its own per-utterance normalized text
    recs = _records(out, "whisper-tiny.en-batch")
    assert [r["ref_norm"] for r in recs] == [normalize(r["ref"]) for r in recs]
    assert batch["wer"] == pytest.approx(jiwer.wer([r["ref_norm"] for r in recs], [r["hyp_norm"] for r in recs]),
                                         abs=1e-6)
    assert batch["ci_low"] <= batch["wer"] <= batch["ci_high"]
    assert batch["wer"] < 0.10  # real weights on clean read speech (tiny.en scores ~5-6% on LibriSpeech clean)
    # a clip that fits in one 12 s window is one call: the same text as batch; a longer one is two windows
    chunked = {r["id"]: r for r in _records(out, "whisper-tiny.en-chunk-12-2")}
    for r in recs:
        if r["audio_s"] <= 12.0:
            assert chunked[r["id"]]["hyp"] == r["hyp"] and chunked[r["id"]]["steps"] == 1
        else:
            assert chunked[r["id"]]["steps"] == 2
    assert chunk["bsf"] == pytest.approx(chunk["wer"] / batch["wer"], rel=1e-3)
    assert "whisper:tiny.en@batch" in stdout and "RTFx" in stdout
    assert (out / "compare_pareto.png").stat().st_size > 10_000


def test_whisper_streaming_partials_grow_and_time_out(tmp_path):
    spec = check("whisper:tiny.en@stream(2)")
    system = whisper_backend.load(spec, threads=2)
    from streamasr.audio import read_audio

    samples = read_audio(SPEECH_DIR / "jfk_inaugural_1961.wav")
    tr = system.transcribe(samples)
    assert len(tr.steps) == 6 and tr.steps[-1].audio_end_s == pytest.approx(11.0)
    texts = [s.text for s in tr.steps]
    assert all(a == b[: len(a)] for a, b in itertools.pairwise(texts))  # committed text only grows
    assert normalize(tr.text).endswith("what you can do for your country")


# ----------------------------------------------------------------------------- random rows, errors
def test_random_row_never_prints_a_wer(capsys, clips_manifest, tiny_model_dir, tmp_path):
    out = tmp_path / "r"
    code, stdout, _ = _run(capsys, clips_manifest, out, f"nemotron:{tiny_model_dir}@160",
                           f"nemotron:{tiny_model_dir}@batch", extra=("--max-samples", "2"))
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for s in summary["systems"]:
        assert s["random_weights"] is True and s["wer"] is None and s["wer_note"] == "random weights"
        assert s["bsf"] is None and s["rtfx"] > 0 and s["peak_rss_bytes"] > 50e6 and not s["peak_rss_shared"]
    streaming = summary["systems"][0]
    assert streaming["first_partial_s"] is not None and streaming["algorithmic_delay_s"] == 0.16
    rows = [line for line in stdout.splitlines() if line.startswith(("| 1 ", "| 2 "))]
    assert len(rows) == 2
    for line in rows:
        wer_cell = line.split("|")[4].strip()
        assert wer_cell == "random weights"
    for rec in _records(out, f"nemotron-{tiny_model_dir.name}-160"):
        assert "errors" not in rec and rec["not_scored"] == "random weights" and "hyp_norm" in rec


@pytest.mark.parametrize("system,message", [
    ("vosk:x@batch", "unknown backend 'vosk'"),
    ("whisper:tiny.en@sometimes", "unknown mode 'sometimes'"),
    ("nemotron:nowhere/at-all-model@560", "hub"),
])
def test_bad_systems_are_one_line(capsys, clips_manifest, tmp_path, monkeypatch, system, message):
    monkeypatch.setattr("streamasr.model_store.hub_problem", lambda *a, **k: "cannot resolve huggingface.co")
    code, _, err = _run(capsys, clips_manifest, tmp_path / "e", system)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_whisper_hub_id_offline_and_missing_extra_are_one_line(capsys, clips_manifest, tmp_path, monkeypatch):
    monkeypatch.setattr("streamasr.model_store.hub_problem", lambda *a, **k: "cannot resolve huggingface.co")
    code, _, err = _run(capsys, clips_manifest, tmp_path / "o", "whisper:Systran/faster-whisper-small.en@batch")
    assert code == 2 and "cannot reach the Hugging Face hub" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # said without probing the network
    code, _, err = _run(capsys, clips_manifest, tmp_path / "f", "whisper:Systran/faster-whisper-small.en@batch")
    assert code == 2 and "(HF_HUB_OFFLINE is set)" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if the whisper extra were not installed
    code, _, err = _run(capsys, clips_manifest, tmp_path / "m", "whisper:tiny.en@batch")
    assert code == 2 and "pip install 'streamasr[whisper]'" in err and len(err.strip().splitlines()) == 1


def test_nemo_hub_id_with_hf_hub_offline_is_one_line(monkeypatch):
    def no_probe(*a, **k):
        raise AssertionError("HF_HUB_OFFLINE is enough: no network probe")

    monkeypatch.setattr("streamasr.model_store.hub_problem", no_probe)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"backend canary: cannot reach the Hugging Face hub to download "
                                           r"nvidia/canary-1b-flash \(HF_HUB_OFFLINE is set\)") as err:
        load_checkpoint("nvidia/canary-1b-flash", "canary")
    assert "\n" not in str(err.value)
