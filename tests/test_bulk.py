"""`streamasr transcribe --engine ray`: bulk transcription on a local Ray (2 workers) equals the single-process
run file for file; a corrupt file is recorded in errors.jsonl and the rest carry on (exit status 1); a rerun
skips the finished files. Input expansion (manifest, folder, glob) without Ray."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from streamasr.cli import main
from streamasr.cli.bulk import expand_inputs, plan_outputs
from streamasr.errors import StreamASRError


def _run(capsys, *argv):
    code = main(["transcribe", "--allow-random", "--threads", "1", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture()
def arctic(speech_manifest, tmp_path):
    """Four short arctic files and a corrupt one (random bytes named .wav), listed in a manifest in tmp_path
    with paths relative to it."""
    good = [it for it in speech_manifest if it["audio"].startswith("arctic_")][:4]
    assert len(good) == 4
    data = tmp_path / "data"
    data.mkdir()
    for it in good:
        shutil.copy(it["path"], data / it["audio"])
    (data / "corrupt.wav").write_bytes(os.urandom(3000))
    manifest = tmp_path / "manifest.jsonl"
    lines = [{"audio": f"data/{it['audio']}"} for it in good] + [{"audio": "data/corrupt.wav"}]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest, data, [it["audio"] for it in good]


def test_ray_bulk_equals_single_process_and_resumes(tmp_path, tiny_model_dir, arctic, capsys):
    pytest.importorskip("ray")
    manifest, data, good = arctic
    single = tmp_path / "single"
    code, _, err = _run(capsys, "--model", str(tiny_model_dir), "--format", "json", "--output-dir", str(single),
                        *[str(data / name) for name in good])
    assert code == 0, err

    out = tmp_path / "ray"
    ray_args = ["--model", str(tiny_model_dir), "--format", "json", "--output-dir", str(out),
                "--engine", "ray", "--workers", "2", str(manifest)]
    code, stdout, err = _run(capsys, *ray_args)
    assert code == 1, err  # finished, with a failed file
    assert "5 files: 4 done, 0 skipped, 1 failed" in stdout, stdout
    for name in good:
        stem = name.rsplit(".", 1)[0]
        assert (out / f"{stem}.json").read_bytes() == (single / f"{stem}.json").read_bytes(), name
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["audio"].endswith("corrupt.wav") and errors[0]["error"]
    assert not (out / "corrupt.json").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n.rsplit('.', 1)[0]}.json" for n in good]
                                                           + ["errors.jsonl"])

    # a rerun skips the finished files and retries the failed one
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    code, stdout, err = _run(capsys, *ray_args)
    assert code == 1, err
    assert "5 files: 0 done, 4 skipped, 1 failed" in stdout, stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == before
    assert len((out / "errors.jsonl").read_text().splitlines()) == 1

    # without the corrupt file there is nothing left to do: no Ray started, no errors.jsonl, exit status 0
    (data / "corrupt.wav").unlink()
    code, stdout, err = _run(capsys, *ray_args[:-1], str(data))
    assert code == 0, err
    assert "4 files: 0 done, 4 skipped, 0 failed" in stdout, stdout
    assert not (out / "errors.jsonl").exists()


def test_inputs_manifest_folder_glob(tmp_path, arctic):
    manifest, data, good = arctic
    from_manifest = expand_inputs([str(manifest)])
    assert [p.name for p in from_manifest] == good + ["corrupt.wav"]
    assert all(p.is_absolute() for p in from_manifest)
    assert [p.name for p in expand_inputs([str(data)])] == sorted(good + ["corrupt.wav"])
    assert [p.name for p in expand_inputs([str(data / "arctic_*.wav")])] == sorted(good)
    # each file once, whichever inputs name it
    assert len(expand_inputs([str(data), str(manifest), str(data / "*.wav")])) == 5
    with pytest.raises(StreamASRError, match="matches no files"):
        expand_inputs([str(data / "*.mp3")])
    with pytest.raises(StreamASRError, match="stdin"):
        expand_inputs(["-"])
    (tmp_path / "other").mkdir()
    shutil.copy(data / good[0], tmp_path / "other" / good[0])
    with pytest.raises(StreamASRError, match="would both be written"):
        plan_outputs(expand_inputs([str(data), str(tmp_path / "other")]), tmp_path / "out", "json")


def test_engine_ray_usage_errors(tmp_path, arctic, capsys):
    manifest, _, _ = arctic
    code, _, err = _run(capsys, "--engine", "ray", str(manifest))
    assert code == 2 and "--output-dir" in err
    code, _, err = _run(capsys, "--workers", "2", str(manifest))
    assert code == 2 and "need --engine ray" in err
