"""sherpa-onnx as a peer: the export its Nemotron recipe does, on a reduced random NeMo model, run by
sherpa-onnx itself and by `bench speed --peer` beside ours and NeMo's own streaming."""

from __future__ import annotations

import json
import re

import numpy as np
import onnxruntime as ort
import pytest

from streamasr.cli import main
from streamasr.errors import StreamASRError
from streamasr.eval.sherpa_peer import (
    INT8_FILES,
    export_sherpa,
    load_peer,
    right_context_for,
    sherpa_once,
    token_agreement,
)

#: one architecture is enough for the peer export (nemo_built builds each once per test session)
ONLY_TINY_A = pytest.mark.parametrize("nemo_built", ["tiny-a"], indirect=True)


@pytest.fixture(scope="module")
def tiny(nemo_built, tmp_path_factory):
    """tiny-a (as NeMo built it) exported for sherpa-onnx at 160 and 560 ms."""
    out = tmp_path_factory.mktemp("sherpa")
    export_sherpa(str(nemo_built["nemo_path"]), out, [160, 560], threads=1)
    return {**nemo_built, "sherpa": out}


@ONLY_TINY_A
def test_export_writes_what_sherpa_reads(tiny):
    for ms, window, shift in ((160, 25, 16), (560, 65, 56)):
        folder = tiny["sherpa"] / str(ms)
        assert all((folder / f).is_file() for f in INT8_FILES.values())
        tokens = (folder / "tokens.txt").read_text(encoding="utf-8").splitlines()
        vocab = tiny["nemo"].decoder.vocab_size
        assert len(tokens) == vocab + 1 and tokens[-1] == f"<blk> {vocab}"
        session = ort.InferenceSession(str(folder / INT8_FILES["encoder"]), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        assert (int(meta["window_size"]), int(meta["chunk_shift"]), int(meta["chunk_size_ms"])) == (window, shift, ms)
        assert int(meta["vocab_size"]) == vocab and int(meta["cache_last_channel_dim2"]) == 70
        # quantize_dynamic, as sherpa-onnx ships its models: integer MatMuls in the encoder
        ops = {n.op_type for n in _graph_nodes(folder / INT8_FILES["encoder"])}
        assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops


def _graph_nodes(path):
    import onnx

    return onnx.load(str(path)).graph.node


@ONLY_TINY_A
def test_sherpa_streams_the_export(tiny, speech):
    samples = next(iter(speech.values()))[: 16000 * 6]
    for ms, shift in ((160, 16), (560, 56)):
        peer = load_peer(tiny["sherpa"], ms, threads=1)
        run = sherpa_once(peer, samples, block=320)
        assert run.token_ids and all(0 <= t < tiny["nemo"].decoder.vocab_size for t in run.token_ids)
        # one encoder window per `shift` mel frames (10 ms each) once the first window is full; the last
        # partial window is never decoded
        assert abs(run.steps - (600 - (shift + 9)) / shift) <= 2
        assert run.processing_s > 0 and len(run.chunk_s) <= run.steps


@ONLY_TINY_A
def test_bench_speed_peer_row_and_token_agreement(tiny, tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = main(["bench", "speed", "--model", str(tiny["model_dir"]), "--peer", f"sherpa-onnx:{tiny['sherpa']}",
               "--nemo", str(tiny["nemo_path"]), "--latency", "160,560", "--seconds", "5", "--threads", "1",
               "--warmup", "1", "--app-rss-seconds", "2", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["latency_ms"], r["quantization"].split(" (")[-1]) for r in rows] == [
        (160, "fp32"), (160, "sherpa-onnx)"), (160, "PyTorch)"), (560, "fp32"), (560, "sherpa-onnx)"), (560, "PyTorch)")]
    ours, peer, nemo = rows[:3]
    assert peer["rtfx"] > 0 and peer["chunk_p50_ms"] > 0 and peer["size_bytes"] > 0
    # each application's own peak, from a clean child process; NeMo gets none
    assert ours["app_peak_rss_bytes"] > 20e6 and peer["app_peak_rss_bytes"] > 20e6 and nemo["app_peak_rss_bytes"] is None
    # the load's own memory, from the same child: what loading the model took, never less than nothing
    assert 0 < ours["load_rss_bytes"] <= ours["app_peak_rss_bytes"]
    # our fp32 model reproduces NeMo's streaming tokens; sherpa-onnx's front end and chunking do not
    for r in rows:
        if r["quantization"] == "fp32":
            reference = next(x for x in rows if x["latency_ms"] == r["latency_ms"] and "PyTorch" in x["quantization"])
            assert r["token_ids"] == reference["token_ids"] and r["token_ids"]
    assert "token agreement with NeMo's streaming output" in text and "against sherpa-onnx, same run" in text
    assert re.search(r"\| sherpa-onnx \S+ \| int8 dynamic \(sherpa-onnx\) \| 160 ms \|", text)  # its speed row
    assert re.search(r"\| sherpa-onnx \S+ \(int8 dynamic \(sherpa-onnx\)\) \| 160 ms \|", text)  # its agreement


def test_token_agreement_counts_edits_and_prefix():
    a = token_agreement([1, 2, 3, 4], [1, 2, 3, 4])
    assert a.identical and a.common_prefix == 4 and a.error_rate == 0
    b = token_agreement([1, 2, 9, 4, 5], [1, 2, 3, 4])
    assert not b.identical and b.common_prefix == 2 and b.error_rate == pytest.approx(2 / 4)
    assert token_agreement([], [7, 8]).error_rate == 1.0


@ONLY_TINY_A
def test_bad_peer_and_mode_are_clear_errors(tiny, tmp_path, capsys):
    assert main(["bench", "speed", "--model", str(tiny["model_dir"]), "--peer", str(tmp_path)]) == 2
    assert "--peer wants sherpa-onnx:DIR" in capsys.readouterr().err
    with pytest.raises(StreamASRError, match="no sherpa-onnx export for 80 ms"):
        load_peer(tiny["sherpa"], 80)
    with pytest.raises(StreamASRError, match="whole number"):
        right_context_for(100)
    assert np.isfinite(right_context_for(1120))
