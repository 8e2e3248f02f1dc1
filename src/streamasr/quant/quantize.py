"""Weight quantization of a converted model directory's encoder (`streamasr convert --quant Q`).

Only the encoder is quantized: it holds more than 95 % of the weights and all of the per-chunk arithmetic.
The decoder (LSTM prediction network) and the joint stay fp32. Every linear layer of the encoder, the 1x1
pointwise convolutions and the subsampling projection included, is a MatMul with a constant weight in our
export, so every one of them is quantized; MatMuls between two activations (attention scores) are not.

Methods:

- `int8`: the faster of the two int8 forms on the full-size model at 2 threads (see `INT8_DEFAULT`).
- `int8-nbits`: weight-only 8-bit blocks, ONNX Runtime's `MatMulNBits` (bits=8, round to nearest).
- `int8-dynamic`: `quantize_dynamic` per-channel QInt8 weights, activations quantized at run time.
- `int4-rtn`, `int4-hqq`, `int4-kquant`: 4-bit `MatMulNBits` blocks, from ONNX Runtime's
  `MatMulNBitsQuantizer` with its RTN, HQQ and k-quant algorithms.
- `int4-mixed`: int4 k-quant, except the groups (layers, or single MatMuls) that a measured sensitivity
  analysis on real speech ranks most harmful to quantize (`sensitivity.py`), kept at higher precision
  within a budget given as a fraction of the encoder's weights: `int8` (= int8-dynamic, int8 weights and
  activations; the default), `int8-nbits` (8-bit weights with fp32 arithmetic: MatMulNBits bits=8,
  accuracy_level 1), or `fp32`.

fp16 is not offered: ONNX Runtime's CPU provider has no fp16 GEMM on x86 (MLAS implements half-precision
GEMM only for ARM), so an fp16 graph runs with Cast nodes around fp32 kernels, slower than fp32 and no smaller
in memory at run time.

The encoder is rewritten in place: the new graph is written into a temporary folder inside the model
directory and then moved over encoder.onnx (and encoder.onnx.data), so an interrupted run leaves the old one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from streamasr.errors import ModelError
from streamasr.model_config import ModelConfig, directory_size
from streamasr.convert.graph_rewrite import fold_matmul_bias
from streamasr.quant.graph import constant_table_matmuls, constant_weight_matmuls, quiet_tools, replace_encoder
from streamasr.quant.sensitivity import SensitivityReport, analyze, choose_kept
from streamasr.speech import read_speech

BLOCK_SIZES = (16, 32, 64, 128)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
#: `int8` is an alias of the faster int8 form: MatMulInteger's int8 GEMM (VNNI) wins or ties MatMulNBits bits=8
#: at every row count a streaming step has (docs/benchmarks.md, "int8 forms"), so `int8` means int8-dynamic.
INT8_DEFAULT = "int8-dynamic"
FP16_NOTE = ("fp16 is not offered: ONNX Runtime's CPU provider has no x86 fp16 GEMM, so fp16 MatMuls run "
             "through Cast nodes around fp32 kernels (slower than fp32)")


@dataclass(frozen=True)
class _Method:
    bits: int
    algorithm: str  # recorded in config.json
    kind: str  # "nbits" (MatMulNBits) or "dynamic" (quantize_dynamic)
    uses_blocks: bool = True


METHODS: dict[str, _Method] = {
    "int8-nbits": _Method(8, "RTN (MatMulNBits default quantizer)", "nbits"),
    "int8-dynamic": _Method(8, "quantize_dynamic per-channel QInt8", "dynamic", uses_blocks=False),
    "int4-rtn": _Method(4, "RTN", "nbits"),
    "int4-hqq": _Method(4, "HQQ", "nbits"),
    "int4-kquant": _Method(4, "k_quant", "nbits"),
    "int4-mixed": _Method(4, "k_quant, most sensitive groups int8 (quantize_dynamic per-channel QInt8)", "mixed"),
}
#: default share of the encoder's weight elements that int4-mixed keeps at higher precision
MIXED_BUDGET = 0.1
#: what int4-mixed keeps its most sensitive groups at. `int8` = int8-dynamic, the default: int8-nbits
#: (MatMulNBits bits=8 with fp32 activations, accuracy_level 1) has no fast kernel for 8-bit weights with fp32
#: arithmetic, so it is slower for the same fidelity (docs/benchmarks.md).
MIXED_KEPT = ("int8", "int8-dynamic", "int8-nbits", "fp32")
_KEPT_INT8_ACCURACY = 1
#: audio seconds the analysis behind int4-mixed streams when it is not given a sensitivity table
MIXED_ANALYSIS_SECONDS = 60.0


def method_names() -> list[str]:
    return ["int8", *METHODS]


def resolve_method(method: str) -> str:
    """The concrete method behind a name (`int8` is an alias); ModelError for an unknown one."""
    if method == "int8":
        return INT8_DEFAULT
    if method == "fp16":
        raise ModelError(FP16_NOTE)
    if method not in METHODS:
        raise ModelError(f"unknown quantization method {method!r}; choose one of: fp32, {', '.join(method_names())}")
    return method


def _odd_block_matmuls(model, names: list[str], block_size: int) -> list[str]:
    """MatMuls whose weight has an odd number of blocks along K. ORT's RTN/k-quant path
    (neural_compressor.rtn_quantize) packs their 4-bit zero points wrongly and fails on them."""
    import math

    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    return [n for n in names if math.ceil(inits[nodes[n].input[1]].dims[0] / block_size) % 2 == 1]


def _nbits_pass(model, algo, bits: int, block_size: int, accuracy_level: int, exclude: list[str]):
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    quantizer = mnq.MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=False,
                                         accuracy_level=accuracy_level or None, nodes_to_exclude=exclude,
                                         algo_config=algo)
    quantizer.process()
    return quantizer.model.model


def _default_config(bits: int, block_size: int, accuracy_level: int):
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    # ORT's own (C++) blockwise round-to-nearest quantizer, asymmetric (a zero point per block)
    return mnq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False,
                                            accuracy_level=accuracy_level or None, bits=bits)


def _quantize_nbits(model, name: str, block_size: int, accuracy_level: int, exclude: list[str], info: dict):
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    spec = METHODS[name]
    if name in ("int4-rtn", "int4-kquant"):
        algo = mnq.RTNWeightOnlyQuantConfig() if name == "int4-rtn" else mnq.KQuantWeightOnlyQuantConfig()
        candidates = [n for n in constant_weight_matmuls(model) if n not in exclude]
        odd = _odd_block_matmuls(model, candidates, block_size)
        out = _nbits_pass(model, algo, spec.bits, block_size, accuracy_level, exclude + odd)
        if odd:  # second pass: ORT's default round-to-nearest quantizer handles an odd block count
            out = _nbits_pass(out, _default_config(spec.bits, block_size, accuracy_level), spec.bits, block_size,
                              accuracy_level, exclude)
            info["default_rtn_fallback_nodes"] = odd
    elif name == "int4-hqq":
        out = _nbits_pass(model, mnq.HQQWeightOnlyQuantConfig(block_size=block_size, bits=4), spec.bits,
                          block_size, accuracy_level, exclude)
    else:
        out = _nbits_pass(model, _default_config(spec.bits, block_size, accuracy_level), spec.bits, block_size,
                          accuracy_level, exclude)
    _set_accuracy_level(out, accuracy_level)  # HQQ does not write it
    return out


def _set_accuracy_level(model, level: int, bits: int | None = None) -> None:
    """Set accuracy_level on every MatMulNBits node (only those of `bits` bits when given)."""
    import onnx

    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        if bits is not None and next((a.i for a in node.attribute if a.name == "bits"), 4) != bits:
            continue
        for i, attr in enumerate(node.attribute):
            if attr.name == "accuracy_level":
                del node.attribute[i]
                break
        if level:
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))


def _quantize_dynamic(model, name: str, block_size: int, accuracy_level: int, exclude: list[str], info: dict):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = Path(tempfile.mkdtemp(prefix="streamasr-qdyn-"))
    try:
        src, dst = tmp / "in.onnx", tmp / "out.onnx"
        onnx.save_model(model, str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="in.onnx.data", size_threshold=1024)
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude + constant_table_matmuls(model),
                         use_external_data_format=True,
                         # DefaultTensorType: onnx's shape inference cannot type the outputs of contrib ops
                         # (a fused SkipLayerNormalization); every activation here is float32
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
        return onnx.load(str(dst))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _quantize_mixed(model, name: str, block_size: int, accuracy_level: int, exclude: list[str], info: dict):
    """int4 k-quant for every MatMul but `info["kept_nodes"]` (kept at `info["mixed"]["kept_precision"]`)
    and the fp32-excluded ones."""
    keep = list(info["kept_nodes"])
    kept = info["mixed"]["kept_precision"]
    if kept in ("int8", "int8-dynamic") and keep:  # first: quantize_dynamic's shape inference cannot read MatMulNBits
        others = [n for n in constant_weight_matmuls(model) if n not in keep]
        model = _quantize_dynamic(model, "int8-dynamic", block_size, accuracy_level, others, info)
    out = _quantize_nbits(model, "int4-kquant", block_size, accuracy_level, exclude + keep, info)
    if kept == "int8-nbits" and keep:
        out = _nbits_pass(out, _default_config(8, block_size, _KEPT_INT8_ACCURACY), 8, block_size,
                          _KEPT_INT8_ACCURACY, exclude)
        _set_accuracy_level(out, accuracy_level, bits=4)
        _set_accuracy_level(out, _KEPT_INT8_ACCURACY, bits=8)
    return out


_QUANTIZERS: dict[str, Callable] = {"nbits": _quantize_nbits, "dynamic": _quantize_dynamic, "mixed": _quantize_mixed}
_QUANT_OPS = {"MatMulNBits", "DynamicQuantizeMatMul", "MatMulInteger"}


def _quiet():
    """ORT's quantizers log every node at INFO and draw a progress bar on stdout; importing
    matmul_nbits_quantizer even calls logging.basicConfig(level=INFO) on the root logger. Keep the CLI's
    output clean and leave the caller's logging configuration as it was."""
    return quiet_tools(("", "onnxruntime", "onnxruntime.quantization", "neural_compressor"),
                       prefixes=("onnxruntime.quantization.", "neural_compressor."),
                       imports=("onnxruntime.quantization.matmul_nbits_quantizer",))


