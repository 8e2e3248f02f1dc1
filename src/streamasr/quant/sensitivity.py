"""Measured per-layer quantization sensitivity on real speech (`streamasr analyze-sensitivity`).

`int4-mixed` keeps the layers that int4 hurts most at int8. Which layers those are is measured, not guessed:
for each group of MatMuls (a conformer layer, the subsampling projection, the joint's encoder projection;
or each MatMul alone with `granularity="matmul"`), the fp32 encoder is run with only that group's weights
replaced by their int4 quantize-dequantize image, streaming real speech, and its outputs are compared with
the fp32 encoder's over every chunk. The streaming run matters: the caches carry a layer's error into later
chunks, which a one-shot measurement on isolated activations would miss. Groups are ranked by the error of
the joint's input (the encoder output's joint projection, the last continuous quantity before decoding), so
the joint's own encoder projection is ranked on the same scale as the conformer layers; the encoder output's
error is reported beside it.

The quantize-dequantize image is made by the same functions ONNX Runtime's `MatMulNBitsQuantizer` uses for
its RTN and k-quant algorithms (`onnxruntime.quantization.neural_compressor.weight_only`), so the weights are
exactly those the real int4 graph holds (a test checks it against the quantized graph). Each candidate
graph is the unmodified fp32 encoder with its weights overridden at session creation
(`SessionOptions.add_initializer`), so nothing is rewritten on disk. What is not simulated: the int8
quantization of activations that `accuracy_level=4` adds inside the kernel, which is the same for every
layer's choice.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from streamasr.errors import ModelError
from streamasr.quant.compare import encoder_error, run_recording, token_agreement
from streamasr.quant.graph import constant_weight_matmuls
from streamasr.runtime import Model
from streamasr.runtime.backend import session_options

SIMULATED_METHODS = ("int4-kquant", "int4-rtn")
GRANULARITIES = ("layer", "matmul")
_LAYER = re.compile(r"^/(layers\.\d+)/")


@dataclass
class GroupSensitivity:
    """The encoder-output error when only `group` is quantized (everything else fp32)."""

    group: str
    matmuls: list[str]
    params: int  # weight elements in the group
    weight_rel_err: float  # ||W - Q(W)|| / ||W|| over the group
    joint_rel: float  # joint input (encoded_proj): mean over chunks of ||ref - q|| / ||ref||; the ranking
    mean_rel: float  # encoder output: mean over chunks of ||ref - q|| / ||ref||
    cosine_mean: float
    cosine_min: float
    max_abs: float
    token_agreement: float  # against the fp32 transcripts
    rank: int = 0  # 1 = most sensitive


@dataclass
class SensitivityReport:
    model_dir: str
    method: str
    block_size: int
    granularity: str
    latency_ms: int
    audio: list[str]
    audio_seconds: float
    groups: list[GroupSensitivity] = field(default_factory=list)

    def ranked(self) -> list[GroupSensitivity]:
        return sorted(self.groups, key=lambda g: g.rank)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load(path: Path) -> "SensitivityReport":
        try:
            raw = json.loads(Path(path).read_text())
            groups = [GroupSensitivity(**g) for g in raw.pop("groups")]
            return SensitivityReport(**raw, groups=groups)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"cannot read sensitivity table {path}: {exc}") from exc


def group_name(matmul: str, granularity: str) -> str:
    """`/layers.7/att/q/MatMul` -> `layers.7` (layer) or itself without the op suffix (matmul)."""
    if granularity == "matmul":
        return matmul.strip("/").removesuffix("/MatMul")
    m = _LAYER.match(matmul)
    return m.group(1) if m else matmul.strip("/").split("/")[0]


def fake_quantize(weight: np.ndarray, method: str, block_size: int) -> np.ndarray:
    """The (K, N) weight as the int4 graph will hold it, dequantized back to float32.

    MatMulNBits quantizes blocks of `block_size` consecutive input rows (K) of each output column, padding K
    with zeros to a whole number of blocks, asymmetric (a scale and a zero point per block). A MatMul with an
    odd number of blocks, which `quantize.py` hands to ORT's C++ round-to-nearest quantizer instead (its
    block range always includes 0), is approximated by the Python algorithm here."""
    from onnxruntime.quantization.neural_compressor import weight_only as wo

    k, n = weight.shape
    blocks = math.ceil(k / block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float32)
    padded[:k] = weight
    if method == "int4-kquant":
        q, scale, zp = wo.quant_tensor_k_quant_cpu(padded.T, 4, block_size)
    elif method == "int4-rtn":
        q, scale, zp = wo.quant_tensor(padded.T, 4, block_size, "asym", "uint", 1.0)
    else:
        raise ModelError(f"sensitivity analysis simulates {', '.join(SIMULATED_METHODS)}, not {method}")
    deq = (scale * (q - zp.astype(np.float64))).astype(np.float32).reshape(n, -1)
    return np.ascontiguousarray(deq[:, :k].T)


class _EncoderWeights:
    """The fp32 encoder graph's constant-weight MatMuls: names, weight initializers, lazily read weights."""

    def __init__(self, path: Path):
        import onnx


        self.path = path
        graph = onnx.load(str(path), load_external_data=False)
        if any(n.op_type in ("MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul") for n in graph.graph.node):
            raise ModelError(f"{path} is already quantized; analyze the fp32 conversion")
        self._inits = {i.name: i for i in graph.graph.initializer}
        nodes = {n.name: n for n in graph.graph.node}
        self.matmuls = constant_weight_matmuls(graph)
        self.weight_of = {m: nodes[m].input[1] for m in self.matmuls}

    def params(self, matmul: str) -> int:
        return int(np.prod(self._inits[self.weight_of[matmul]].dims))

    def read(self, matmul: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self._inits[self.weight_of[matmul]], base_dir=str(self.path.parent))


