"""Exact rewrites of an encoder graph into fewer kernels.

An encoder step runs more than a thousand kernels on a few rows of activations, so each kernel's fixed cost
(a dispatch over the thread pool, an output buffer, a wake-up of the pool's threads) is a large share of the
step. These rewrites merge kernels without changing the arithmetic beyond float rounding, for the ONNX Runtime
contrib operators that do two things in one pass:

- `fuse_skip_layer_norm`: a residual `Add` feeding a `LayerNormalization` becomes one
  `SkipLayerNormalization`, which also returns the sum for the residual path (ONNX Runtime's session optimizer
  fuses this pattern only when nothing else reads the sum, and in a Conformer layer the next residual does).
- `fold_matmul_bias`: a `MatMulNBits` followed by the `Add` of a constant bias vector becomes one
  `MatMulNBits` with that bias as its own input, added as the kernel writes its output.
"""

from __future__ import annotations

from collections import Counter

MS_DOMAIN = "com.microsoft"
#: MatMulNBits' optional inputs before `bias`: zero_points (3) and g_idx (4)
_BIAS_INPUT = 5


def _uses(graph) -> Counter:
    """How many times each value is read (graph outputs included)."""
    uses: Counter = Counter(name for node in graph.node for name in node.input if name)
    uses.update(o.name for o in graph.output)
    return uses


def _attribute(node, name: str, default):
    from onnx import helper

    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default


def _ensure_ms_opset(model) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        entry = model.opset_import.add()
        entry.domain, entry.version = MS_DOMAIN, 1


def fuse_skip_layer_norm(model) -> int:
    """Replace each Add of two activations that feeds a last-axis LayerNormalization by one
    SkipLayerNormalization, in place; returns how many were fused.

    The fused node takes the Add's inputs and the norm's scale and bias, and writes the norm's output and,
    when anything else reads it, the sum (its fourth output). It takes the Add's place in the node list, so
    every reader of the sum still comes after it."""
    from onnx import helper

    graph = model.graph
    inits = {i.name for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    uses = _uses(graph)
    replaced: dict[int, object] = {}  # id(Add) -> fused node
    dropped = set()
    for norm in graph.node:
        if norm.op_type != "LayerNormalization" or len(norm.input) < 3 or len([o for o in norm.output if o]) != 1:
            continue
        add = producers.get(norm.input[0])
        if add is None or add.op_type != "Add" or id(add) in replaced or any(i in inits for i in add.input):
            continue
        if _attribute(norm, "axis", -1) != -1 or _attribute(norm, "stash_type", 1) != 1:
            continue
        total = add.output[0]
        outputs = [norm.output[0]] + (["", "", total] if uses[total] > 1 else [])
        fused = helper.make_node("SkipLayerNormalization", [add.input[0], add.input[1], norm.input[1], norm.input[2]],
                                 outputs, name=(norm.name or norm.output[0]) + "/SkipLayerNorm", domain=MS_DOMAIN,
                                 epsilon=_attribute(norm, "epsilon", 1e-5))
        replaced[id(add)] = fused
        dropped.add(id(norm))
    if not replaced:
        return 0
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    _ensure_ms_opset(model)
    return len(replaced)


def fold_matmul_bias(model) -> int:
    """Fold each constant bias `Add` into the `MatMulNBits` before it, in place; returns how many were folded.

    Only an Add of a float32 initializer of shape (N,) to a MatMulNBits output that nothing else reads is
    folded; every other node is left as it is."""
    from onnx import TensorProto

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    uses = _uses(graph)
    folded = []
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        for product, bias in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            matmul = producers.get(product)
            if matmul is None or matmul.op_type != "MatMulNBits" or uses[product] != 1 or bias not in inits:
                continue
            if len(matmul.input) > _BIAS_INPUT and matmul.input[_BIAS_INPUT]:
                continue
            n = _attribute(matmul, "N", None)
            if list(inits[bias].dims) != [n] or inits[bias].data_type != TensorProto.FLOAT:
                continue
            inputs = list(matmul.input) + [""] * (_BIAS_INPUT - len(matmul.input))
            del matmul.input[:]
            matmul.input.extend([*inputs[:_BIAS_INPUT], bias])
            matmul.output[0] = add.output[0]
            folded.append(add)
            break
    for add in folded:
        graph.node.remove(add)
    return len(folded)
