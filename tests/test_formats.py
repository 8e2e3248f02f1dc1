"""streamasr.formats: timestamps, cues, and every document format, on hand-made segments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamasr.formats import (
    MAX_CUE_CHARS,
    Segment,
    SegmentCollector,
    TimedWord,
    compression_ratio,
    cues,
    format_timestamp,
    render,
    to_srt,
    to_tsv,
    to_vtt,
    verbose_json,
    wrap,
)


def _segments() -> list[Segment]:
    return [
        Segment("hello world", 0.32, 1.2, [TimedWord("hello", 0.32, 0.64, 0.9), TimedWord("world", 0.72, 1.2, 0.8)],
                tokens=[5, 6], logprobs=[-0.1, -0.3], reason="silence"),
        Segment("a <b> & c", 3661.5, 3662.0, [TimedWord("a", 3661.5, 3661.6), TimedWord("<b>", 3661.6, 3661.8),
                                              TimedWord("&", 3661.8, 3661.9), TimedWord("c", 3661.9, 3662.0)],
                reason="end"),
        Segment("", 3662.0, 3662.08, reason="end"),
    ]


@pytest.mark.parametrize("seconds, srt, vtt", [
    (0.0, "00:00:00,000", "00:00:00.000"),
    (1.2, "00:00:01,200", "00:00:01.200"),
    (59.9996, "00:01:00,000", "00:01:00.000"),  # rounds up across every field
    (3661.5, "01:01:01,500", "01:01:01.500"),
    (360000.25, "100:00:00,250", "100:00:00.250"),  # hours keep counting past 99
])
def test_format_timestamp(seconds, srt, vtt):
    assert format_timestamp(seconds) == srt
    assert format_timestamp(seconds, ".") == vtt


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf")])
def test_format_timestamp_refuses_impossible_times(bad):
    with pytest.raises(ValueError):
        format_timestamp(bad)


def test_srt_exact():
    assert to_srt(_segments()) == (
        "1\n00:00:00,320 --> 00:00:01,200\nhello world\n\n"
        "2\n01:01:01,500 --> 01:01:02,000\na <b> & c\n"
    )


def test_vtt_exact_and_escaped():
    assert to_vtt(_segments()) == (
        "WEBVTT\n\n"
        "00:00:00.320 --> 00:00:01.200\nhello world\n\n"
        "01:01:01.500 --> 01:01:02.000\na &lt;b&gt; &amp; c\n"
    )


def test_tsv_whisper_layout():
    assert to_tsv(_segments()) == "start\tend\ttext\n320\t1200\thello world\n3661500\t3662000\ta <b> & c\n"
    assert to_tsv([Segment("tab\there\nnewline", 0, 1)]) == "start\tend\ttext\n0\t1000\ttab here newline\n"


def test_empty_transcript_documents():
    empty = [Segment("", 0.0, 0.08, reason="end")]
    assert to_srt(empty) == ""
    assert to_vtt(empty) == "WEBVTT\n"
    assert to_tsv(empty) == "start\tend\ttext\n"
    assert render("text", "", empty, 0.08) == "\n"


def test_long_segment_split_between_words():
    words = [TimedWord(f"word{i:02d}", i * 0.5, i * 0.5 + 0.4) for i in range(40)]
    seg = Segment(" ".join(w.word for w in words), 0.0, words[-1].end, words)
    out = cues([seg])
    assert len(out) > 1
    assert " ".join(c.text for c in out) == seg.text  # nothing lost or repeated
    for c in out:
        assert len(c.text) <= MAX_CUE_CHARS and c.end - c.start <= 7.0
    for a, b in zip(out, out[1:]):
        assert a.end <= b.start


def test_cue_times_monotonic_and_nonempty():
    # overlapping and zero-length segments (never produced by the endpointer, but a parser must still accept)
    out = cues([Segment("a", 1.0, 2.0), Segment("b", 1.5, 1.5), Segment("c", 1.0, 1.0)])
    assert [(c.start, c.end) for c in out] == [(1.0, 2.0), (2.0, 2.001), (2.001, 2.002)]


def test_wrap_two_lines_at_the_middle_space():
    assert wrap("short") == ["short"]
    text = "the quick brown fox jumps over the lazy dog again"
    lines = wrap(text)
    assert len(lines) == 2 and " ".join(lines) == text and abs(len(lines[0]) - len(lines[1])) <= 8
    assert wrap("x" * 60) == ["x" * 60]


def test_verbose_json_fields_and_granularities():
    segs = _segments()
    doc = verbose_json("hello world a <b> & c", segs, 3662.08)
    assert doc["task"] == "transcribe" and doc["language"] == "en" and doc["duration"] == 3662.08
    assert [s["id"] for s in doc["segments"]] == [0, 1]  # the empty end final is not a segment
    first = doc["segments"][0]
    assert set(first) == {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                          "compression_ratio", "no_speech_prob"}
    assert first["tokens"] == [5, 6] and first["avg_logprob"] == pytest.approx(-0.2) and first["seek"] == 32
    assert doc["words"][0] == {"word": "hello", "start": 0.32, "end": 0.64, "confidence": 0.9}
    assert "confidence" not in doc["words"][2]
    assert "segments" not in verbose_json("x", segs, 1, with_segments=False)
    assert "words" not in verbose_json("x", segs, 1, words=False)


def test_render_json_and_unknown():
    assert json.loads(render("json", "hi", [], 1.5)) == {"text": "hi", "usage": {"type": "duration", "seconds": 1.5}}
    assert json.loads(render("verbose_json", "hi", [], 1.5))["text"] == "hi"
    with pytest.raises(ValueError, match="unknown format"):
        render("xml", "hi", [], 1.0)


def test_compression_ratio():
    assert compression_ratio("") == 1.0
    assert compression_ratio("ha" * 200) > 10 > compression_ratio("the quick brown fox") > 0


def _tok(i: int, frame: int) -> SimpleNamespace:
    return SimpleNamespace(id=i, frame=frame, logprob=-0.5)


def _final(text: str, start: float, end: float, reason: str, words: int = 1) -> dict:
    return {"type": "final", "text": text, "start_s": start, "end_s": end, "reason": reason,
            "words": [{"word": text, "start_s": start, "end_s": end, "confidence": 0.5}] * words}


def test_segment_collector_gives_each_final_its_tokens():
    frame = 0.08
    tokens = [_tok(1, 0), _tok(2, 3), _tok(3, 20), _tok(4, 21), _tok(5, 40)]
    c = SegmentCollector(frame)
    # the first final ends one frame after token 2's frame 3; tokens on later frames belong to later finals
    c.add(_final("ab", 0.0, 0.32, "silence"), tokens)
    c.add(_final("", 1.0, 1.5, "vad", words=0), tokens)  # nothing visible: no tokens
    c.add(_final("cd", 1.6, 1.76, "vad"), tokens)
    c.add(_final("e", 3.2, 3.28, "end"), tokens)
    assert [s.tokens for s in c.segments] == [[1, 2], [], [3, 4], [5]]
    assert c.segments[0].words[0].word == "ab" and c.segments[0].reason == "silence"


# ---------------------------------------------------------------- `streamasr transcribe --format`
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamasr", "transcribe", *args], capture_output=True,
                          timeout=300)


def _user_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("streamasr: error:")]
    assert len(lines) == 1 and needle in lines[0], err


def test_transcribe_output_dir_every_format(tiny_model_dir, speech_manifest, tmp_path):
    """One file per input and format; the text and the json's text equal `--json`'s; segments and words in
    order inside the audio; the subtitle files hold the same words."""
    audio = [str(it["path"]) for it in speech_manifest[:2]]
    common = ("--model", str(tiny_model_dir), "--allow-random", "--latency", "160")
    ref = _cli(*audio, *common, "--json")
    assert ref.returncode == 0, ref.stderr.decode()
    texts = {Path(r["audio"]).stem: r for r in map(json.loads, ref.stdout.decode().splitlines())}
    out = tmp_path / "out"
    for fmt in ("text", "json", "srt", "vtt", "tsv"):
        proc = _cli(*audio, *common, "--format", fmt, "--output-dir", str(out))
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout == b""
    for stem, r in texts.items():
        text = r["text"].strip()
        assert (out / f"{stem}.txt").read_text() == text + "\n"
        doc = json.loads((out / f"{stem}.json").read_text())
        assert doc["text"] == text and doc["duration"] == pytest.approx(r["audio_s"], abs=1e-3)
        assert [t for s in doc["segments"] for t in s["tokens"]] == r["token_ids"][: sum(len(s["tokens"])
                                                                                      for s in doc["segments"])]
        prev = 0.0
        for w in doc["words"]:
            assert prev <= w["start"] < w["end"] <= r["audio_s"] + 0.5
            prev = w["start"]
        squeeze = text.replace(" ", "")
        assert "".join(s["text"] for s in doc["segments"]).replace(" ", "") == squeeze
        srt_text = [ln for ln in (out / f"{stem}.srt").read_text().splitlines()
                    if ln and not ln.isdigit() and "-->" not in ln]
        assert "".join(srt_text).replace(" ", "") == squeeze
        assert (out / f"{stem}.vtt").read_text().startswith("WEBVTT\n")
        rows = (out / f"{stem}.tsv").read_text().splitlines()
        assert rows[0] == "start\tend\ttext" and all(len(r.split("\t")) == 3 for r in rows[1:])
    assert not list(out.glob(".*.partial"))


def test_transcribe_format_to_stdout_and_errors(tiny_model_dir, speech_manifest, tmp_path):
    audio = [str(it["path"]) for it in speech_manifest[:2]]
    common = ("--model", str(tiny_model_dir), "--allow-random")
    proc = _cli(audio[0], *common, "--format", "srt")
    assert proc.returncode == 0 and proc.stdout.decode().startswith("1\n00:00:"), proc.stderr.decode()
    proc = _cli(*audio, *common, "--format", "json")
    assert proc.returncode == 0 and [json.loads(line)["task"] for line in proc.stdout.decode().splitlines()] == \
        ["transcribe"] * 2
    _user_error(_cli(*audio, *common, "--format", "vtt"), "--output-dir")
    _user_error(_cli(audio[0], audio[0], *common, "--output-dir", str(tmp_path)), "would both be written")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _user_error(_cli(audio[0], *common, "--output-dir", str(a_file)), "not a directory")
