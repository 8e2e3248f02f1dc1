"""The model directory's `config.json`: everything the runtime needs besides the ONNX graphs.

Written by the converter, read by the runtime. Keeping it a plain JSON file (no pickles, no yaml)
means a model directory loads with numpy + onnxruntime alone and can be inspected by hand.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamasr.errors import ModelError

#: ONNX graphs larger than this keep their weights in a side file (`NAME.onnx.data`)
EXTERNAL_DATA_THRESHOLD = 512 << 20

#: Bumped whenever the directory layout or the graphs' inputs/outputs change incompatibly.
FORMAT_VERSION = 3  # 2: attention caches in the heads layout; 3: ring buffers, one input per layer (see cache_shapes)
CONFIG_NAME = "config.json"


def directory_size(directory: Path) -> int:
    """Bytes on disk of a model directory's files (what `size_bytes` records)."""
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file())


@dataclass(frozen=True)
class FrontendConfig:
    """NeMo's `AudioToMelSpectrogramPreprocessor` settings (the filterbank and window live in frontend.npz)."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 128
    preemph: float = 0.97
    mag_power: float = 2.0
    log_zero_guard: float = 2.0**-24
    pad_value: float = 0.0


@dataclass(frozen=True)
class LatencyMode:
    """One trained attention context [left, right]; the chunk geometry follows from it."""

    latency_ms: int
    right_context: int


@dataclass(frozen=True)
class EncoderConfig:
    n_layers: int
    d_model: int
    n_heads: int
    subsampling_factor: int
    left_context: int  # attention cache length in encoder frames (70 for Nemotron)
    conv_cache: int  # depthwise conv kernel - 1
    pre_encode_cache: int  # mel frames prepended to every chunk after the first (9)
    drop_extra_pre_encoded: int  # encoder frames dropped after pre-encoding on those chunks (2)
    max_step_frames: int  # largest encoder frames per step the position table covers
    latency_modes: tuple[LatencyMode, ...]
    default_latency_ms: int

    def mode(self, latency_ms: int) -> LatencyMode:
        for m in self.latency_modes:
            if m.latency_ms == latency_ms:
                return m
        known = ", ".join(str(m.latency_ms) for m in self.latency_modes)
        raise ModelError(f"unknown latency mode {latency_ms} ms; this model supports: {known} ms")


def cache_shapes(enc: EncoderConfig, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """Shapes of the encoder's cache inputs for a batch: `k_cache` and `v_cache` are ONE layer's ring of
    projected keys or values (the graph takes one input per layer), `conv_cache` all layers' conv states.

    Keys and values are kept per head as (B, heads, left, d_k), the layout the attention MatMuls read, in
    ring order: a step reads them in place and only its new frames are written (model format 3; directories
    of older formats are refused on load with a message to re-convert).
    """
    dk = enc.d_model // enc.n_heads
    return {
        "k_cache": (batch, enc.n_heads, enc.left_context, dk),
        "v_cache": (batch, enc.n_heads, enc.left_context, dk),
        "conv_cache": (batch, enc.n_layers, enc.conv_cache, enc.d_model),
    }


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int  # without blank
    blank_id: int
    pred_hidden: int
    pred_layers: int
    joint_hidden: int
    max_symbols_per_frame: int = 10


@dataclass(frozen=True)
class ModelConfig:
    model_id: str
    frontend: FrontendConfig
    encoder: EncoderConfig
    decoder: DecoderConfig
    source_sha256: str = ""
    random_weights: bool = False
    streamasr_version: str = ""
    format_version: int = FORMAT_VERSION
    files: dict[str, str] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=lambda: {"method": "fp32"})
    size_bytes: int = 0
    optimization: dict[str, Any] = field(default_factory=dict)  # offline fusions (convert/optimize.py)

    @property
    def frame_seconds(self) -> float:
        """Duration of one encoder frame (subsampling x hop)."""
        return self.encoder.subsampling_factor * self.frontend.hop_length / self.frontend.sample_rate

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, directory: Path) -> None:
        (Path(directory) / CONFIG_NAME).write_text(self.to_json() + "\n")

    def save_sized(self, directory: Path) -> "ModelConfig":
        """Save with `size_bytes` = the directory's size, config.json included; returns the saved config.

        config.json's own length depends on the size it records, so this iterates to the fixed point."""
        config = self
        for _ in range(4):
            config.save(directory)
            size = directory_size(directory)
            if size == config.size_bytes:
                break
            config = dataclasses.replace(config, size_bytes=size)
        return config

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ModelConfig":
        enc = dict(d["encoder"])
        enc["latency_modes"] = tuple(LatencyMode(**m) for m in enc["latency_modes"])
        return ModelConfig(
            model_id=d["model_id"],
            frontend=FrontendConfig(**d["frontend"]),
            encoder=EncoderConfig(**enc),
            decoder=DecoderConfig(**d["decoder"]),
            source_sha256=d.get("source_sha256", ""),
            random_weights=bool(d.get("random_weights", False)),
            streamasr_version=d.get("streamasr_version", ""),
            format_version=int(d["format_version"]),
            files=dict(d.get("files", {})),
            quantization=dict(d.get("quantization", {})),
            size_bytes=int(d.get("size_bytes", 0)),
            optimization=dict(d.get("optimization", {})),
        )

    @staticmethod
    def load(directory: Path) -> "ModelConfig":
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise ModelError(f"{directory} is not a streamasr model directory (no {CONFIG_NAME})")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from exc
        version = raw.get("format_version")
        if not isinstance(version, int):
            raise ModelError(f"{path} has no format_version; it was not written by streamasr")
        if version > FORMAT_VERSION:
            raise ModelError(
                f"{directory} uses model format {version}, newer than this streamasr supports "
                f"({FORMAT_VERSION}); upgrade streamasr or re-convert the model"
            )
        if version < FORMAT_VERSION:
            raise ModelError(
                f"{directory} uses model format {version}, older than this streamasr's ({FORMAT_VERSION}): "
                "its encoder graph has other cache inputs; re-convert it with `streamasr convert`"
            )
        try:
            return ModelConfig.from_dict(raw)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{path} is incomplete or malformed: {exc}") from exc
