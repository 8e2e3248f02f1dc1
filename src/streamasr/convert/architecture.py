"""Turn a NeMo model config (the `.nemo` yaml) into streamasr's own description of the model.

Only the cache-aware FastConformer + RNN-T family is supported; anything else is refused here, with the
field that does not fit, rather than producing a graph that silently computes something different.
Defaults follow NeMo's class defaults (e.g. `xscaling` is True when the yaml omits it), so that a
config means exactly what it means to NeMo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streamasr.errors import ModelError
from streamasr.model_config import (
    DecoderConfig,
    EncoderConfig,
    FrontendConfig,
    LatencyMode,
)


@dataclass(frozen=True)
class Architecture:
    frontend: FrontendConfig
    encoder: EncoderConfig
    decoder: DecoderConfig
    feat_in: int
    ff_dim: int
    conv_kernel: int
    subsampling_channels: int
    xscaling: bool
    untie_biases: bool
    conv_norm: str  # "layer_norm" | "batch_norm"


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ModelError(f"unsupported model: {what} (streamasr supports cache-aware FastConformer RNN-T models)")


def parse_architecture(cfg: dict[str, Any], vocab_size: int) -> Architecture:
    """Validate a NeMo config and derive geometry, including every trained latency mode."""
    target = str(cfg.get("target", cfg.get("_target_", "")))
    _require("ctc_models" not in target, f"model class {target}")
    pre = cfg.get("preprocessor") or {}
    enc = cfg.get("encoder") or {}
    dec = cfg.get("decoder") or {}
    joint = cfg.get("joint") or {}
    _require(bool(enc) and bool(dec) and bool(joint), "config lacks encoder/decoder/joint sections")
    _require("ConformerEncoder" in str(enc.get("_target_", "ConformerEncoder")), f"encoder {enc.get('_target_')}")

    sr = int(pre.get("sample_rate", cfg.get("sample_rate", 16000)))
    normalize = str(pre.get("normalize", "per_feature"))
    _require(normalize in ("NA", "None", "none", ""), f"preprocessor.normalize={normalize!r} (needs 'NA')")
    _require(int(pre.get("frame_splicing", 1)) == 1, "preprocessor.frame_splicing != 1")
    _require(str(pre.get("window", "hann")) == "hann", f"preprocessor.window={pre.get('window')}")
    _require(bool(pre.get("log", True)), "preprocessor.log=false")
    _require(str(pre.get("log_zero_guard_type", "add")) == "add", "preprocessor.log_zero_guard_type != add")
    _require(bool(pre.get("exact_pad", False)) is False, "preprocessor.exact_pad=true")
    guard = pre.get("log_zero_guard_value", 2**-24)
    _require(isinstance(guard, (int, float)), f"preprocessor.log_zero_guard_value={guard!r}")
    preemph = pre.get("preemph", 0.97)
    win_length = int(round(float(pre.get("window_size", 0.02)) * sr))
    frontend = FrontendConfig(
        sample_rate=sr,
        n_fft=int(pre.get("n_fft") or 2 ** math.ceil(math.log2(win_length))),
        win_length=win_length,
        hop_length=int(round(float(pre.get("window_stride", 0.01)) * sr)),
        n_mels=int(pre.get("features", 64)),
        preemph=float(preemph) if preemph is not None else 0.0,
        mag_power=float(pre.get("mag_power", 2.0)),
        log_zero_guard=float(guard),
        pad_value=float(pre.get("pad_value", 0.0)),
    )

    _require(str(enc.get("subsampling", "striding")) == "dw_striding", f"encoder.subsampling={enc.get('subsampling')}")
    _require(bool(enc.get("causal_downsampling", False)), "encoder.causal_downsampling=false")
    _require(str(enc.get("self_attention_model", "rel_pos")) == "rel_pos", "self_attention_model != rel_pos")
    _require(str(enc.get("att_context_style", "regular")) == "chunked_limited", "att_context_style != chunked_limited")
    _require(str(enc.get("conv_context_size", "causal")) == "causal" or enc.get("conv_context_size") is None,
             f"conv_context_size={enc.get('conv_context_size')}")
    _require(int(enc.get("feat_out", -1)) == -1, "encoder.feat_out projection")
    _require(int(enc.get("reduction_position", -1) or -1) in (-1,), "encoder time reduction")
    factor = int(enc.get("subsampling_factor", 4))
    _require(factor >= 2 and factor & (factor - 1) == 0, f"subsampling_factor={factor}")
    d_model = int(enc["d_model"])
    channels = int(enc.get("subsampling_conv_channels", -1))
    if channels == -1:
        channels = d_model
    kernel = int(enc.get("conv_kernel_size", 31))
    conv_norm = str(enc.get("conv_norm_type", "batch_norm"))
    _require(conv_norm in ("layer_norm", "batch_norm"), f"conv_norm_type={conv_norm}")

    contexts = enc.get("att_context_size")
    if contexts and not isinstance(contexts[0], (list, tuple)):
        contexts = [contexts]
    _require(bool(contexts), "encoder.att_context_size missing")
    lefts = {int(c[0]) for c in contexts}
    _require(len(lefts) == 1 and min(lefts) > 0, f"att_context_size {contexts}: one positive left context needed")
    left = lefts.pop()
    frame_ms = factor * frontend.hop_length * 1000 // sr
    modes = []
    for c in contexts:
        right = int(c[1])
        _require(right >= 0 and left % (right + 1) == 0, f"att_context_size {c}")
        modes.append(LatencyMode(latency_ms=(right + 1) * frame_ms, right_context=right))
    max_step = max(m.right_context for m in modes) + 1
    pre_cache = factor + 1
    encoder = EncoderConfig(
        n_layers=int(enc["n_layers"]),
        d_model=d_model,
        n_heads=int(enc["n_heads"]),
        subsampling_factor=factor,
        left_context=left,
        conv_cache=kernel - 1,
        pre_encode_cache=pre_cache,
        drop_extra_pre_encoded=1 + (pre_cache - 1) // factor,
        max_step_frames=max_step,
        latency_modes=tuple(sorted(modes, key=lambda m: m.latency_ms)),
        # NeMo's default is the first listed context; the paper's operating point is 560 ms when present.
        default_latency_ms=560 if any(m.latency_ms == 560 for m in modes) else modes[0].latency_ms,
    )
    prednet = dec.get("prednet") or {}
    jointnet = joint.get("jointnet") or {}
    decoding = cfg.get("decoding") or {}
    greedy = decoding.get("greedy") or {}
    max_symbols = greedy.get("max_symbols", greedy.get("max_symbols_per_step", 10))
    if max_symbols is None or int(max_symbols) <= 0:
        max_symbols = 10
    decoder = DecoderConfig(
        vocab_size=vocab_size,
        blank_id=vocab_size,
        pred_hidden=int(prednet.get("pred_hidden", (cfg.get("model_defaults") or {}).get("pred_hidden", 640))),
        pred_layers=int(prednet.get("pred_rnn_layers", 1)),
        joint_hidden=int(jointnet.get("joint_hidden", (cfg.get("model_defaults") or {}).get("joint_hidden", 640))),
        max_symbols_per_frame=int(max_symbols),
    )
    _require(bool(dec.get("blank_as_pad", True)), "decoder.blank_as_pad=false")
    _require(str(jointnet.get("activation", "relu")) == "relu", f"joint activation {jointnet.get('activation')}")
    return Architecture(
        frontend=frontend,
        encoder=encoder,
        decoder=decoder,
        feat_in=int(enc.get("feat_in", frontend.n_mels)),
        ff_dim=int(d_model * float(enc.get("ff_expansion_factor", 4))),
        conv_kernel=kernel,
        subsampling_channels=channels,
        xscaling=bool(enc.get("xscaling", True)),
        untie_biases=bool(enc.get("untie_biases", True)),
        conv_norm=conv_norm,
    )
