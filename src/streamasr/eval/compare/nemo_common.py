"""Loading NeMo checkpoints for the NeMo-based backends: a .nemo file, a hub id, with one clear line offline."""

from __future__ import annotations

import json
from pathlib import Path

from streamasr.errors import ModelError, OfflineError
from streamasr.eval.compare.backend import param_bytes
from streamasr.eval.compare.spec import SpecError
from streamasr.eval.nemo_reference import load_nemo_model
from streamasr.model_store import offline_reason


def require_nemo(backend: str, threads: int) -> None:
    """torch with `threads` threads and NeMo importable, or one line naming the extra."""
    try:
        import nemo.collections.asr  # noqa: F401
        import torch
    except ImportError as exc:
        raise SpecError(f"backend {backend} needs torch and NeMo: pip install torch==2.13.0 "
                        "'streamasr[verify]'") from exc
    torch.set_num_threads(threads)


#: onnx-asr's model folder: its config.json and the model_type it gives a NeMo TDT transducer
ONNX_ASR_CONFIG = "config.json"
ONNX_ASR_TDT = "nemo-conformer-tdt"


def is_onnx_asr_dir(path: Path) -> bool:
    """Whether `path` is an onnx-asr folder of a NeMo TDT model (what `parakeet-tdt-onnx` runs)."""
    cfg = Path(path) / ONNX_ASR_CONFIG
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == ONNX_ASR_TDT
    except (OSError, ValueError):
        return False


def load_checkpoint(source: str, backend: str):
    """A NeMo ASR model from a .nemo file or a hub id (downloaded by NeMo on a connected machine)."""
    path = Path(source).expanduser()
    if path.exists():
        if is_onnx_asr_dir(path):
            raise ModelError(f"backend {backend}: {path} is an onnx-asr folder, which NeMo cannot read; "
                             f"run it as parakeet-tdt-onnx:{path}@batch")
        if not path.is_file() or path.suffix != ".nemo":
            raise ModelError(f"backend {backend}: {path} is not a .nemo checkpoint")
        return load_nemo_model(path)
    why = offline_reason()
    if why:
        raise OfflineError(f"backend {backend}: cannot reach the Hugging Face hub to download {source} ({why}); "
                           "pass a local .nemo file, or random: for speed, size and memory only")
    try:
        return load_nemo_model(source)
    except Exception as exc:
        raise ModelError(f"backend {backend}: cannot load {source} ({type(exc).__name__}: {exc})") from exc


def checkpoint_size(source: str, model) -> int:
    path = Path(source).expanduser()
    return path.stat().st_size if path.is_file() else param_bytes(model)
