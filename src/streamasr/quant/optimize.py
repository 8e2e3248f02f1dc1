"""Offline operator fusion of the encoder graph with ONNX Runtime's transformers optimizer.

`optimize_model_dir` runs `onnxruntime.transformers.optimizer` (model type `conformer`) with a chosen set of
fusions over a converted fp32 model directory's encoder (before quantization: on a MatMulNBits graph the
optimizer's shape inference fails and nothing fuses; the quantizers keep the fused operators), saves the fused graph in place and
records in config.json which fusions ran and what each changed (operator counts before and after). Which
fusions to use is a measured choice: `streamasr bench fusion` runs each one alone on a model, checks the
fused graph against the unfused one on real speech and times both interleaved (`bench/fusion.py`).

ONNX Runtime also fuses at session creation (streamasr opens every session with ORT_ENABLE_ALL); the fusions
here are the transformers optimizer's, which ORT's built-in optimizer does not all apply, and
`ort_fused_counts` shows what the built-in one makes of a graph for comparison.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any

from streamasr.errors import ModelError
from streamasr.model_config import ModelConfig
from streamasr.quant.graph import quiet_tools, replace_encoder

#: our name -> the `FusionOptions` switch of ORT's transformers optimizer (model type "conformer")
FUSIONS: dict[str, str] = {
    "skip_layer_norm": "enable_skip_layer_norm",  # residual Add + LayerNormalization -> SkipLayerNormalization
    "bias_skip_layer_norm": "enable_bias_skip_layer_norm",  # ... with the preceding bias Add folded in
    "layer_norm": "enable_layer_norm",  # decomposed LayerNorm subgraphs -> LayerNormalization
    "attention": "enable_attention",  # Q/K/V MatMuls + softmax -> Attention / MultiHeadAttention
    "gelu": "enable_gelu",
    "bias_gelu": "enable_bias_gelu",
    "rotary_embeddings": "enable_rotary_embeddings",
    "embed_layer_norm": "enable_embed_layer_norm",
    "qordered_matmul": "enable_qordered_matmul",
}


def _options(fusions: set[str]):
    from onnxruntime.transformers.fusion_options import FusionOptions

    unknown = sorted(fusions - set(FUSIONS))
    if unknown:
        raise ModelError(f"unknown fusion {', '.join(unknown)}; choose from {', '.join(FUSIONS)}")
    opts = FusionOptions("conformer")
    for name, attr in FUSIONS.items():
        setattr(opts, attr, name in fusions)
    return opts


def op_counts(model) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph.node))


def count_changes(before: dict[str, int], after: dict[str, int]) -> dict[str, list[int]]:
    """op type -> [before, after] for every op type whose count changed."""
    return {op: [before.get(op, 0), after.get(op, 0)] for op in sorted(set(before) | set(after))
            if before.get(op, 0) != after.get(op, 0)}


def fuse_encoder(src: Path, fusions: set[str], num_heads: int, hidden_size: int) -> tuple[Any, dict[str, Any]]:
    """The fused graph of `src` and the change record."""
    import onnx
    from onnxruntime.transformers import optimizer

    before = op_counts(onnx.load(str(src), load_external_data=False))
    # the optimizer logs every symbolic-shape guess at WARNING and prints statistics on stdout
    with quiet_tools(("onnxruntime.transformers", "onnx_model", "fusion_base", "")):
        fused = optimizer.optimize_model(str(src), model_type="conformer", num_heads=num_heads,
                                         hidden_size=hidden_size, optimization_options=_options(fusions),
                                         opt_level=0, use_gpu=False)
        stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    model = fused.model
    if any(n.domain == "com.microsoft" for n in model.graph.node) and \
            not any(o.domain == "com.microsoft" for o in model.opset_import):
        # the optimizer leaves the contrib domain undeclared; onnx's shape inference (quantize_dynamic) needs it
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    after = op_counts(model)
    return model, {"fusions": sorted(fusions), "fused_operators": stats, "nodes_before": sum(before.values()),
                   "nodes_after": sum(after.values()), "op_changes": count_changes(before, after)}


def optimize_model_dir(model_dir, fusions: set[str] | list[str]) -> dict[str, Any]:
    """Fuse a model directory's encoder in place and record it in config.json under `optimization`."""
    import onnxruntime

    model_dir = Path(model_dir)
    fusions = set(fusions)
    cfg = ModelConfig.load(model_dir)
    if cfg.quantization.get("method", "fp32") != "fp32":
        raise ModelError(f"{model_dir} is already quantized ({cfg.quantization['method']}): fuse the fp32 graph, "
                         "then quantize (the optimizer's patterns do not match through quantized MatMuls)")
    if cfg.optimization.get("fusions"):
        raise ModelError(f"{model_dir} is already optimized ({', '.join(cfg.optimization['fusions'])})")
    filename = cfg.files.get("encoder", "encoder.onnx")
    model, record = fuse_encoder(model_dir / filename, fusions, cfg.encoder.n_heads, cfg.encoder.d_model)
    replace_encoder(model_dir, filename, model, prefix=".optimize-")
    del model
    record.update({"tool": "onnxruntime.transformers.optimizer (model_type conformer, opt_level 0)",
                   "onnxruntime_version": onnxruntime.__version__})
    ModelConfig(**{**cfg.__dict__, "optimization": record}).save_sized(model_dir)
    return record


def ort_fused_counts(path: Path, level: str = "extended") -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime's own optimizer makes of `path` at session creation
    (`basic`, `extended` or `all`; `all` adds hardware-specific layouts)."""
    import onnx
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[level]
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        return op_counts(onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False))
