"""The command line as a user runs it: outputs, and one clear line (no traceback) for every user error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def run_cli(*args: str, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "streamasr", *args], input=stdin, capture_output=True,
                          timeout=300, env=full_env)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("streamasr: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_transcribe_json(tiny_model_dir, speech_manifest):
    audio = [str(it["path"]) for it in speech_manifest[:2]]
    proc = run_cli("transcribe", *audio, "--model", str(tiny_model_dir), "--latency", "160", "--json", "--allow-random")
    assert proc.returncode == 0, proc.stderr.decode()
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["audio"] for r in rows] == audio
    for r in rows:
        for key in ("audio", "text", "token_ids", "token_times_s", "latency_ms", "audio_s", "processing_s"):
            assert key in r
        assert r["latency_ms"] == 160
        assert len(r["token_ids"]) == len(r["token_times_s"]) > 0
        assert r["token_times_s"] == sorted(r["token_times_s"])
        assert r["processing_s"] > 0


def test_transcribe_resamples_and_mixes_down(tiny_model_dir, tmp_path, speech):
    from streamasr.audio import read_audio, resample

    x = speech["jfk_inaugural_1961.wav"][: 16000 * 4]
    stereo = np.stack([x, x], axis=1)
    path = tmp_path / "stereo44k.flac"
    sf.write(path, resample(stereo[:, 0], 16000, 44100)[:, None].repeat(2, axis=1), 44100)
    back = read_audio(path)
    assert abs(back.size - x.size) <= 2
    # a good resampler round-trips speech closely (linear interpolation would not)
    n = min(back.size, x.size)
    assert np.abs(back[:n] - x[:n]).max() < 0.02
    proc = run_cli("transcribe", str(path), "--model", str(tiny_model_dir), "--allow-random", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert abs(json.loads(proc.stdout)["audio_s"] - 4.0) < 0.01


def test_raw_pcm_from_stdin_matches_file(tiny_model_dir, speech_manifest):
    item = next(it for it in speech_manifest if it["audio"] == "jfk_inaugural_1961.wav")
    data, rate = sf.read(item["path"], dtype="int16")
    from_file = run_cli("transcribe", str(item["path"]), "--model", str(tiny_model_dir), "--allow-random", "--json")
    from_stdin = run_cli("transcribe", "-", "--model", str(tiny_model_dir), "--allow-random", "--json",
                         "--raw-sample-rate", str(rate), stdin=data.tobytes())
    assert from_stdin.returncode == 0, from_stdin.stderr.decode()
    assert json.loads(from_stdin.stdout)["token_ids"] == json.loads(from_file.stdout)["token_ids"]


@pytest.mark.parametrize("case", ["missing", "empty", "not_audio", "directory"])
def test_bad_audio_is_one_clear_line(tiny_model_dir, tmp_path, case):
    path = tmp_path / "x.wav"
    if case == "empty":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif case == "not_audio":
        path.write_text("this is not audio\n")
    elif case == "directory":
        path = tmp_path
    proc = run_cli("transcribe", str(path), "--model", str(tiny_model_dir), "--allow-random")
    needle = {"missing": "no such file", "empty": "no audio samples", "not_audio": "not a readable audio file",
              "directory": "is a directory"}[case]
    assert_user_error(proc, str(path), needle)


def test_bad_model_and_options(tiny_model_dir, tmp_path, speech_manifest):
    audio = str(speech_manifest[0]["path"])
    assert_user_error(run_cli("transcribe", audio, "--model", str(tiny_model_dir), "--allow-random", "--latency", "333"),
                      "unknown latency mode 333", "80, 160, 560, 1120")
    assert_user_error(run_cli("transcribe", audio, "--model", str(tiny_model_dir)), "random weights", "--allow-random")
    assert_user_error(run_cli("transcribe", audio, "--model", str(tmp_path / "nope.nemo")), "no such .nemo file")
    assert_user_error(run_cli("transcribe", audio, "--model", "not a model"), "neither a model directory")
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    assert_user_error(run_cli("transcribe", audio, "--model", str(empty_dir)), "not a streamasr model directory")
    newer = tmp_path / "newer"
    newer.mkdir()
    for f in Path(tiny_model_dir).iterdir():
        (newer / f.name).symlink_to(f)
    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    cfg["format_version"] += 1
    (newer / "config.json").unlink()
    (newer / "config.json").write_text(json.dumps(cfg))
    assert_user_error(run_cli("transcribe", audio, "--model", str(newer), "--allow-random"), "newer than this streamasr")
    cfg["format_version"] = 1  # format 1 stored the attention caches in another layout
    (newer / "config.json").write_text(json.dumps(cfg))
    assert_user_error(run_cli("transcribe", audio, "--model", str(newer), "--allow-random"), "older than this", "re-convert")
    assert_user_error(run_cli("transcribe", "-", "--model", str(tiny_model_dir), "--allow-random"), "--raw-sample-rate")


def test_hub_id_offline_names_the_problem(tmp_path, speech_manifest):
    proc = run_cli("transcribe", str(speech_manifest[0]["path"]), "--model", "nvidia/nemotron-speech-streaming-en-0.6b",
                   env={"STREAMASR_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_user_error(proc, "nvidia/nemotron-speech-streaming-en-0.6b", "Hugging Face hub", ".nemo")


def test_nemo_file_is_converted_once_into_the_cache(tiny_model, tmp_path, speech_manifest):
    nemo_path = tiny_model[0]
    env = {"STREAMASR_CACHE": str(tmp_path / "cache")}
    audio = str(speech_manifest[0]["path"])
    first = run_cli("transcribe", audio, "--model", str(nemo_path), "--allow-random", "--json", env=env)
    assert first.returncode == 0, first.stderr.decode()
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and (cached[0] / "config.json").is_file()
    stamp = (cached[0] / "encoder.onnx").stat().st_mtime_ns
    second = run_cli("transcribe", audio, "--model", str(nemo_path), "--allow-random", "--json", env=env)
    assert json.loads(second.stdout)["token_ids"] == json.loads(first.stdout)["token_ids"]
    assert (cached[0] / "encoder.onnx").stat().st_mtime_ns == stamp, "second run must load, not re-convert"
    # a conversion left by an older streamasr (another cache layout) is redone, not refused
    cfg = json.loads((cached[0] / "config.json").read_text())
    cfg["format_version"] = 1
    (cached[0] / "config.json").write_text(json.dumps(cfg))
    third = run_cli("transcribe", audio, "--model", str(nemo_path), "--allow-random", "--json", env=env)
    assert third.returncode == 0, third.stderr.decode()
    assert json.loads(third.stdout)["token_ids"] == json.loads(first.stdout)["token_ids"]
    assert json.loads((cached[0] / "config.json").read_text())["format_version"] > 1


def test_model_directory_loads_without_torch(tiny_model_dir, speech_manifest):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['nemo'] = None\n"
        "import streamasr, soundfile as sf\n"
        f"m = streamasr.Model.load_dir({str(tiny_model_dir)!r}, threads=1)\n"
        f"x, _ = sf.read({str(speech_manifest[0]['path'])!r}, dtype='float32')\n"
        "print(len(m.transcribe(x, 560).token_ids))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert int(proc.stdout) > 0


def test_raw_pcm_into_a_pipe_is_plain_text(tiny_model_dir, speech_manifest):
    item = next(it for it in speech_manifest if it["audio"] == "jfk_inaugural_1961.wav")
    data, rate = sf.read(item["path"], dtype="int16")
    from_file = run_cli("transcribe", str(item["path"]), "--model", str(tiny_model_dir), "--allow-random")
    piped = run_cli("transcribe", "-", "--model", str(tiny_model_dir), "--allow-random",
                    "--raw-sample-rate", str(rate), stdin=data.tobytes())
    assert piped.returncode == 0, piped.stderr.decode()
    out = piped.stdout.decode()
    assert "\r" not in out and "\x1b" not in out
    assert out == from_file.stdout.decode() and out.strip()


def test_stream_resample_is_continuous_across_blocks(speech):
    from streamasr.audio import resample, stream_resample

    x = speech["jfk_inaugural_1961.wav"][: 16000 * 3]
    x44 = resample(x, 16000, 44100)
    whole = resample(x44, 44100, 16000)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, x44.size), size=60, replace=False))
    streamed = np.concatenate(list(stream_resample(np.split(x44, cuts), 44100, 16000)))
    assert abs(streamed.size - whole.size) <= 1
    n = min(streamed.size, whole.size)
    assert np.abs(streamed[:n] - whole[:n]).max() < 1e-3


def test_convert_refuses_bad_sources_and_outputs_before_any_work(tiny_model, tiny_model_dir, tmp_path):
    nemo_path = str(tiny_model[0])
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    out = str(tmp_path / "out")
    assert_user_error(run_cli("convert", str(notes), "-o", out), str(notes), "not a .nemo file")
    assert_user_error(run_cli("convert", str(tmp_path), "-o", out), str(tmp_path), "is a directory, not a .nemo file")
    assert_user_error(run_cli("convert", str(tiny_model_dir), "-o", out), "already a converted streamasr model")
    assert_user_error(run_cli("convert", nemo_path, "-o", str(notes)), str(notes), "is an existing file")
    assert_user_error(run_cli("convert", "--random", "tiny-z", "-o", out), "unknown architecture 'tiny-z'")
    assert_user_error(run_cli("convert", nemo_path, "-o", out, "--quant", "int4-rtn", "--block-size", "48"),
                      "block size 48")
    assert not Path(out).exists() and notes.read_text() == "not a checkpoint\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_interrupted_quantization_leaves_no_model_at_the_output(tiny_model, tmp_path, monkeypatch):
    from streamasr.cli import convert as convert_cli
    from streamasr.cli import main

    out = tmp_path / "model"
    seen = []

    def killed_quantization(work, method, **options):
        seen.append((Path(work) != out, out.exists()))
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_cli, "quantize_model_dir", killed_quantization)
    assert main(["convert", str(tiny_model[0]), "-o", str(out), "--quant", "int8-dynamic"]) == 130
    assert seen == [(True, False)], "quantization must run before the model appears at the output path"
    assert list(tmp_path.iterdir()) == []


def test_random_build_shows_progress_on_stderr(tiny_model, tmp_path, monkeypatch, capsys):
    from streamasr import model_store
    from streamasr.cli import main

    def fake_build(name, path, progress=None, **kwargs):  # the real one takes a minute; see test_model_store
        for step in ("training tokenizer", "tuning blank bias (1/14)", "writing .nemo"):
            if progress:
                progress(step)
        shutil.copyfile(tiny_model[0], path)

    monkeypatch.setattr(model_store, "build_random_nemo", fake_build)
    out = tmp_path / "model"
    assert main(["convert", "--random", "tiny-a", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[:3] == ["streamasr: building random tiny-a: training tokenizer",
                         "streamasr: building random tiny-a: tuning blank bias (1/14)",
                         "streamasr: building random tiny-a: writing .nemo"]
    assert "streamasr: building random tiny-a: exporting ONNX (encoder)" in lines
    assert captured.out.startswith(f"converted random:tiny-a -> {out} (") and captured.out.count("\n") == 1
    # a library call without a progress callback stays quiet
    model_store.convert_source("random:tiny-a", tmp_path / "quiet")
    assert capsys.readouterr().err == ""


def test_missing_input_with_the_default_model_fails_at_once(tmp_path):
    missing = str(tmp_path / "missing.wav")
    # should the hub be contacted, it is a port nothing listens on (and nothing is downloaded)
    env = {"STREAMASR_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    t0 = time.monotonic()
    proc = run_cli("transcribe", missing, env=env)
    assert_user_error(proc, missing, "no such file")
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("case", ["list", "wrong_type"])
def test_malformed_config_is_one_line(tiny_model_dir, tmp_path, speech_manifest, case):
    directory = tmp_path / "model"
    directory.mkdir()
    for f in Path(tiny_model_dir).iterdir():
        if f.name != "config.json":
            (directory / f.name).symlink_to(f)
    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    if case == "list":
        cfg, needle = [cfg], "not a JSON object"
    else:
        cfg["encoder"]["latency_modes"][0]["latency_ms"], needle = "80", "latency_ms must be an integer"
    (directory / "config.json").write_text(json.dumps(cfg))
    proc = run_cli("transcribe", str(speech_manifest[0]["path"]), "--model", str(directory), "--allow-random")
    assert_user_error(proc, str(directory / "config.json"), needle)