def _mixed_selection(model_dir: Path, candidates: list[str], block_size: int, sensitivity, budget: float,
                      kept_precision: str, threads: int | None) -> tuple[list[str], dict[str, Any]]:
    """The MatMuls int4-mixed keeps at int8, from a sensitivity table (a path or report; measured now on the
    speech bundled with streamasr when None), and the record of that choice."""
    if sensitivity is None:
        audio = read_speech(total_seconds=MIXED_ANALYSIS_SECONDS)
        report = analyze(model_dir, audio, method="int4-kquant", block_size=block_size, threads=threads)
        source = f"measured during conversion on {len(audio)} utterances of the speech bundled with streamasr"
    elif isinstance(sensitivity, SensitivityReport):
        report, source = sensitivity, "given report"
    else:
        report, source = SensitivityReport.load(Path(sensitivity)), str(sensitivity)
    if report.method != "int4-kquant" or report.block_size != block_size:
        raise ModelError(f"the sensitivity table measured {report.method} block {report.block_size}; int4-mixed "
                         f"here is int4-kquant block {block_size}: analyze with the same settings")
    missing = sorted({m for g in report.groups for m in g.matmuls} - set(candidates))
    if missing:
        raise ModelError(f"the sensitivity table names MatMuls this encoder lacks ({', '.join(missing[:3])}...): "
                         "it was measured on another model")
    kept = choose_kept(report, budget)
    if kept_precision not in MIXED_KEPT:
        raise ModelError(f"int4-mixed keeps layers at {', '.join(MIXED_KEPT)}, not {kept_precision!r}")
    record = {"budget": budget, "kept_precision": kept_precision, "sensitivity_source": source,
              "granularity": report.granularity, "ranked_by": "joint-input mean relative error, one group int4",
              "kept_groups": [{"group": g.group, "rank": g.rank, "params": g.params, "joint_rel": g.joint_rel}
                              for g in kept],
              "kept_params": sum(g.params for g in kept), "total_params": sum(g.params for g in report.groups)}
    return [m for g in kept for m in g.matmuls], record


