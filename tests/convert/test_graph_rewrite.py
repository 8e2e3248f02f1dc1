"""The exact graph rewrites (convert/graph_rewrite.py): same outputs from fewer kernels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamasr.convert.graph_rewrite import fold_matmul_bias, fuse_skip_layer_norm

D = 64


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _residual_block() -> onnx.ModelProto:
    """x -> s = x + y -> LN(s) -> z = LN(s) + s (the sum read twice, as a Conformer's residual path does),
    plus a second Add -> LN whose sum nothing else reads."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(D).astype(np.float32), n) for n in ("g1", "b1", "g2", "b2")]
    nodes = [
        helper.make_node("Add", ["x", "y"], ["s"]),
        helper.make_node("LayerNormalization", ["s", "g1", "b1"], ["n1"], axis=-1, epsilon=1e-5),
        helper.make_node("Add", ["n1", "s"], ["z"]),
        helper.make_node("Add", ["z", "y"], ["s2"]),
        helper.make_node("LayerNormalization", ["s2", "g2", "b2"], ["out"], axis=-1, epsilon=1e-5),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "t", D]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "residual", io, [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "t", D]),
                                                      helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", "t", D])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_skip_layer_norm_fusion_keeps_outputs_and_the_shared_sum():
    model = _residual_block()
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 3, D)).astype(np.float32), "y": rng.standard_normal((2, 3, D)).astype(np.float32)}
    before = _run(model, feeds)
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    assert fuse_skip_layer_norm(fused) == 2
    onnx.checker.check_model(fused)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("SkipLayerNormalization") == 2 and "LayerNormalization" not in ops
    first = next(n for n in fused.graph.node if n.op_type == "SkipLayerNormalization")
    assert list(first.output) == ["n1", "", "", "s"]  # the sum is kept for its other reader
    after = _run(fused, feeds)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert fuse_skip_layer_norm(fused) == 0  # nothing left to fuse


def test_skip_layer_norm_fusion_leaves_constant_adds_and_other_axes():
    model = _residual_block()
    model.graph.node[1].attribute[0].i = 1  # LayerNormalization over axis 1: not a SkipLayerNormalization
    model.graph.initializer.append(numpy_helper.from_array(np.ones(D, np.float32), "c"))
    model.graph.node[3].input[1] = "c"  # an Add of a constant: a bias, not a residual
    assert fuse_skip_layer_norm(model) == 0


def _matmul_with_bias(k: int, n: int) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "bias")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"], name="mm"), helper.make_node("Add", ["p", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("accuracy_level", [1, 4])
def test_bias_folds_into_matmulnbits(accuracy_level):
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    quantizer = mnq.MatMulNBitsQuantizer(_matmul_with_bias(128, 96), bits=4, block_size=32, is_symmetric=False,
                                         accuracy_level=accuracy_level)
    quantizer.process()
    model = quantizer.model.model
    x = {"x": np.random.default_rng(3).standard_normal((2, 5, 128)).astype(np.float32)}
    before = _run(model, x)[0]
    assert fold_matmul_bias(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits"]
    assert model.graph.node[0].input[5] == "bias" and model.graph.node[0].output[0] == "y"
    np.testing.assert_allclose(_run(model, x)[0], before, atol=1e-5, rtol=0)


def test_bias_not_folded_where_the_product_is_read_twice():
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    quantizer = mnq.MatMulNBitsQuantizer(_matmul_with_bias(64, 32), bits=4, block_size=32)
    quantizer.process()
    model = quantizer.model.model
    model.graph.output.append(helper.make_tensor_value_info(model.graph.node[0].output[0], TensorProto.FLOAT, None))
    assert fold_matmul_bias(model) == 0


def test_exported_encoder_has_fused_norms_and_stacked_outputs(tiny_model_dir):
    """The converter writes the fused graph: every residual Add + LayerNormalization pair is one
    SkipLayerNormalization (4 per layer), and no per-layer Unsqueeze stacks the step's new cache entries."""
    from streamasr.model_config import ModelConfig

    cfg = ModelConfig.load(tiny_model_dir)
    graph = onnx.load(str(tiny_model_dir / "encoder.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("SkipLayerNormalization") == 4 * cfg.encoder.n_layers
    producers = {o: n for n in graph.node for o in n.output}
    for name in ("k_new", "v_new", "conv_cache_next"):
        stack = producers[name]
        assert stack.op_type == "Concat" and all(producers[i].op_type != "Unsqueeze" for i in stack.input)
