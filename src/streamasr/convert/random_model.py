"""Random-weight models with the Nemotron Speech Streaming architecture, at any size.

The real checkpoints cannot be downloaded on our machines, so tests and speed benchmarks run on models
built here. A NeMo config is generated for a named size, a SentencePiece tokenizer is trained locally,
weights are drawn at random, and then made *speech-like*, because a naive random model is degenerate:
log-mel sits near -15, so random first-layer filters see a near-constant input and the encoder output
barely changes over time, and a random joint emits one token ten times per frame. We therefore
zero-mean the first conv filters, centre and scale the joint's encoder projection on the encoder's
variation over real speech, and tune the blank bias until greedy decoding emits a few tenths of a token
per frame. `speech_like_report` measures the result so that tests can assert it.
"""

from __future__ import annotations

import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from streamasr.convert.nemo_file import RANDOM_MARKER, write_nemo
from streamasr.convert.reference_features import nemo_window_and_filterbank
from streamasr.errors import ModelError
from streamasr.speech import bundled_speech

NEMOTRON_EN = "nemotron-speech-streaming-en-0.6b"
RANDOM_PREFIX = "random:"
#: bisection steps of the blank-row scale (each a greedy decode of the tuning speech)
BLANK_TUNING_STEPS = 14
#: a random prompt model's language columns, relative to the unit scale of its encoder columns' output
PROMPT_LANGUAGE_SCALE = 0.12
#: encoder frames from a stream's start that the joint's calibration leaves out (the start transient)
START_FRAMES = 40
#: share of the start transient's energy whose directions the joint's encoder projection ignores
TRANSIENT_ENERGY = 0.98
#: length of the random label histories that the prediction projection is fitted on
PRED_HISTORY = 64


@dataclass(frozen=True)
class ArchSpec:
    """The knobs that differ between the full model and our reduced test copies."""

    n_layers: int = 24
    d_model: int = 1024
    n_heads: int = 8
    subsampling_channels: int = 256
    pred_hidden: int = 640
    joint_hidden: int = 640
    vocab_size: int = 1024
    att_context_size: tuple[tuple[int, int], ...] = ((70, 13), (70, 6), (70, 1), (70, 0))
    conv_kernel: int = 9
    n_mels: int = 128
    xscaling: bool = False
    pred_layers: int = 2
    joint_dropout: bool = True  # a Dropout in joint_net moves the output Linear from index 1 to 2
    conv_norm: str = "layer_norm"  # or "batch_norm"
    untie_biases: bool = True
    # a multilingual prompt model (NeMo's EncDecRNNTBPEModelWithPrompt): one-hot width and locale -> slot
    num_prompts: int = 0
    languages: tuple[tuple[str, int], ...] = ()


#: the prompt dictionary of Nemotron 3.5 ASR Streaming (locale -> slot; 128 slots, `auto` 101)
NEMOTRON_35_LANGUAGES: tuple[tuple[str, int], ...] = tuple(
    (key, slot) for slot, keys in enumerate([
        "en-US en", "en-GB enGB", "es-ES esES", "es-US es", "zh-CN zh-ZH", "zh-TW", "hi-IN hi hi-HI", "ar-AR ar",
        "fr-FR fr", "de-DE de", "ja-JP ja-JA", "ru-RU ru", "pt-BR", "pt-PT pt", "ko-KR ko ko-KO", "it-IT it",
        "nl-NL nl", "pl-PL pl", "tr-TR tr", "uk-UA uk", "ro-RO ro", "el-GR el", "cs-CZ cs", "hu-HU hu", "sv-SE sv",
        "da-DK da", "fi-FI fi", "no-NO no", "sk-SK sk", "hr-HR hr", "bg-BG bg", "lt-LT lt", "th-TH", "vi-VN",
        "id-ID", "ms-MY", "bn-IN", "ur-PK", "fa-IR", "ta-IN", "te-IN", "mr-IN", "gu-IN", "kn-IN", "ml-IN", "si-LK",
        "ne-NP", "km-KH", "sw-KE", "am-ET", "ha-NG", "zu-ZA", "yo-NG", "ig-NG", "af-ZA", "rw-RW", "so-SO", "ny-MW",
        "ln-CD", "or-KE", "et-EE et", "lv-LV lv", "sl-SI sl", "", "he-IL", "ku-TR", "az-AZ", "ka-GE", "hy-AM",
        "uz-UZ", "tg-TJ", "ky-KG", "", "", "", "", "", "", "", "", "qu-PE", "ay-BO", "gn-PY", "nah-MX",
        "", "", "", "", "", "", "", "", "", "", "", "", "mi-NZ", "haw-US", "sm-WS", "to-TO", "fr-CA", "auto",
        "mt-MT", "nb-NO nb", "nn-NO nn"])
    for key in keys.split())
