"""The weight floor (`bench speed --floor`): the encoder's weight products alone, with the model's own weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from streamasr.cli import main
from streamasr.eval.weight_floor import floor_graph, floor_session, weight_floor
from streamasr.model_config import ModelConfig
from streamasr.quant.quantize import quantize_model_dir


@pytest.fixture(scope="module")
def int4_dir(tiny_model_dir, tmp_path_factory):
    d = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("floor") / "tiny-int4")
    quantize_model_dir(d, "int4-kquant", block_size=32, accuracy_level=4)
    return d


def _attr(node, name):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _dequantized(node, inits: dict) -> np.ndarray:
    """(K, N) weights of a 4-bit MatMulNBits node, as its schema defines them: (q - zero point) * scale."""
    k, n, block = _attr(node, "K"), _attr(node, "N"), _attr(node, "block_size")
    packed = numpy_helper.to_array(inits[node.input[1]])  # (N, blocks, block / 2), low nibble first
    q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :k].astype(np.float32)
    blocks = -(-k // block)
    scale = numpy_helper.to_array(inits[node.input[2]]).reshape(n, blocks)
    zp = np.full((n, blocks), 8.0, np.float32)
    if len(node.input) > 3 and node.input[3]:
        z = numpy_helper.to_array(inits[node.input[3]]).reshape(n, -1)
        zp = np.stack([z & 0x0F, z >> 4], axis=-1).reshape(n, -1)[:, :blocks].astype(np.float32)
    w = (q.reshape(n, blocks, -1) - zp[..., None]) * scale[..., None]
    return w.reshape(n, -1)[:, :k].T


@pytest.mark.parametrize("kind", ["fp32", "int4"])
def test_floor_graph_holds_every_weight_product_with_the_models_own_weights(kind, tiny_model_dir, int4_dir):
    directory = tiny_model_dir if kind == "fp32" else int4_dir
    encoder = onnx.load(str(directory / "encoder.onnx"))
    inits = {t.name: t for t in encoder.graph.initializer}
    op = "MatMul" if kind == "fp32" else "MatMulNBits"
    expected = [n for n in encoder.graph.node if n.op_type == op and n.input[1] in inits
                and (op == "MatMulNBits" or len(inits[n.input[1]].dims) == 2)]
    floor, _, _ = floor_graph(directory / "encoder.onnx")
    # the weights stay in the model's file: the graph only refers to them
    assert floor.ByteSize() < (directory / "encoder.onnx.data").stat().st_size / 10
    session, widths, kernels = floor_session(directory / "encoder.onnx", threads=1)
    assert kernels == len(expected) > 0
    rng = np.random.default_rng(1)
    feeds = {name: rng.standard_normal((2, width)).astype(np.float32) for name, width in widths.items()}
    outputs = session.run(None, feeds)
    assert len(outputs) == kernels
    for node, got in zip(expected, outputs):
        if kind == "fp32":
            weight = numpy_helper.to_array(inits[node.input[1]])
            x = feeds[f"x{weight.shape[0]}"]
            np.testing.assert_allclose(got, x @ weight, rtol=1e-4, atol=1e-4)
        else:
            weight = _dequantized(node, inits)
            x = feeds[f"x{weight.shape[0]}"]
            want = x @ weight
            if len(node.input) > 5 and node.input[5]:
                want = want + numpy_helper.to_array(inits[node.input[5]])
            # accuracy level 4 multiplies int8-quantized activations: close, not exact
            assert np.abs(got - want).max() <= 0.02 * np.abs(want).max() + 1e-4


def test_weight_floor_rows_follow_the_latency_modes(int4_dir):
    frame_s = ModelConfig.load(int4_dir).frame_seconds
    floors = weight_floor(int4_dir, [80, 160, 560], threads=1, runs=3)
    assert [f.rows for f in floors] == [1, 2, 7]
    for f in floors:
        assert f.step_ms > 0 and f.bound_rtfx == pytest.approx(f.rows * frame_s / (f.step_ms / 1e3), rel=1e-6)


def test_bench_speed_floor_prints_the_bound_and_the_share_reached(int4_dir, tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = main(["bench", "speed", "--model", str(int4_dir), "--seconds", "3", "--latency", "160", "--threads", "1",
               "--warmup", "1", "--app-rss-seconds", "0", "--floor", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "weight floor of tiny-int4" in text
    (line,) = [x for x in text.splitlines() if x.startswith("| 160 ms | 2 |")]
    cells = [c.strip() for c in line.split("|")[1:-1]]
    bound, measured, share = float(cells[3]), float(cells[4]), float(cells[5].rstrip(" %"))
    assert share == pytest.approx(100 * measured / bound, abs=0.6)
    data = json.loads(out.read_text())
    (floor,) = data["weight_floors"][str(int4_dir)]
    assert floor["latency_ms"] == 160 and floor["rows"] == 2 and floor["bound_rtfx"] == pytest.approx(bound, abs=0.01)