def check_quant_options(method: str, block_size: int = 32, accuracy_level: int = 4,
                        mixed_budget: float = MIXED_BUDGET, mixed_kept: str = "int8", sensitivity=None) -> None:
    """Every quantization option checked up front (a ModelError naming the bad one), so that `convert
    --quant` fails before a conversion that takes minutes, not after it."""
    spec = METHODS[resolve_method(method)]
    if spec.uses_blocks and block_size not in BLOCK_SIZES:
        raise ModelError(f"block size {block_size} not supported; choose one of {', '.join(map(str, BLOCK_SIZES))}")
    if accuracy_level not in ACCURACY_LEVELS:
        raise ModelError(f"accuracy level {accuracy_level} not supported; choose one of 0 (unset), 1 (fp32), "
                         "2 (fp16), 3 (bf16), 4 (int8 activations)")
    if spec.kind == "mixed":
        if not 0 <= mixed_budget <= 1:
            raise ModelError(f"mixed-precision budget must be a fraction between 0 and 1, not {mixed_budget}")
        if mixed_kept not in MIXED_KEPT:
            raise ModelError(f"int4-mixed keeps layers at {', '.join(MIXED_KEPT)}, not {mixed_kept!r}")
        if isinstance(sensitivity, (str, Path)) and not Path(sensitivity).is_file():
            raise ModelError(f"cannot read sensitivity table {sensitivity}: no such file")