#: a few of them, for the reduced test models (Norwegian's bare `no` included: YAML 1.1 reads it as false)
TEST_LANGUAGES = tuple((k, v) for k, v in NEMOTRON_35_LANGUAGES
                       if k in ("en-US", "en", "es-ES", "fr-FR", "de-DE", "ja-JP", "no-NO", "no", "auto"))
NEMOTRON_35 = "nemotron-3.5-asr-streaming-0.6b"
CONTEXTS_35 = ((56, 3), (56, 0), (56, 6), (56, 13))

ARCHITECTURES: dict[str, ArchSpec] = {
    NEMOTRON_EN: ArchSpec(),
    NEMOTRON_35: ArchSpec(vocab_size=13087, att_context_size=CONTEXTS_35, num_prompts=128,
                          languages=NEMOTRON_35_LANGUAGES),
    # reduced copies for parity tests: different depth, width, heads and vocabulary
    "tiny-a": ArchSpec(n_layers=2, d_model=256, n_heads=4, subsampling_channels=64, pred_hidden=128,
                       joint_hidden=128, vocab_size=256),
    "tiny-b": ArchSpec(n_layers=3, d_model=192, n_heads=2, subsampling_channels=32, pred_hidden=96,
                       joint_hidden=112, vocab_size=128, xscaling=True),
    # the other options of the family: no joint dropout, one LSTM layer, batch norm, tied position biases
    "tiny-c": ArchSpec(n_layers=2, d_model=128, n_heads=2, subsampling_channels=48, pred_hidden=64,
                       joint_hidden=80, vocab_size=160, pred_layers=1, joint_dropout=False, conv_norm="batch_norm",
                       untie_biases=False, att_context_size=((48, 7), (48, 2), (48, 0))),
    # reduced multilingual prompt models, configured unlike each other and unlike the English ones
    "tiny-ml-a": ArchSpec(n_layers=2, d_model=192, n_heads=4, subsampling_channels=32, pred_hidden=96,
                          joint_hidden=96, vocab_size=192, att_context_size=CONTEXTS_35, num_prompts=128,
                          languages=TEST_LANGUAGES),
    "tiny-ml-b": ArchSpec(n_layers=3, d_model=128, n_heads=2, subsampling_channels=48, pred_hidden=80,
                          joint_hidden=64, vocab_size=224, att_context_size=((28, 3), (28, 0), (28, 6), (28, 13)),
                          xscaling=True, pred_layers=1, joint_dropout=False, conv_norm="batch_norm",
                          untie_biases=False, num_prompts=112, languages=TEST_LANGUAGES),
}


def nemo_class(spec: ArchSpec) -> str:
    """The NeMo model class of an architecture (a prompt model is `EncDecRNNTBPEModelWithPrompt`)."""
    if spec.num_prompts:
        return "nemo.collections.asr.models.rnnt_bpe_models_prompt.EncDecRNNTBPEModelWithPrompt"
    return "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel"


