"""Writing a graph of a model directory: the graph in NAME.onnx, its weights in NAME.onnx.data beside it.

Every graph keeps its weights in a side file, whatever its size. ONNX Runtime maps such a file into memory
instead of copying the weights into its heap, and pages of a read-only file mapping can be handed back to
the system once the session no longer reads them (`runtime/mapped_weights.py`): the unpacked scales and zero
points of the int4 weights, which ONNX Runtime keeps referenced after packing them, stop costing resident
memory. Embedded weights would be copied into anonymous memory and stay there. Tensors under 1 KiB stay in
the graph file.
"""

from __future__ import annotations

from pathlib import Path

#: tensors smaller than this stay inside the .onnx file
INLINE_BYTES = 1024


def data_file(path: Path) -> Path:
    """The side file holding the weights of graph `path`."""
    return path.with_name(path.name + ".data")


def save_graph(model, path: Path) -> None:
    """Write `model` as `path` with its weights in `data_file(path)`, replacing both files if present."""
    import onnx

    path = Path(path)
    for stale in (path, data_file(path)):
        stale.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_file(path).name, size_threshold=INLINE_BYTES)
    # onnx creates the weights file readable by its owner only; give it the graph file's permissions (the
    # umask's), so that a service account can read a model converted by another user
    if data_file(path).exists():
        data_file(path).chmod(path.stat().st_mode & 0o777)