def quantize_model_dir(model_dir, method: str, block_size: int = 32, accuracy_level: int = 4,
                       exclude: list[str] | None = None, sensitivity=None, mixed_budget: float = MIXED_BUDGET,
                       mixed_kept: str = "int8", threads: int | None = None) -> dict[str, Any]:
    """Quantize the encoder of a converted fp32 model directory in place; returns the `quantization` record.

    `exclude`: MatMul node names to keep fp32. `sensitivity` (int4-mixed only): a `SensitivityReport` or the
    path of its JSON (`streamasr analyze-sensitivity`); None measures it now on the bundled speech.
    `mixed_budget`: the fraction of the encoder's weight elements int4-mixed may keep at `mixed_kept`
    (`MIXED_KEPT`).
    Raises ModelError for an unknown method, a bad block size or accuracy level, or a directory that is
    already quantized.
    """
    import onnx
    import onnxruntime


    model_dir = Path(model_dir)
    check_quant_options(method, block_size, accuracy_level, mixed_budget, mixed_kept, sensitivity)
    name = resolve_method(method)
    spec = METHODS[name]
    cfg = ModelConfig.load(model_dir)
    current = cfg.quantization.get("method", "fp32")
    if current != "fp32":
        raise ModelError(f"{model_dir} is already quantized ({current}); quantize an fp32 conversion")
    filename = cfg.files.get("encoder", "encoder.onnx")
    src = model_dir / filename
    if not src.is_file():
        raise ModelError(f"model directory {model_dir} is missing {filename}")

    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    fp32_size = directory_size(model_dir)
    model = onnx.load(str(src))
    candidates = constant_weight_matmuls(model)
    exclude = list(exclude or [])
    unknown = sorted(set(exclude) - set(candidates))
    if unknown:
        raise ModelError(f"cannot exclude {', '.join(unknown)}: not a MatMul with a constant weight in {filename}")
    if spec.kind == "mixed":
        keep, info["mixed"] = _mixed_selection(model_dir, candidates, block_size, sensitivity, mixed_budget,
                                               mixed_kept, threads)
        info["kept_nodes"] = sorted(set(keep) - set(exclude))
    with _quiet():
        quantized = _QUANTIZERS[spec.kind](model, name, block_size, accuracy_level, exclude, info)
    del model
    info["bias_adds_folded"] = fold_matmul_bias(quantized)
    remaining = set(constant_weight_matmuls(quantized))
    n_quant = sum(n.op_type in _QUANT_OPS for n in quantized.graph.node)
    if n_quant == 0:
        raise ModelError(f"{method} quantized no MatMul of {filename}")

    replace_encoder(model_dir, filename, quantized, prefix=".quantize-")
    del quantized

    record: dict[str, Any] = {
        "method": method,
        "resolved_method": name,
        "bits": spec.bits,
        "algorithm": spec.algorithm,
        "operator": {"nbits": "MatMulNBits", "dynamic": "MatMulInteger (+ DynamicQuantizeLinear)",
                     "mixed": "MatMulNBits (4-bit; kept_nodes 8-bit, or MatMulInteger for int8-dynamic, or "
                              "MatMul for fp32)"}[spec.kind],
        "block_size": block_size if spec.uses_blocks else None,
        "accuracy_level": accuracy_level if spec.kind != "dynamic" else None,
        "scope": "encoder (decoder and joint stay fp32)",
        "matmuls_with_constant_weight": len(candidates),
        "matmuls_quantized": n_quant,
        "excluded_nodes": sorted(exclude),
        "left_fp32": sorted(remaining),
        "fp32_size_bytes": fp32_size,
        "onnxruntime_version": onnxruntime.__version__,
        "onnx_version": onnx.__version__,
        "seconds": round(time.perf_counter() - t0, 1),
        **info,
        "fp16": FP16_NOTE,
    }
    ModelConfig(**{**cfg.__dict__, "quantization": record}).save_sized(model_dir)
    return record


