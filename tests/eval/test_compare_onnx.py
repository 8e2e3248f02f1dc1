"""`parakeet-tdt-onnx`: Parakeet TDT in batch on onnx-asr, on a small random TDT exported the way onnx-asr's
conversion guide makes its models. The full size is the same code with `nemo_chunked.SHAPES` (benchmarks)."""

from __future__ import annotations

import json
import re
import sys

import pytest

from streamasr.errors import ModelError, OfflineError
from streamasr.eval.compare import nemo_chunked, parakeet_onnx
from streamasr.eval.compare.registry import load_system
from streamasr.eval.compare.spec import SpecError

pytest.importorskip("onnx_asr")
SR = 16000
SMALL = nemo_chunked.TransducerShape(80, 2, 64, 2, "dw_striding", 8, 32, 9, 64, 64, 64, (0, 1, 2, 3, 4))


@pytest.fixture(scope="module")
def clip(speech_manifest):
    from streamasr.audio import read_audio

    item = next(it for it in speech_manifest if it["audio"] == "jfk_inaugural_1961.wav")
    return read_audio(item["path"])[: 7 * SR]


@pytest.fixture(scope="module")
def small(tmp_path_factory, clip):
    """(steered small NeMo TDT, its onnx-asr directory, tokens/s reached in the calibration)."""
    import torch

    torch.set_num_threads(2)
    model, rate = parakeet_onnx.build_steered_random(SMALL, speech=[clip[: 4 * SR]])
    model.preprocessor.featurizer.dither = 0.0
    out = parakeet_onnx.export_onnx_asr(model, tmp_path_factory.mktemp("onnx") / "small", random_weights=True)
    return model, out, rate


def test_onnx_asr_text_equals_nemo_batch_greedy(monkeypatch, small, clip):
    model, directory, rate = small
    assert abs(rate - nemo_chunked.TOKENS_PER_S) < 1.0  # the blank bias steers the rate
    assert sorted(p.name for p in directory.iterdir() if not p.name.endswith(".data")) == [
        "config.json", "decoder_joint-model.int8.onnx", "decoder_joint-model.onnx", "encoder-model.int8.onnx",
        "encoder-model.onnx", "vocab.txt"]
    # NeMo's batch path (`parakeet-tdt:random:@batch`) on the same steered weights
    monkeypatch.setitem(nemo_chunked.SHAPES, "parakeet-tdt", SMALL)
    nemo_row = load_system("parakeet-tdt:random:@batch", threads=2)
    nemo_row.model = model
    nemo = nemo_row.transcribe(clip).text
    onnx_row = load_system(f"parakeet-tdt-onnx:{directory}@batch", threads=2)
    tr = onnx_row.transcribe(clip)
    assert tr.text == nemo and len(tr.steps) == 1 and tr.steps[0].audio_end_s == 7.0
    assert 0.5 * 3 * 7 <= len(nemo.split()) <= 2 * 3 * 7  # speech-like, not blank-only nor every frame
    info = onnx_row.info
    assert info.random_weights and info.algorithmic_delay_s is None and not info.streams
    assert info.precision.startswith("fp32 (onnx-asr")
    int8 = load_system(f"parakeet-tdt-onnx-int8:{directory}@batch", threads=2)
    assert int8.info.precision.startswith("int8") and 0 < int8.info.size_bytes < info.size_bytes
    assert int8.transcribe(clip).text  # int8 may flip near-tied random logits: its text is not compared
    # NeMo's `parakeet-tdt` cannot read an onnx-asr folder: one line pointing at the backend that can
    with pytest.raises(ModelError, match=f"is an onnx-asr folder.*parakeet-tdt-onnx:{re.escape(str(directory))}@batch"):
        load_system(f"parakeet-tdt:{directory}@batch", threads=2).transcribe(clip)


def test_onnx_random_row_never_prints_a_wer(capsys, small, clip, tmp_path):
    from streamasr.cli import main

    _, directory, _ = small
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(tmp_path / "a.wav"), "text": "and so my fellow", "id": "a"}) + "\n")
    import soundfile as sf

    sf.write(tmp_path / "a.wav", clip[: 3 * SR], SR)
    out = tmp_path / "out"
    code = main(["bench", "compare", "--dataset", f"manifest:{manifest}", "--out", str(out), "--threads", "2",
                 "--no-progress", "--bootstrap", "50", "--in-process", "--system",
                 f"parakeet-tdt-onnx:{directory}@batch"])
    stdout = capsys.readouterr().out
    assert code == 0
    (row,) = json.loads((out / "summary.json").read_text())["systems"]
    assert row["random_weights"] is True and row["wer"] is None and row["wer_note"] == "random weights"
    (line,) = [x for x in stdout.splitlines() if x.startswith("| 1 ")]
    assert line.split("|")[4].strip() == "random weights"


def test_missing_extra_and_offline_hub_id_say_so_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx_asr", None)
    with pytest.raises(SpecError, match=r"needs onnx-asr: pip install 'streamasr\[onnx-asr\]'"):
        load_system("parakeet-tdt-onnx:nemo-parakeet-tdt-0.6b-v3@batch", threads=1)
    monkeypatch.delitem(sys.modules, "onnx_asr")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="backend parakeet-tdt-onnx-int8: cannot reach the Hugging Face hub to "
                                           "download nemo-parakeet-tdt-0.6b-v3") as err:
        load_system("parakeet-tdt-onnx-int8:nemo-parakeet-tdt-0.6b-v3@batch", threads=1)
    assert "\n" not in str(err.value)
    with pytest.raises(SpecError, match="does not run mode"):
        load_system("parakeet-tdt-onnx:random:@chunk(5.6-0.8-1.6)", threads=1)