def analyze(model_dir: Path, audio: dict[str, np.ndarray], latency_ms: int | None = None,
            method: str = "int4-kquant", block_size: int = 32, granularity: str = "layer",
            threads: int | None = None, progress: Callable[[Iterable], Iterable] | None = None) -> SensitivityReport:
    """Quantize one group at a time and stream `audio` through; the table ranks groups by output error."""
    import onnxruntime as ort

    if granularity not in GRANULARITIES:
        raise ModelError(f"granularity must be one of {', '.join(GRANULARITIES)}")
    if method not in SIMULATED_METHODS:
        raise ModelError(f"sensitivity analysis simulates {', '.join(SIMULATED_METHODS)}, not {method}")
    if not audio:
        raise ModelError("sensitivity analysis needs audio")
    model_dir = Path(model_dir)
    model = Model.load_dir(model_dir, threads=threads)
    if model.config.quantization.get("method", "fp32") != "fp32":
        raise ModelError(f"{model_dir} is already quantized; analyze the fp32 conversion")
    latency = latency_ms if latency_ms is not None else model.config.encoder.default_latency_ms
    model.config.encoder.mode(latency)
    path = model_dir / model.config.files.get("encoder", "encoder.onnx")
    weights = _EncoderWeights(path)
    groups: dict[str, list[str]] = {}
    for m in weights.matmuls:
        groups.setdefault(group_name(m, granularity), []).append(m)

    reference = {name: run_recording(model, s, latency, nemo_compat=False) for name, s in audio.items()}
    report = SensitivityReport(str(model_dir), method, block_size, granularity, latency, list(audio),
                               round(sum(len(s) for s in audio.values()) / model.sample_rate, 2))
    items = list(groups.items())
    for group, members in (progress(items) if progress else items):
        opts = session_options(threads)
        keep_alive, diff2, norm2 = [], 0.0, 0.0
        for m in members:
            w = weights.read(m)
            q = fake_quantize(w, method, block_size)
            diff2 += float(np.sum((w.astype(np.float64) - q) ** 2))
            norm2 += float(np.sum(w.astype(np.float64) ** 2))
            value = ort.OrtValue.ortvalue_from_numpy(q)
            keep_alive.append(value)  # the session reads it at creation; keep it alive until then
            opts.add_initializer(weights.weight_of[m], value)
        variant = model.with_backend(model.backend.with_encoder(path, opts, ["CPUExecutionProvider"]))
        ref_chunks, q_chunks, ref_proj, q_proj, dist, ref_tokens = [], [], [], [], 0.0, 0
        for name, samples in audio.items():
            ref_result, ref_enc, ref_p = (reference[name].result, reference[name].encodings,
                                          reference[name].projections)
            run = run_recording(variant, samples, latency, nemo_compat=False)
            result, enc, proj = run.result, run.encodings, run.projections
            ref_chunks += ref_enc
            q_chunks += enc
            ref_proj += ref_p
            q_proj += proj
            dist += (1 - token_agreement(ref_result.token_ids, result.token_ids)) * len(ref_result.token_ids)
            ref_tokens += len(ref_result.token_ids)
        err = encoder_error(ref_chunks, q_chunks)
        report.groups.append(GroupSensitivity(
            group, members, sum(weights.params(m) for m in members), math.sqrt(diff2 / max(norm2, 1e-30)),
            encoder_error(ref_proj, q_proj).mean_rel, err.mean_rel, err.cosine_mean, err.cosine_min, err.max_abs,
            1 - dist / ref_tokens if ref_tokens else 1.0))
    for rank, g in enumerate(sorted(report.groups, key=lambda g: -g.joint_rel), 1):
        g.rank = rank
    return report


def choose_kept(report: SensitivityReport, budget: float) -> list[GroupSensitivity]:
    """The most sensitive groups, in rank order, whose weights together stay within `budget` (a fraction of
    all quantizable weight elements) — the groups `int4-mixed` keeps at higher precision."""
    if not 0 <= budget <= 1:
        raise ModelError(f"mixed-precision budget must be a fraction between 0 and 1, not {budget}")
    total = sum(g.params for g in report.groups)
    kept, used = [], 0
    for g in report.ranked():
        if used + g.params <= budget * total:
            kept.append(g)
            used += g.params
    return kept


def format_report(report: SensitivityReport, kept: Iterable[str] = ()) -> str:
    kept = set(kept)
    lines = [f"sensitivity of {report.model_dir}: {report.method} block {report.block_size}, one {report.granularity} "
             f"at a time, {report.latency_ms} ms, {len(report.audio)} utterances ({report.audio_seconds:.1f} s)", "",
             "| rank | group | params (M) | weight rel err | joint-input rel err | enc mean rel err | enc cosine mean | enc cosine min | "
             "enc max abs | token agreement |" + (" kept |" if kept else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if kept else "")]
    for g in report.ranked():
        lines.append(f"| {g.rank} | {g.group} | {g.params / 1e6:.2f} | {g.weight_rel_err:.4f} | {g.joint_rel:.5f} | {g.mean_rel:.5f} | "
                     f"{g.cosine_mean:.6f} | {g.cosine_min:.6f} | {g.max_abs:.3g} | {g.token_agreement:.4f} |"
                     + ((" int8 |" if g.group in kept else " |") if kept else ""))
    return "\n".join(lines)
