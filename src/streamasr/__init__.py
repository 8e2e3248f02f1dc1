"""streamasr: real-time streaming speech recognition on CPU with ONNX Runtime.

Runtime imports need only numpy and onnxruntime; conversion (`streamasr.convert`) needs torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from streamasr.errors import AudioError, ModelError, StreamASRError  # noqa: E402
from streamasr.model_store import resolve_model
from streamasr.runtime import Model, Result, Stream  # noqa: E402


def load(model: str = "nvidia/nemotron-speech-streaming-en-0.6b", threads: int | None = None) -> Model:
    """Load a model directory, a `.nemo` file or a Hugging Face repo id (converted once into the cache)."""
    return Model.load_dir(resolve_model(model), threads=threads)


__all__ = ["load", "Model", "Stream", "Result", "StreamASRError", "AudioError", "ModelError", "__version__"]
