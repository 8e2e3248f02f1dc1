"""`streamasr bench speed` and `bench fidelity` on the tiny random model (seconds)."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

from streamasr.cli import main
from streamasr.errors import StreamASRError
from streamasr.eval.speed import run_bench, speech_audio, stream_once
from streamasr.quant.quantize import quantize_model_dir
from streamasr.runtime.encoder import ChunkSchedule
from streamasr.speech import BUNDLED_DIR


@pytest.fixture(scope="module")
def int8_dir(tiny_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("int8") / "tiny-int8"
    shutil.copytree(tiny_model_dir, d)
    quantize_model_dir(d, "int8")
    return d


def test_stream_once_times_every_chunk(loaded_tiny, speech):
    samples = next(iter(speech.values()))[: 16000 * 5]
    stats = stream_once(loaded_tiny, samples, 160, block=320)
    assert stats.audio_s == pytest.approx(5.0)
    assert stats.steps > 10 and 0 < len(stats.chunk_s) <= stats.steps  # finish() may run the last step
    assert stats.processing_s >= sum(stats.chunk_s) > 0
    assert stats.encode_s > 0 and stats.encode_s <= stats.processing_s
    # on the simulated real-time clock the final result comes after the audio ends, at least by finish()'s time
    assert stats.final_s >= stats.finish_call_s > 0
    cfg = loaded_tiny.config
    first = ChunkSchedule.for_mode(cfg.encoder, cfg.encoder.mode(160)).first_chunk * cfg.frontend.hop_length / 16000
    if stats.first_partial_s is not None:  # no text before the first chunk's audio has been spoken
        assert stats.first_partial_s >= first
    assert stats.peak_rss > 10e6


def test_bench_speed_cli_table_and_json(tiny_model_dir, int8_dir, tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = main(["bench", "speed", "--model", str(tiny_model_dir), "--compare", str(int8_dir), "--seconds", "6",
               "--latency", "160,560", "--threads", "1", "--warmup", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| model | quant | latency | RTFx |" in text and "RTFx vs first" in text
    table = [line for line in text.splitlines() if re.search(r"\| (160|560) ms \|", line)]
    assert len(table) == 4
    rtfx = [float(line.split("|")[4]) for line in table]
    assert all(x > 0 for x in rtfx)
    assert any("int8" in line for line in table)
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["latency_ms"], r["quantization"]) for r in rows] == [
        (160, "fp32"), (160, "int8"), (560, "fp32"), (560, "int8")]
    for r in rows:
        assert r["audio_s"] == pytest.approx(6.0)
        assert r["rtfx"] == pytest.approx(r["audio_s"] / r["processing_s"], rel=1e-6)
        assert r["chunks"] > 0 and 0 < r["chunk_p50_ms"] <= r["chunk_p95_ms"] <= r["chunk_max_ms"]
        assert r["size_bytes"] > 0 and r["load_s"] > 0
    assert rows[0]["ratio_rtfx"] == 1.0 and rows[1]["ratio_size"] < 0.6  # int8 encoder: about a quarter
    assert rows[1]["ratio_rtfx"] == pytest.approx(rows[1]["rtfx"] / rows[0]["rtfx"])
    assert rows[0]["chunks"] > rows[2]["chunks"]  # 160 ms runs more, smaller chunks than 560 ms


def test_bench_speed_rejects_unknown_mode(tiny_model_dir, capsys):
    assert main(["bench", "speed", "--model", str(tiny_model_dir), "--latency", "333", "--seconds", "1"]) == 2
    assert "unknown latency mode 333" in capsys.readouterr().err


def test_speech_audio_loops_the_speech_folder_or_the_bundled_clips(tmp_path, monkeypatch, speech):
    x, source = speech_audio(2.5, 16000)  # $STREAMASR_SPEECH_DIR (the tests' speech)
    first = next(iter(speech.values()))
    assert x.dtype == np.float32 and x.size == 40000 and os.environ["STREAMASR_SPEECH_DIR"] in source
    np.testing.assert_array_equal(x[: min(first.size, 40000)], first[:40000])
    monkeypatch.delenv("STREAMASR_SPEECH_DIR")
    y, source = speech_audio(200.0, 16000)  # the bundled clips (about 47 s), looped
    assert y.size == 16000 * 200 and str(BUNDLED_DIR) in source and 0 < np.abs(y).max() <= 1
    with pytest.raises(StreamASRError, match="manifest.jsonl"):
        speech_audio(1.0, 16000, speech_dir=tmp_path)


def test_run_bench_interleaves_repeats(loaded_tiny, tiny_model_dir, speech):
    samples = next(iter(speech.values()))[: 16000 * 3]
    seen = []
    rows = run_bench([tiny_model_dir, tiny_model_dir], [560], 1, samples, warmup_s=0.5, repeats=2,
                     progress=lambda done, total, what: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(rows) == 2 and all(r.rounds == 2 and len(r.rtfx_rounds) == 2 for r in rows)
    assert rows[0].rtfx == pytest.approx(float(np.median(rows[0].rtfx_rounds)), rel=1e-2)


def test_bench_fidelity_cli(tiny_model_dir, int8_dir, speech_manifest, capsys):
    audio = [str(it["path"]) for it in speech_manifest[:2]]
    rc = main(["bench", "fidelity", "--model", str(int8_dir), "--reference", str(tiny_model_dir),
               "--audio", *audio, "--latency", "560", "--threads", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| int8")]
    assert len(rows) == 3 and "| ALL |" in rows[-1]
    cosine = float(rows[-1].split("|")[10])
    assert 0.99 < cosine < 1.0  # computed: int8 is close to, but not exactly, fp32
    agreement = float(rows[-1].split("|")[5])
    assert 0.0 <= agreement <= 1.0


def test_bench_speed_times_nemo_in_the_same_run(tiny_model_dir, tmp_path, capsys):
    """--nemo random:tiny-a: NeMo builds the same architecture in memory and runs its own streaming loop,
    interleaved with the ONNX model; the table gets a NeMo row and the ratio lines."""
    out_json = tmp_path / "speed.json"
    rc = main(["bench", "speed", "--model", str(tiny_model_dir), "--latency", "160,560", "--seconds", "4",
               "--threads", "1", "--nemo", "random:tiny-a", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = json.loads(out_json.read_text())["rows"]
    nemo = [r for r in rows if r["model"].startswith("NeMo PyTorch")]
    ours = [r for r in rows if not r["model"].startswith("NeMo PyTorch")]
    assert [r["latency_ms"] for r in nemo] == [160, 560] and len(ours) == 2
    for n, o in zip(nemo, ours):
        # the same chunk schedule as ours (NeMo drops a last chunk shorter than 8 mel frames; we encode it)
        assert n["rtfx"] > 0 and o["chunks"] - 1 <= n["chunks"] <= o["chunks"]
        assert n["ratio_rtfx"] == pytest.approx(n["rtfx"] / o["rtfx"])
    assert "throughput against NeMo's PyTorch streaming, same run:" in out
    assert "160 ms: NeMo RTFx" in out and "560 ms: NeMo RTFx" in out
    assert main(["bench", "speed", "--model", str(tiny_model_dir), "--seconds", "1", "--nemo", "random:nope"]) == 2


def test_provider_option(tiny_model_dir, capsys):
    """--provider: a comma list runs the model under each; a provider this onnxruntime lacks is one clear
    line (OpenVINO needs the onnxruntime-openvino build), never a silent fall back to the CPU provider."""
    import onnxruntime as ort

    from streamasr.errors import ModelError
    from streamasr.runtime.backend import encoder_providers

    assert main(["bench", "speed", "--model", str(tiny_model_dir), "--latency", "160", "--seconds", "2",
                 "--threads", "1", "--provider", "cpu,cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("| 160 ms |") == 2
    with pytest.raises(ModelError, match="unknown provider"):
        encoder_providers("tpu")
    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        assert main(["bench", "speed", "--model", str(tiny_model_dir), "--seconds", "1",
                     "--provider", "openvino"]) == 2
        assert "onnxruntime-openvino" in capsys.readouterr().err
    else:
        assert encoder_providers("openvino", 2)[0] == ("OpenVINOExecutionProvider",
                                                        {"device_type": "CPU", "precision": "FP32",
                                                         "num_of_threads": "2"})
