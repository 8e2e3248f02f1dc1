"""Where models come from (model_store): sources told apart before any work, conversions written atomically in a
directory of their own, processes converting the same source into the cache not clobbering each other, the hub
given up on quickly offline, and a random model's build reporting its progress."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamasr.convert.random_model import BLANK_TUNING_STEPS, build_random_nemo
from streamasr.errors import ModelError
from streamasr.model_config import CONFIG_NAME
from streamasr.model_store import check_output, convert_source, source_kind
from streamasr.speech import bundled_speech


def _siblings(out: Path) -> list[str]:
    """Everything beside `out` that a conversion into it made (its partial or set-aside directories)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))


def test_whole_pipeline_runs_in_a_private_directory_renamed_into_place_at_the_end(tiny_model, tmp_path):
    nemo_path = tiny_model[0]
    out = tmp_path / "model"
    # another process's partial directory under the name every conversion used to share
    other = tmp_path / "model.partial"
    other.mkdir()
    (other / "encoder.onnx").write_text("another process is writing this")
    seen = {}

    def finish(work: Path) -> None:  # where `convert` fuses and quantizes
        seen["work"] = work
        seen["output_existed"] = out.exists()
        seen["config_in_work"] = (work / CONFIG_NAME).is_file()

    assert convert_source(str(nemo_path), out, finish=finish) == out
    assert seen["output_existed"] is False, "the output appeared before the fusion/quantization step ran"
    assert seen["config_in_work"] and seen["work"].parent == tmp_path
    assert seen["work"].name.startswith("model.partial-") and seen["work"] != other
    assert (other / "encoder.onnx").read_text() == "another process is writing this"
    assert (out / CONFIG_NAME).is_file() and not seen["work"].exists()
    assert _siblings(out) == ["model.partial"]  # only the other process's


def test_an_interrupted_conversion_leaves_nothing_that_looks_like_a_model(tiny_model, tmp_path):
    nemo_path = tiny_model[0]
    out = tmp_path / "model"

    def killed(work: Path) -> None:
        raise KeyboardInterrupt  # Ctrl+C during the quantization

    with pytest.raises(KeyboardInterrupt):
        convert_source(str(nemo_path), out, finish=killed)
    assert not out.exists() and _siblings(out) == []

    # a model already at the output stays whole until its replacement is complete
    convert_source(str(nemo_path), out)
    before = json.loads((out / CONFIG_NAME).read_text())
    with pytest.raises(KeyboardInterrupt):
        convert_source(str(nemo_path), out, finish=killed)
    assert json.loads((out / CONFIG_NAME).read_text()) == before and _siblings(out) == []


def test_the_cache_keeps_a_model_another_process_finished_first(tiny_model, tiny_model_dir, tmp_path):
    nemo_path = tiny_model[0]
    out = tmp_path / "cache" / "model"

    def other_process_finishes_first(work: Path) -> None:
        shutil.copytree(tiny_model_dir, out)
        (out / "theirs").write_text("")

    assert convert_source(str(nemo_path), out, finish=other_process_finishes_first, keep_complete=True) == out
    assert (out / "theirs").is_file() and _siblings(out) == []
    # `convert -o` (keep_complete off) replaces what is there
    assert convert_source(str(nemo_path), out) == out
    assert not (out / "theirs").exists() and (out / CONFIG_NAME).is_file() and _siblings(out) == []


def test_two_processes_resolving_the_same_source_both_succeed(tiny_model, tmp_path):
    code = ("import sys; from streamasr.model_store import resolve_model; "
            "print(resolve_model(sys.argv[1]))")
    env = dict(os.environ, STREAMASR_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tiny_model[0])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr.decode()
    dirs = {stdout.decode().strip() for stdout, _ in outs}
    assert len(dirs) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(dirs.pop()).name]


def test_sources_and_outputs_are_told_apart_before_any_work(tiny_model, tiny_model_dir, tmp_path):
    nemo_path = tiny_model[0]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    assert source_kind(str(nemo_path)) == "nemo"
    assert source_kind(str(tiny_model_dir)) == "directory"
    assert source_kind("random:tiny-b") == "random"
    assert source_kind("nvidia/nemotron-speech-streaming-en-0.6b") == "hub"
    cases = [
        (lambda: source_kind(str(notes)), "not a .nemo file"),
        (lambda: source_kind(str(tmp_path / "nope.nemo")), "no such .nemo file"),
        (lambda: source_kind("random:tiny-z"), "unknown architecture 'tiny-z'"),
        (lambda: source_kind(str(tmp_path)), "not a streamasr model directory"),
        (lambda: source_kind(str(tmp_path), directories=False), "is a directory, not a .nemo file"),
        (lambda: source_kind(str(tiny_model_dir), directories=False), "already a converted streamasr model"),
        (lambda: check_output(notes), "is an existing file"),
        (lambda: check_output(notes / "model"), f"{notes} is a file"),
        (lambda: check_output(tmp_path), "holding other files"),
    ]
    for call, needle in cases:
        with pytest.raises(ModelError, match=re.escape(needle)):
            call()
    assert check_output(tiny_model_dir) == tiny_model_dir  # a model there is replaced
    assert check_output(tmp_path / "new" / "model") == tmp_path / "new" / "model"
    # and convert_source refuses them the same way, before converting anything
    with pytest.raises(ModelError, match="not a .nemo file"):
        convert_source(str(notes), tmp_path / "out")
    with pytest.raises(ModelError, match="is an existing file"):
        convert_source(str(nemo_path), notes)
    assert not (tmp_path / "out").exists() and _siblings(notes) == []


def test_hub_unreachable_fails_within_seconds(tmp_path):
    # a port nothing listens on: huggingface_hub itself retries it for about 25 s
    code = ("from streamasr.model_store import resolve_model\n"
            "try:\n    resolve_model('nvidia/nemotron-speech-streaming-en-0.6b')\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    env = dict(os.environ, STREAMASR_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"),
               HF_ENDPOINT="http://127.0.0.1:9", HTTPS_PROXY="", https_proxy="", ALL_PROXY="", all_proxy="")
    env.pop("HF_HUB_OFFLINE", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    elapsed = time.monotonic() - t0
    out = proc.stdout.decode()
    assert out.startswith("OfflineError"), out + proc.stderr.decode()
    assert "Hugging Face hub" in out and ".nemo" in out
    assert elapsed < 12, f"took {elapsed:.1f} s"


def test_random_build_reports_its_steps(tmp_path):
    steps: list[str] = []
    build_random_nemo("tiny-a", tmp_path / "a.nemo", speech=[bundled_speech(max_seconds=10.0)[0][:32000]],
                      progress=steps.append)
    assert steps[:2] == ["training tokenizer", "drawing random weights"]
    tuning = [s for s in steps if s.startswith("tuning blank bias")]
    assert tuning == [f"tuning blank bias ({i}/{BLANK_TUNING_STEPS})" for i in range(1, BLANK_TUNING_STEPS + 1)]
    assert steps[-1] == "writing .nemo"
