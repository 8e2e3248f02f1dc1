"""Turn a NeMo model config (the `.nemo` yaml) into streamasr's own description of the model.

Only the cache-aware FastConformer + RNN-T family is supported; anything else is refused here, with the
field that does not fit, rather than producing a graph that silently computes something different.
Defaults follow NeMo's class defaults (e.g. `xscaling` is True when the yaml omits it), so that a
config means exactly what it means to NeMo.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

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
    joint_out: str  # state-dict prefix of the joint's output Linear (found by structure)
    num_prompts: int = 0  # width of the language one-hot of a prompt model; 0 for a model without a prompt
    languages: dict[str, int] = field(default_factory=dict)  # a prompt model's locale -> prompt slot
    default_language: str = ""  # the language a prompt model's streams get unless told otherwise


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ModelError(f"unsupported model: {what} (streamasr supports cache-aware FastConformer RNN-T models)")


#: state-dict entries that are not weights of the inference graph (BatchNorm's counter)
_NOT_WEIGHTS = re.compile(r".*\.num_batches_tracked$")


def joint_output_prefix(state_dict: Mapping[str, Any]) -> str:
    """The joint's output Linear: the last Linear of `joint.joint_net` (a Sequential of activation,
    optional dropout and the Linear, so its index depends on the dropout setting)."""
    found = [int(m.group(1)) for k in state_dict
             if (m := re.fullmatch(r"joint\.joint_net\.(\d+)\.weight", k)) and len(state_dict[k].shape) == 2]
    _require(bool(found), "no RNN-T joint (joint.joint_net.*.weight)")
    _require(len(found) == 1, f"joint.joint_net has {len(found)} Linear layers (one expected)")
    return f"joint.joint_net.{found[0]}"


def language_dictionary(raw: Any) -> dict[str, int]:
    """A checkpoint's `model_defaults.prompt_dictionary` as locale -> slot. A YAML 1.1 loader reads the bare
    key `no` (Norwegian) as false (and `yes`/`on`/`off` likewise), so booleans are turned back into the
    words they were written as."""
    _require(isinstance(raw, Mapping) and bool(raw), "prompt model without a prompt_dictionary in model_defaults")
    out = {}
    for key, slot in raw.items():
        name = {False: "no", True: "yes"}.get(key, key) if isinstance(key, bool) else str(key)
        _require(isinstance(slot, int) and not isinstance(slot, bool), f"prompt_dictionary[{name!r}]={slot!r}")
        out[name] = int(slot)
    return out


def _prompt(cfg: dict[str, Any], state_dict: Mapping[str, Any], d_model: int) -> tuple[int, dict[str, int], str]:
    """(num_prompts, languages, default language) of a prompt model (NeMo's `PromptStreamingMixin`: the encoder
    output concatenated with a one-hot language vector, through Linear-ReLU-Linear, before the joint); zeros for a
    model without one. Only that exact shape is accepted."""
    keys = sorted(k for k in state_dict if k.startswith("prompt_kernel."))
    defaults = cfg.get("model_defaults") or {}
    if not keys:
        _require(not defaults.get("initialize_prompt_feature", False),
                 "model_defaults.initialize_prompt_feature=true but the checkpoint has no prompt_kernel weights")
        return 0, {}, ""
    expected = ["prompt_kernel.0.bias", "prompt_kernel.0.weight", "prompt_kernel.2.bias", "prompt_kernel.2.weight"]
    _require(keys == expected, f"prompt_kernel with parameters {', '.join(keys)} (Linear-ReLU-Linear expected)")
    w1, w2 = state_dict["prompt_kernel.0.weight"], state_dict["prompt_kernel.2.weight"]
    num_prompts = int(w1.shape[1]) - d_model
    _require(num_prompts > 0 and tuple(w2.shape) == (d_model, int(w1.shape[0])),
             f"prompt_kernel shapes {tuple(w1.shape)}, {tuple(w2.shape)} for d_model {d_model}")
    languages = language_dictionary(defaults.get("prompt_dictionary"))
    bad = sorted(k for k, v in languages.items() if not 0 <= v < num_prompts)
    _require(not bad, f"prompt_dictionary slots outside 0..{num_prompts - 1} ({', '.join(bad)})")
    # NeMo's streaming pipeline defaults a prompt model to en-US; a dictionary without it starts at its first key
    default = "en-US" if "en-US" in languages else next(iter(languages))
    return num_prompts, languages, default


class ReadTracker(dict):
    """A state dict that remembers which entries were read: building the graphs' modules from it shows
    which weights the converted model uses (`unused_weights`)."""

    def __init__(self, state_dict: Mapping[str, Any]):
        super().__init__(state_dict)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def unused_weights(state_dict: Mapping[str, Any], used: set[str]) -> list[str]:
    """State-dict entries no graph reads: the converter refuses a checkpoint with any, since a layer left out
    computes something other than the checkpoint (the front end's window and filterbank go to frontend.npz)."""
    return sorted(k for k in state_dict if k not in used and not k.startswith("preprocessor.")
                  and not _NOT_WEIGHTS.fullmatch(k))


def parse_architecture(cfg: dict[str, Any], state_dict: Mapping[str, Any]) -> Architecture:
    """Validate a NeMo config against its weights (only their shapes are read) and derive the geometry,
    including every trained latency mode."""
    target = str(cfg.get("target", cfg.get("_target_", "")))
    _require("ctc_models" not in target, f"model class {target}")
    _require("hybrid" not in target.lower(), f"model class {target} (hybrid RNN-T/CTC)")
    joint_out = joint_output_prefix(state_dict)
    vocab_size = int(state_dict[joint_out + ".weight"].shape[0]) - 1
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
        default_latency_ms=_default_latency(modes),
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
    _require(dec.get("normalization_mode") in (None, "None", "null"),
             f"decoder.normalization_mode={dec.get('normalization_mode')} (a normalised prediction LSTM)")
    lstm_layers = sum(1 for k in state_dict if re.fullmatch(r"decoder\.prediction\.dec_rnn\.lstm\.weight_ih_l\d+", k))
    _require(lstm_layers == decoder.pred_layers,
             f"decoder.prednet.pred_rnn_layers={decoder.pred_layers} but the weights hold {lstm_layers} LSTM layers")
    _require(str(jointnet.get("activation", "relu")).lower() == "relu", f"joint activation {jointnet.get('activation')}")
    num_prompts, languages, default_language = _prompt(cfg, state_dict, d_model)
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
        joint_out=joint_out,
        num_prompts=num_prompts,
        languages=languages,
        default_language=default_language,
    )


def _default_latency(modes: list[LatencyMode]) -> int:
    """NeMo's default mode is the first listed context. Where that is the slowest (the English model lists
    [70,13] first) a live recognizer would start at a second of delay, so 560 ms, the paper's operating
    point, is the default when trained."""
    first = modes[0].latency_ms
    if first == max(m.latency_ms for m in modes) and any(m.latency_ms == 560 for m in modes):
        return 560
    return first