def nemo_config(spec: ArchSpec, tokenizer_dir: str) -> dict[str, Any]:
    """A NeMo config with the Nemotron streaming architecture (and NeMo's prompt model's extras)."""
    defaults: dict[str, Any] = {"enc_hidden": spec.d_model, "pred_hidden": spec.pred_hidden,
                                "joint_hidden": spec.joint_hidden}
    if spec.num_prompts:
        defaults.update(num_prompts=spec.num_prompts, initialize_prompt_feature=True,
                        prompt_dictionary=dict(spec.languages))
    return {
        RANDOM_MARKER: True,
        "sample_rate": 16000,
        "target": nemo_class(spec),
        "model_defaults": defaults,
        "tokenizer": {"dir": tokenizer_dir, "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000, "normalize": "NA", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": spec.n_mels, "n_fft": 512, "log": True, "frame_splicing": 1,
            "dither": 1.0e-05, "pad_to": 0, "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": spec.n_mels, "feat_out": -1, "n_layers": spec.n_layers, "d_model": spec.d_model,
            "subsampling": "dw_striding", "subsampling_factor": 8,
            "subsampling_conv_channels": spec.subsampling_channels, "causal_downsampling": True,
            "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": spec.n_heads,
            "att_context_size": [list(c) for c in spec.att_context_size], "att_context_style": "chunked_limited",
            "xscaling": spec.xscaling, "untie_biases": spec.untie_biases, "pos_emb_max_len": 5000,
            "conv_kernel_size": spec.conv_kernel, "conv_norm_type": spec.conv_norm, "conv_context_size": "causal",
            "use_bias": False, "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
            "random_state_sampling": False, "blank_as_pad": True,
            "prednet": {"pred_hidden": spec.pred_hidden, "pred_rnn_layers": spec.pred_layers, "t_max": None,
                        "dropout": 0.2},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None, "preserve_memory": False,
            "fuse_loss_wer": False, "fused_batch_size": -1,
            "jointnet": {"joint_hidden": spec.joint_hidden, "activation": "relu",
                         "dropout": 0.2 if spec.joint_dropout else 0.0},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
    }


def train_tokenizer(out_dir: Path, vocab_size: int, seed: int = 0, symbols: tuple[str, ...] = ()) -> Path:
    """Train a SentencePiece BPE tokenizer of exactly `vocab_size` pieces; writes tokenizer.model + vocab.txt.

    The text is English-looking words generated from a syllable inventory (enough distinct words for
    large vocabularies) plus punctuation, so that NeMo's punctuation handling has something to do.
    `symbols` become whole pieces (a multilingual model's language tags, `<de-DE>`).
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "w", "th", "st", "ch", "sh", "pr"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
    codas = ["", "n", "r", "s", "t", "l", "nd", "ng", "st", "ck"]
    syllables = [o + v + c for o in onsets for v in vowels for c in codas]
    n_words = max(6000, 3 * vocab_size)  # a large vocabulary needs as many distinct merges in the text
    words = ["".join(rng.choice(syllables, size=rng.integers(1, 5))) for _ in range(n_words)]
    lines = []
    for _ in range(max(4000, n_words)):
        sent = " ".join(rng.choice(words, size=rng.integers(4, 14)))
        lines.append(sent.capitalize() + str(rng.choice([".", ",", "?", "!"])))
    text = io.BytesIO("\n".join(lines).encode())
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.getvalue().decode().splitlines()), model_writer=model,
                                   vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
                                   bos_id=-1, eos_id=-1, unk_id=0, hard_vocab_limit=True, num_threads=1,
                                   minloglevel=2, user_defined_symbols=list(symbols))
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    (out_dir / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))
    (out_dir / "tokenizer.vocab").write_text(
        "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())))
    return out_dir


def random_state_dict(spec: ArchSpec, seed: int = 0) -> dict[str, Any]:
    """A NeMo-compatible state dict with random weights (no NeMo needed), keys and shapes as NeMo's."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def lin(out: int, inp: int, *extra: int) -> torch.Tensor:
        return torch.randn((out, inp, *extra), generator=g) / math.sqrt(inp * (math.prod(extra) if extra else 1))

    def norm(n: int, prefix: str, sd: dict) -> None:
        sd[prefix + ".weight"] = 1.0 + 0.1 * torch.randn(n, generator=g)
        sd[prefix + ".bias"] = 0.1 * torch.randn(n, generator=g)

    d, c, v = spec.d_model, spec.subsampling_channels, spec.vocab_size
    sd: dict[str, Any] = {}

    window, fb = nemo_window_and_filterbank(spec.n_mels)
    sd["preprocessor.featurizer.window"] = torch.from_numpy(window)
    sd["preprocessor.featurizer.fb"] = torch.from_numpy(fb).unsqueeze(0)
    p = "encoder.pre_encode."
    sd[p + "conv.0.weight"], sd[p + "conv.0.bias"] = lin(c, 1, 3, 3), 0.1 * torch.randn(c, generator=g)
    for i in (2, 5):
        sd[f"{p}conv.{i}.weight"], sd[f"{p}conv.{i}.bias"] = lin(c, 1, 3, 3), 0.1 * torch.randn(c, generator=g)
        sd[f"{p}conv.{i + 1}.weight"], sd[f"{p}conv.{i + 1}.bias"] = lin(c, c, 1, 1), 0.1 * torch.randn(c, generator=g)
    freq = spec.n_mels
    for _ in range(3):
        freq = freq // 2 + 1
    sd[p + "out.weight"], sd[p + "out.bias"] = lin(d, c * freq), 0.1 * torch.randn(d, generator=g)
    dk = d // spec.n_heads
    for i in range(spec.n_layers):
        q = f"encoder.layers.{i}."
        for ff in ("feed_forward1", "feed_forward2"):
            norm(d, q + "norm_" + ff, sd)
            sd[q + ff + ".linear1.weight"] = lin(4 * d, d)
            sd[q + ff + ".linear2.weight"] = lin(d, 4 * d)
        norm(d, q + "norm_conv", sd)
        sd[q + "conv.pointwise_conv1.weight"] = lin(2 * d, d, 1)
        sd[q + "conv.depthwise_conv.weight"] = lin(d, 1, spec.conv_kernel)
        norm(d, q + "conv.batch_norm", sd)
        sd[q + "conv.pointwise_conv2.weight"] = lin(d, d, 1)
        norm(d, q + "norm_self_att", sd)
        sd[q + "self_attn.pos_bias_u"] = 0.1 * torch.randn(spec.n_heads, dk, generator=g)
        sd[q + "self_attn.pos_bias_v"] = 0.1 * torch.randn(spec.n_heads, dk, generator=g)
        for name in ("q", "k", "v", "out", "pos"):
            sd[q + f"self_attn.linear_{name}.weight"] = lin(d, d)
        norm(d, q + "norm_out", sd)
    if not spec.untie_biases:  # one pair shared by all layers, which NeMo's state dict lists under every layer
        u, w = 0.1 * torch.randn(spec.n_heads, dk, generator=g), 0.1 * torch.randn(spec.n_heads, dk, generator=g)
        for i in range(spec.n_layers):
            sd[f"encoder.layers.{i}.self_attn.pos_bias_u"] = u
            sd[f"encoder.layers.{i}.self_attn.pos_bias_v"] = w
    if spec.conv_norm == "batch_norm":
        for i in range(spec.n_layers):
            q = f"encoder.layers.{i}.conv.batch_norm."
            sd[q + "running_mean"] = 0.1 * torch.randn(d, generator=g)
            sd[q + "running_var"] = 1.0 + 0.2 * torch.rand(d, generator=g)
            sd[q + "num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)
    h = spec.pred_hidden
    sd["decoder.prediction.embed.weight"] = torch.randn(v + 1, h, generator=g)
    sd["decoder.prediction.embed.weight"][v] = 0.0
    for layer in range(spec.pred_layers):
        for kind in ("ih", "hh"):
            sd[f"decoder.prediction.dec_rnn.lstm.weight_{kind}_l{layer}"] = lin(4 * h, h)
            sd[f"decoder.prediction.dec_rnn.lstm.bias_{kind}_l{layer}"] = 0.1 * torch.randn(4 * h, generator=g)
    j = spec.joint_hidden
    sd["joint.pred.weight"], sd["joint.pred.bias"] = lin(j, h), 0.1 * torch.randn(j, generator=g)
    sd["joint.enc.weight"], sd["joint.enc.bias"] = lin(j, d), 0.1 * torch.randn(j, generator=g)
    out = f"joint.joint_net.{2 if spec.joint_dropout else 1}"
    sd[out + ".weight"], sd[out + ".bias"] = lin(v + 1, j), torch.zeros(v + 1)
    if spec.num_prompts:
        # the language columns drawn at a fraction of the scale of the encoder part's output, so that the
        # language shifts the joint's input enough to change tokens, while the audio still decides them
        w1 = lin(2 * d, d + spec.num_prompts)
        w1[:, d:] = PROMPT_LANGUAGE_SCALE * torch.randn(2 * d, spec.num_prompts, generator=g)
        sd["prompt_kernel.0.weight"], sd["prompt_kernel.0.bias"] = w1, 0.1 * torch.randn(2 * d, generator=g)
        sd["prompt_kernel.2.weight"], sd["prompt_kernel.2.bias"] = lin(d, 2 * d), 0.1 * torch.randn(d, generator=g)
    return sd


@dataclass
class SpeechLikeReport:
    tokens_per_frame: float
    distinct_tokens: int
    max_repeat_run: int
    blank_scale: float  # weight of the blank row (x 1/joint_hidden on every hidden unit)


#: streams a full-size model is tuned on: long enough that the attention cache fills (70 frames, 5.6 s) and
#: the encoder's output settles, which is what any real stream sees after its first seconds
TUNING_STREAMS = 2


def long_tuning_streams() -> list[np.ndarray]:
    """The bundled clips, end to end, as TUNING_STREAMS streams of equal length (about 23 s each)."""
    whole = np.concatenate(bundled_speech())
    return [np.ascontiguousarray(part) for part in np.array_split(whole, TUNING_STREAMS)]


def make_speech_like(
    state_dict: dict[str, Any],
    nemo_cfg: dict[str, Any],
    speech: Iterable[np.ndarray],
    target_tokens_per_frame: float = 0.3,
    seed: int = 0,
    pred_scale: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> SpeechLikeReport:
    """Adjust a random state dict in place so that greedy decoding of real speech looks like speech output.

    Also perturbs the parameters NeMo initialises to constants (LayerNorm affine, position biases), so
    that parity tests exercise them. `progress` is told each step (the whole takes tens of seconds).
    """
    import torch

    report = progress or (lambda step: None)

    g = torch.Generator().manual_seed(seed + 1)
    for key, t in state_dict.items():
        if key.endswith("pos_bias_u") or key.endswith("pos_bias_v"):
            if float(t.abs().max()) == 0.0:
                state_dict[key] = 0.1 * torch.randn(t.shape, generator=g)
        elif (".norm_" in key or "batch_norm" in key) and key.endswith(".weight") and bool((t == 1).all()):
            state_dict[key] = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        elif (".norm_" in key or "batch_norm" in key) and key.endswith(".bias") and bool((t == 0).all()):
            state_dict[key] = 0.1 * torch.randn(t.shape, generator=g)
    w0 = state_dict["encoder.pre_encode.conv.0.weight"]
    state_dict["encoder.pre_encode.conv.0.weight"] = (w0 - w0.mean(dim=(2, 3), keepdim=True)) * 0.05

    from streamasr.convert.pipeline_reference import TorchReference

    speech = list(speech)
    ref = TorchReference.from_state_dict(nemo_cfg, state_dict)
    # latency modes see the audio differently (80 ms has no look-ahead): tune on the lowest and the default
    enc_cfg = ref.arch.encoder
    modes = sorted({enc_cfg.latency_modes[0].latency_ms, enc_cfg.default_latency_ms})
    # a prompt model is tuned over several languages, so that every language (not only one) decodes like speech
    slots = sorted(set(ref.arch.languages.values()))[:8] or [None]
    jobs = [(x, latency, slots[(i + j) % len(slots)]) for i, x in enumerate(speech) for j, latency in enumerate(modes)]
    encoded = []  # list of (T, D)
    for i, (x, latency, slot) in enumerate(jobs):
        report(f"encoding tuning speech ({i + 1}/{len(jobs)})")
        encoded.append(ref.encode(x, latency, slot))
    # A random encoder's output is a large constant plus a small audio-dependent part, and the constant only
    # builds up as the stream starts (the zero caches: a causal conv's step response, spread over the next
    # frames by attention), so the first ~2 s follow one audio-independent trajectory that dwarfs the audio's
    # variation. Statistics over whole clips then describe that start, not speech: the joint sees a fixed
    # start (the same tokens whatever the audio) and then a near-constant input (no tokens). Calibrate on the
    # steady part instead, and remove the few directions along which the start transient moves.
    steady = torch.cat([e[START_FRAMES:] for e in encoded])
    if steady.shape[0] < 16:  # short tuning clips: their later halves
        steady = torch.cat([e[e.shape[0] // 2:] for e in encoded])
    mu = steady.mean(dim=0)
    trajectory = []
    for latency in modes:
        runs = [e for e, (_, lat, _) in zip(encoded, jobs) if lat == latency]
        for t in range(min(START_FRAMES, max(e.shape[0] for e in runs))):
            trajectory.append(torch.stack([e[t] for e in runs if e.shape[0] > t]).mean(dim=0) - mu)
    _, sv, vt = torch.linalg.svd(torch.stack(trajectory), full_matrices=False)
    energy = (sv ** 2).cumsum(0) / (sv ** 2).sum().clamp_min(1e-12)
    k = min(int((energy < TRANSIENT_ENERGY).sum()) + 1, mu.shape[0] // 8)
    keep = torch.eye(mu.shape[0]) - vt[:k].t() @ vt[:k]
    w = state_dict["joint.enc.weight"] @ keep
    proj = (steady - mu) @ w.t()
    std = proj.std(dim=0).clamp_min(1e-6)
    # centre the encoder projection on its variation over time and give it unit scale, so the joint
    # reacts to what changes in the audio rather than to a constant offset
    state_dict["joint.enc.weight"] = w / std[:, None]
    state_dict["joint.enc.bias"] = -(mu @ w.t()) / std
    report("fitting the joint")
    # the prediction side: fit its projection (least squares over the labels) so that having just emitted
    # label k pushes the joint's hidden state against k's output row. Audio then chooses the label, and
    # the emitted label no longer repeats max_symbols times on a frame: the RNN-T dynamic of a label
    # history that already explains the current frame.
    ref = TorchReference.from_state_dict(nemo_cfg, state_dict)
    out = ref.arch.joint_out
    blank = state_dict[out + ".bias"].shape[0] - 1
    dec = ref.arch.decoder
    zeros = np.zeros((dec.pred_layers, 1, dec.pred_hidden), dtype=np.float32)
    # the LSTM's outputs along random label histories from the primed state (not only one label after it: a
    # fit on those alone extrapolates, and after a few labels the projection grew to 2-3x its fitted size and
    # favoured blank on every frame, a state that never left since the state only moves on labels)
    pred = ref.backend.prediction
    with torch.no_grad():
        # primed as the decoder is: the blank id (a zero embedding) from a zero state
        y0, (h0, c0) = pred.lstm(torch.zeros(1, 1, dec.pred_hidden), (torch.from_numpy(zeros),) * 2)
        n_seq = -(-max(blank, 2 * (dec.pred_hidden + 1)) // PRED_HISTORY)
        labels = torch.randint(0, blank, (n_seq, PRED_HISTORY), generator=g)
        state = (h0.expand(-1, n_seq, -1).contiguous(), c0.expand(-1, n_seq, -1).contiguous())
        y, _ = pred.lstm(pred.embed[labels], state)
    # against the label rows as they will be (zero mean): a push with a common mode would raise or lower every
    # hidden unit, and so the blank row's sum, by label (some labels' histories then favour blank everywhere)
    w_out = state_dict[out + ".weight"][:blank]
    w_out = w_out - w_out.mean(dim=1, keepdim=True)
    push = -pred_scale * w_out / w_out.norm(dim=1, keepdim=True) * math.sqrt(w_out.shape[1])
    feats = torch.cat([y.reshape(-1, dec.pred_hidden), y0[0]])
    target = torch.cat([push[labels.reshape(-1)], torch.zeros(1, push.shape[1])])  # primed: no push
    g1 = torch.cat([feats, torch.ones(feats.shape[0], 1)], dim=1)
    sol = torch.linalg.lstsq(g1, target).solution  # (P+1, J)
    state_dict["joint.pred.weight"] = sol[:-1].t().contiguous()
    state_dict["joint.pred.bias"] = sol[-1].contiguous()
    # the output layer: label rows with zero mean (the ReLU output's common mode then favours no label)
    # and a blank row proportional to the sum of the hidden activations, so that "blank" means "no label
    # stands out" whatever the recording level; the blank row's scale sets the token rate
    w_out = state_dict[out + ".weight"].clone()
    w_out[:blank] -= w_out[:blank].mean(dim=1, keepdim=True)
    w_out[blank] = 1.0 / w_out.shape[1]
    state_dict[out + ".weight"] = w_out
    state_dict[out + ".bias"] = torch.zeros(blank + 1)
    # The token rate is measured where a stream is steady when the tuning streams are long enough to have a
    # steady part: tokens of the start transient would otherwise set the blank weight, and a long stream,
    # steady after its first seconds, would then emit next to nothing (or far too much).
    skip = START_FRAMES if min(e.shape[0] for e in encoded) >= 3 * START_FRAMES else 0
    n_frames = sum(e.shape[0] - skip for e in encoded)
    ref = TorchReference.from_state_dict(nemo_cfg, state_dict)
    blank_row = ref.backend.joint_net.out.weight_t  # (J, V+1), the exported module's copy, tuned in place

    def rate(scale: float) -> tuple[float, list[list[int]]]:
        with torch.no_grad():
            blank_row[:, blank] = scale / w_out.shape[1]
        toks, total = [], 0
        for e in encoded:
            toks.append(ref.greedy(e, from_frame=skip))
            total += len(toks[-1])
            if total > 3 * target_tokens_per_frame * n_frames:  # clearly too many: no need to finish
                return math.inf, toks
        return total / n_frames, toks

    lo, hi = 0.0, 64.0
    for step in range(BLANK_TUNING_STEPS):
        report(f"tuning blank bias ({step + 1}/{BLANK_TUNING_STEPS})")
        mid = (lo + hi) / 2
        if rate(mid)[0] > target_tokens_per_frame:
            lo = mid
        else:
            hi = mid
    state_dict[out + ".weight"][blank] = hi / w_out.shape[1]
    r, toks = rate(hi)
    flat = [t for seq in toks for t in seq]
    run, best = 0, 0
    for a, b2 in zip(flat, flat[1:]):
        run = run + 1 if a == b2 else 0
        best = max(best, run + 1)
    return SpeechLikeReport(tokens_per_frame=r, distinct_tokens=len(set(flat)), max_repeat_run=best, blank_scale=hi)


def build_random_nemo(name: str, path: Path, seed: int = 0, speech: list[np.ndarray] | None = None,
                      nemo_model_factory=None, progress: Callable[[str], None] | None = None) -> SpeechLikeReport:
    """Write a speech-like random-weight `.nemo` for a named architecture.

    Without `nemo_model_factory` the archive is written by our own writer (no NeMo needed); with it (a
    callable cfg -> NeMo model), NeMo builds the model, loads the weights and saves the archive itself.
    `progress` is told each step ("training tokenizer", "tuning blank bias (3/14)", ...): the build takes
    about a minute, which a command line should not spend silent; library callers pass none.
    """
    report = progress or (lambda step: None)
    if name.startswith(RANDOM_PREFIX):
        name = name[len(RANDOM_PREFIX):]
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    spec = ARCHITECTURES[name]
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        report("training tokenizer")
        tags = tuple(f"<{k}>" for k, _ in spec.languages if "-" in k)  # what `auto` mode emits
        tok_dir = train_tokenizer(Path(tmp) / "tokenizer", spec.vocab_size, seed=seed, symbols=tags)
        cfg = nemo_config(spec, str(tok_dir))
        report("drawing random weights")
        sd = random_state_dict(spec, seed=seed)
        if speech is None:
            speech = bundled_speech(max_seconds=10.0) if spec.d_model < 512 else long_tuning_streams()
        result = make_speech_like(sd, cfg, speech, seed=seed, progress=progress)
        report("writing .nemo")
        if nemo_model_factory is not None:
            model = nemo_model_factory(cfg)
            model.load_state_dict(sd, strict=True)
            model.save_to(str(path))
        else:
            # the layout NeMo's save_to produces: every tokenizer file an artifact, referenced as nemo:<name>
            names = ("tokenizer.model", "vocab.txt", "tokenizer.vocab")
            cfg = dict(cfg, tokenizer={"dir": "tokenizer", "type": "bpe", "model_path": "nemo:tokenizer.model",
                                       "vocab_path": "nemo:vocab.txt", "spe_tokenizer_vocab": "nemo:tokenizer.vocab"})
            artifacts = {name: (tok_dir / name).read_bytes() for name in names}
            write_nemo(path, cfg, {k: v.contiguous() for k, v in sd.items()}, artifacts)
    return result
