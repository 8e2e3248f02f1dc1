"""The weight floor of an encoder step: its weight matrix products alone, timed.

One stream at 80 or 160 ms multiplies one or two rows of activations by every weight matrix of the encoder,
so a step cannot be faster than ONNX Runtime's kernels read those weights. This builds a graph of only the
encoder's weight products (every `MatMulNBits`, and every `MatMul` by a 2-D initializer, with the same
weights, shapes, block size and accuracy level; each fed by a graph input of its own width, so none waits
for another) and times it for the rows one stream's step has in each latency mode. Audio per step divided
by that time is the RTFx bound weight traffic sets; `bench speed --floor` prints it beside the measured RTFx.

The graph is built in memory and refers to the model's weight files where they are (ONNX Runtime reads
them from the model's folder), so nothing is copied or written; weights embedded in an older graph are
carried in the floor graph itself.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from streamasr.model_config import ModelConfig
from streamasr.quant.graph import constant_operand_rank
from streamasr.runtime.backend import loading_sessions, session_options

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class Floor:
    latency_ms: int
    rows: int  # encoder frames per step for one stream
    kernels: int  # weight products in the floor graph
    step_ms: float  # median time of the floor graph for `rows` rows
    bound_rtfx: float  # step audio / step_ms


def _is_weight_product(node, inits: dict) -> bool:
    if node.domain == MS_DOMAIN and node.op_type == "MatMulNBits":
        return True
    return constant_operand_rank(node, inits) == 2


def _inner_width(node, inits: dict) -> int:
    if node.op_type == "MatMulNBits":
        return next(a.i for a in node.attribute if a.name == "K")
    return int(inits[node.input[1]].dims[0])


def floor_graph(encoder: Path) -> tuple[onnx.ModelProto, dict[str, int], int]:
    """The floor graph of `encoder` (its weight files referred to, not loaded), the input name -> width map,
    and how many weight products it holds."""
    encoder = Path(encoder)
    model = onnx.load(str(encoder), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    products = [n for n in model.graph.node if _is_weight_product(n, inits)]
    if not products:
        raise ValueError(f"{encoder} has no weight products (MatMulNBits or MatMul by an initializer)")
    widths: dict[str, int] = {}
    nodes, used, outputs = [], [], []
    for i, node in enumerate(products):
        width = _inner_width(node, inits)
        source = f"x{width}"
        widths[source] = width
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[0] = source
        del copy.output[:]
        copy.output.append(f"y{i}")
        nodes.append(copy)
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
        used.extend(name for name in node.input[1:] if name and name in inits)
    tensors = [inits[name] for name in dict.fromkeys(used)]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["rows", width]) for name, width in widths.items()]
    graph = helper.make_graph(nodes, "weight_floor", inputs, outputs, tensors)
    floor = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return floor, widths, len(products)


def floor_session(encoder: Path, threads: int) -> tuple[ort.InferenceSession, dict[str, int], int]:
    """An ONNX Runtime session of the floor graph of `encoder`, with the step's own session options."""
    floor, widths, kernels = floor_graph(encoder)
    options = session_options(threads)
    # a graph given as bytes reads its external weights from this folder: the model's own
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(Path(encoder).parent))
    with loading_sessions():  # packed as the encoder's own weights are (heap, page size)
        session = ort.InferenceSession(floor.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, widths, kernels


def time_floor(session: ort.InferenceSession, widths: dict[str, int], rows: int, runs: int = 20,
               warmup: int = 3) -> float:
    """Median seconds of one run of the floor graph for `rows` rows of random activations."""
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal((rows, width)).astype(np.float32) for name, width in widths.items()}
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def weight_floor(directory: Path, latencies: list[int], threads: int, runs: int = 20) -> list[Floor]:
    """The weight floor of one stream's encoder step in each latency mode of the model in `directory`."""
    directory = Path(directory)
    config = ModelConfig.load(directory)
    encoder = directory / config.files.get("encoder", "encoder.onnx")
    session, widths, kernels = floor_session(encoder, threads)
    out = []
    for latency in latencies:
        rows = config.encoder.mode(latency).right_context + 1
        seconds = time_floor(session, widths, rows, runs=runs)
        out.append(Floor(latency, rows, kernels, 1e3 * seconds, rows * config.frame_seconds / seconds))
    return out


def format_floor(label: str, floors: list[Floor], measured: dict[int, float]) -> str:
    """A table of each mode's floor, its RTFx bound and the share of it the measured RTFx reaches."""
    lines = [f"weight floor of {label} (its {floors[0].kernels} weight products alone, one stream's rows per step)",
             "", "| latency | rows | floor ms/step | RTFx bound | measured RTFx | share of bound |",
             "|---|---|---|---|---|---|"]
    for f in floors:
        got = measured.get(f.latency_ms)
        share = f"{100 * got / f.bound_rtfx:.0f} %" if got else "-"
        lines.append(f"| {f.latency_ms} ms | {f.rows} | {f.step_ms:.2f} | {f.bound_rtfx:.2f} | "
                     f"{'-' if got is None else f'{got:.2f}'} | {share} |")
    return "\n".join(lines)