def parse_variant(spec: str, default_block: int = 32) -> tuple[str, int]:
    """`int4-kquant` or `int4-kquant:128` -> (method, block size)."""
    method, _, block = spec.partition(":")
    try:
        block_size = int(block) if block else default_block
    except ValueError:
        raise ModelError(f"bad quantization variant {spec!r}: write METHOD or METHOD:BLOCK (e.g. int4-kquant:128)")
    resolve_method(method)
    return method, block_size


def quantized_copy(fp32_dir, method: str, block_size: int = 32, accuracy_level: int = 4, dest=None,
                   **options) -> Path:
    """A quantized copy of an fp32 model directory, made once: `dest` (default: a sibling named after the
    variant) is reused when its config.json records the same variant. `options` go to `quantize_model_dir`."""
    fp32_dir = Path(fp32_dir)
    name = resolve_method(method)
    suffix = name + (f"-b{block_size}" if METHODS[name].uses_blocks else "")
    dest = Path(dest) if dest else fp32_dir.with_name(f"{fp32_dir.name}.{suffix}")
    if (dest / "config.json").is_file():
        q = ModelConfig.load(dest).quantization
        if q.get("resolved_method") == name and q.get("block_size") in (None, block_size) \
                and q.get("accuracy_level") in (None, accuracy_level):
            return dest
        raise ModelError(f"{dest} exists and holds another variant ({q.get('method', 'fp32')}); remove it")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(fp32_dir, tmp)
    try:
        quantize_model_dir(tmp, method, block_size=block_size, accuracy_level=accuracy_level, **options)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, dest)
    return dest
