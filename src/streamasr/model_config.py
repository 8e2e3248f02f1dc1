"""The model directory's `config.json`: everything the runtime needs besides the ONNX graphs.

Written by the converter, read by the runtime. Keeping it a plain JSON file (no pickles, no yaml)
means a model directory loads with numpy + onnxruntime alone and can be inspected by hand.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamasr.errors import ModelError

#: Bumped whenever the directory layout or the graphs' inputs/outputs change incompatibly.
FORMAT_VERSION = 4  # 2: attention caches in the heads layout; 3: ring buffers, one input per layer (see cache_shapes);
#                     4: a step's new keys, values and conv states stacked along one axis, fused kernels
#: the oldest format this runtime reads: a format 3 graph has the same inputs and its outputs reshape to 4's
MIN_FORMAT_VERSION = 3
CONFIG_NAME = "config.json"


def as_latency_ms(value: object) -> int:
    """A latency mode as an int: callers pass what they parsed or were given ("160" from a query string or a
    config file, 160.0 from JSON), and comparing those with the modes' ints would call an existing mode
    unknown. Anything that is not a whole number of milliseconds is refused with a message saying so."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:ms)?\s*", value)
        if match:
            return int(match.group(1))
    raise ModelError(f"latency_ms must be an integer number of milliseconds (e.g. 160), not {value!r}")


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

    def mode(self, latency_ms: int | str) -> LatencyMode:
        latency_ms = as_latency_ms(latency_ms)
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
    # a prompt model's languages (the checkpoint's prompt dictionary, locale -> prompt slot); {} without a prompt
    languages: dict[str, int] = field(default_factory=dict)
    default_language: str = ""

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
        """The config a parsed config.json describes; a `ConfigProblem` naming the field that is missing or
        of the wrong type (a hand-edited or foreign file must not surface as a TypeError at the first step)."""
        if not isinstance(d, dict):
            raise ConfigProblem(f"it holds {_json_kind(d)}, not a JSON object")
        # top-level keys this version does not know are metadata of another streamasr: ignored, as before
        config = _checked(ModelConfig, {k: v for k, v in d.items() if k in _FIELDS[ModelConfig]}, "")
        _check_values(config)
        return config

    @staticmethod
    def load(directory: Path) -> "ModelConfig":
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise ModelError(f"{directory} is not a streamasr model directory (no {CONFIG_NAME})")
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ModelError(f"{path} is malformed: it holds {_json_kind(raw)}, not a JSON object; "
                             "it was not written by streamasr")
        version = raw.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ModelError(f"{path} has no format_version; it was not written by streamasr")
        if version > FORMAT_VERSION:
            raise ModelError(
                f"{directory} uses model format {version}, newer than this streamasr supports "
                f"({FORMAT_VERSION}); upgrade streamasr or re-convert the model"
            )
        if version < MIN_FORMAT_VERSION:
            raise ModelError(
                f"{directory} uses model format {version}, older than this streamasr reads ({MIN_FORMAT_VERSION}): "
                "its encoder graph has other cache inputs; re-convert it with `streamasr convert`"
            )
        try:
            return ModelConfig.from_dict(raw)
        except ConfigProblem as exc:
            raise ModelError(f"{path} is malformed: {exc}; re-convert the model") from exc


class ConfigProblem(ValueError):
    """What is wrong with a parsed config.json, phrased for the user (`ModelConfig.load` adds the path)."""


_FIELDS: dict[type, dict[str, dataclasses.Field]] = {
    cls: {f.name: f for f in dataclasses.fields(cls)}
    for cls in (FrontendConfig, LatencyMode, EncoderConfig, DecoderConfig, ModelConfig)
}
#: integer fields that must be at least 1 (sizes and rates); every other integer must be at least 0
_POSITIVE = {"sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "latency_ms", "n_layers", "d_model",
             "n_heads", "subsampling_factor", "max_step_frames", "default_latency_ms", "vocab_size", "pred_hidden",
             "pred_layers", "joint_hidden", "max_symbols_per_frame", "format_version"}


def _json_kind(value: Any) -> str:
    """How a JSON value reads in a message: `a list`, `a string ('x')`."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    kind = kinds.get(type(value), type(value).__name__)
    return kind if isinstance(value, (dict, list)) else f"{kind} ({value!r})"


def _checked(cls: type, value: Any, where: str) -> Any:
    """`cls(**value)` with each field's JSON type checked against the dataclass's annotations."""
    if not isinstance(value, dict):
        raise ConfigProblem(f"{where} must be an object, not {_json_kind(value)}")
    fields = _FIELDS[cls]
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigProblem(f"{where or 'the top level'} has unknown field(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigProblem(f"{path} is missing")
            continue
        kwargs[name] = _checked_value(hints[name], value[name], path)
    return cls(**kwargs)


def _checked_value(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _FIELDS:
        return _checked(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigProblem(f"{path} must be true or false, not {_json_kind(value)}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigProblem(f"{path} must be an integer, not {_json_kind(value)}")
        if value < (1 if path.rsplit(".", 1)[-1] in _POSITIVE else 0):
            raise ConfigProblem(f"{path} must be {'positive' if path.rsplit('.', 1)[-1] in _POSITIVE else 'at least 0'}"
                                f", not {value}")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigProblem(f"{path} must be a number, not {_json_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigProblem(f"{path} must be a string, not {_json_kind(value)}")
        return value
    if origin is tuple:  # tuple[X, ...]
        if not isinstance(value, list):
            raise ConfigProblem(f"{path} must be a list, not {_json_kind(value)}")
        return tuple(_checked_value(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigProblem(f"{path} must be an object, not {_json_kind(value)}")
        if args and args[1] is not Any:
            return {k: _checked_value(args[1], v, f"{path}.{k}") for k, v in value.items()}
        return dict(value)
    raise TypeError(f"no JSON check for {tp!r} ({path})")  # a field added without teaching this function


def _check_values(config: ModelConfig) -> None:
    """What the types cannot say: the geometry the graphs and caches are built from must be consistent."""
    enc = config.encoder
    if enc.d_model % enc.n_heads:
        raise ConfigProblem(f"encoder.d_model ({enc.d_model}) is not a multiple of encoder.n_heads ({enc.n_heads})")
    if not enc.latency_modes:
        raise ConfigProblem("encoder.latency_modes is empty")
    if config.languages and config.default_language not in config.languages:
        raise ConfigProblem(f"default_language {config.default_language!r} is not one of languages")
    if not config.languages and config.default_language:
        raise ConfigProblem(f"default_language {config.default_language!r} for a model without languages")
    modes = [m.latency_ms for m in enc.latency_modes]
    if enc.default_latency_ms not in modes:
        raise ConfigProblem(f"encoder.default_latency_ms ({enc.default_latency_ms}) is not one of "
                            f"encoder.latency_modes ({', '.join(map(str, modes))})")
