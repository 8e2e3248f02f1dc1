"""Rewriting a converted directory's encoder graph in place, shared by quantization and fusion.

Both hand the graph to one of ONNX Runtime's tools (the quantizers, the transformers optimizer), which log
per node and draw progress on stdout, and both replace `encoder.onnx` (and its external data) of a model
directory: the new graph is written into a temporary folder inside the directory and then moved over the
old files, so an interrupted run leaves the old graph.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from streamasr.convert.onnx_file import data_file, save_graph


def replace_encoder(model_dir: Path, filename: str, model, prefix: str) -> None:
    """Write `model` over model_dir/filename and its weights file (removed when the new graph has no weights
    outside the graph file)."""
    model_dir = Path(model_dir)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=model_dir))
    try:
        save_graph(model, tmp / filename)
        data = data_file(Path(filename)).name
        if (tmp / data).exists():
            os.replace(tmp / data, model_dir / data)
        else:
            (model_dir / data).unlink(missing_ok=True)
        os.replace(tmp / filename, model_dir / filename)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def quiet_tools(names: tuple[str, ...], prefixes: tuple[str, ...] = (), imports: tuple[str, ...] = ()) -> Iterator[None]:
    """Silence ONNX Runtime's tools below ERROR and swallow their stdout; restore everything afterwards.

    `names`: loggers to quiet ("" is the root); `prefixes`: also every existing logger under these;
    `imports`: modules to import first, inside the guard, because some call logging.basicConfig(level=INFO)
    at import time (onnxruntime's matmul_nbits_quantizer does): the root's level and handlers are restored.
    """
    root = logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    for module in imports:
        importlib.import_module(module)
    loggers = [logging.getLogger(n) for n in names]
    if prefixes:
        loggers += [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith(prefixes)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        root.setLevel(root_level)
        root.handlers[:] = root_handlers


def constant_operand_rank(node, inits: dict) -> int | None:
    """The rank of a MatMul's second input when it is an initializer (in `inits`, name -> tensor), else None:
    2 for a weight, another rank for a lookup table such as the per-head position scores."""
    if node.op_type != "MatMul" or node.input[1] not in inits:
        return None
    return len(inits[node.input[1]].dims)


def constant_table_matmuls(model) -> list[str]:
    """MatMul nodes whose second input is a constant of another rank than 2 (the per-head position-score
    table): a product of activations with a lookup table, not a weight; quantizers must leave them alone."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n.name for n in model.graph.node if constant_operand_rank(n, inits) not in (None, 2)]


def constant_weight_matmuls(model) -> list[str]:
    """Names of the MatMul nodes whose second input is a constant 2-D initializer (the quantizable ones)."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n.name for n in model.graph.node if constant_operand_rank(n, inits) == 2]
