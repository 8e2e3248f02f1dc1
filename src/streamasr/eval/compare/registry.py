"""Backend name -> backend module, and the checks every spec passes before any model is loaded."""

from __future__ import annotations

from streamasr.eval.compare import canary, nemo, nemo_chunked, nemotron, parakeet_onnx, qwen3, whisper
from streamasr.eval.compare.backend import LoadedSystem
from streamasr.eval.compare.spec import SpecError, SystemSpec, parse_system

BACKENDS: dict[str, object] = {m.name: m for m in (nemotron, nemo, whisper, *nemo_chunked.BACKENDS,
                                                   *parakeet_onnx.BACKENDS, canary, qwen3)}


def backend(spec: SystemSpec):
    try:
        return BACKENDS[spec.backend]
    except KeyError:
        raise SpecError(f"--system {spec.text}: unknown backend {spec.backend!r}; "
                        f"known: {', '.join(BACKENDS)}") from None


def check(text: str) -> SystemSpec:
    """Parse a --system value and check its backend runs its mode (cheap: loads nothing)."""
    spec = parse_system(text)
    b = backend(spec)
    if spec.mode.kind not in b.modes:
        raise SpecError(f"--system {spec.text}: backend {spec.backend} does not run mode {spec.mode.text!r} "
                        f"({spec.mode.kind}); it runs: {', '.join(b.modes)}")
    return spec


def load_system(text: str, threads: int) -> LoadedSystem:
    spec = check(text)
    return backend(spec).load(spec, threads)
