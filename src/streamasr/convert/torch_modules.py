"""Our own torch re-implementation of NeMo's cache-aware FastConformer step and RNN-T networks.

These modules exist to be exported to ONNX (and to serve as a fast reference in the converter);
they are built from a NeMo state dict and compute the same function as NeMo's streaming step, but the
graph is shaped for inference rather than training:

* One encoder graph serves every latency mode and both the first and later steps: the pre-encode drop
  (0 on the first step, 2 after) is an input, and because a streaming step's frames always form a single
  attention chunk, the chunked-limited mask reduces to "all valid cached frames + the whole current
  chunk", which does not depend on the mode.
* The attention cache holds projected keys and values (NeMo's holds the layer-normed input and
  re-projects all 70 cached frames every step). The projections have no bias, so this is the same
  function up to float rounding, at a fraction of the arithmetic.
* The attention caches are ring buffers, one graph input per layer, stored per head with frames before d_k
  (B, H, left, d_k), the layout the attention MatMuls read (keys through a transposed MatMul). A step reads
  them in place and returns only its T new keys and values; the caller writes those over the oldest slots
  (from `cache_start`, wrapping). Softmax does not care in which order keys come, so only the two
  order-dependent terms follow the ring: the relative-position scores and the mask, both from each
  slot's age. Nothing cached is shifted or copied in
  the graph, and a stream stepped alone is fed its own arrays.
* Every shape and index a layer needs (the head split, the position scores' index, the depthwise conv's
  views) is computed once per step as a tensor and shared by all layers (`StepShapes`): computed per
  layer, as the exporter writes `x.reshape(b, t, ...)`, this shape plumbing would be a large share of the
  graph's nodes, each a kernel call on a few int64s.
* The relative-position projection `linear_pos(pe(r))` depends only on the relative offset r, so it is
  precomputed for every r a step can use. A step scores its queries against all of them and one
  GatherElements puts each score where its key lies: NeMo's relative shift and the ring order in one index.
* Queries, keys and values come from one projection (one weight read, one kernel), the query part with
  `pos_bias_u` as its bias.
* The 1/sqrt(d_k) attention scale is folded into W_q and the position biases, the feed-forward 0.5 into
  its second linear, and the 1x1 convolutions are matrix multiplications (so that weight quantizers,
  which only look at MatMul, reach them).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from streamasr.convert.architecture import Architecture
from streamasr.model_config import cache_shapes

MASK_VALUE = -10000.0  # NeMo's INF_VAL for masked attention scores (not -inf)
LN_EPS = 1e-5


class StepShapes(NamedTuple):
    """Shapes and indices of one step, shared by all layers (int64 tensors; see the module docstring)."""

    model: torch.Tensor  # (B, T, D)
    qkv_heads: torch.Tensor  # (B, T, 3H, d_k): the fused projection split into heads
    score_index: torch.Tensor  # (B, H, T, left+T): each score's column in the position-score table
    conv_index: torch.Tensor  # (T, K) the depthwise conv's K shifted views


def _reshape(x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Reshape to a shape held in a tensor: exported as one Reshape reading that shared tensor."""
    return torch._reshape_from_tensor(x, shape)


def _t(sd: dict[str, Any], key: str) -> torch.Tensor:
    return sd[key].detach().to(torch.float32).clone()


def _opt(sd: dict[str, Any], key: str) -> torch.Tensor | None:
    return _t(sd, key) if key in sd else None


class Linear(nn.Module):
    """x @ W^T + b with an optional bias; exported as MatMul (+Add)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, scale: float = 1.0):
        super().__init__()
        w = weight.reshape(weight.shape[0], -1) * scale  # 1x1 conv weights (out, in, 1) -> (out, in)
        self.weight_t = nn.Parameter(w.t().contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias * scale, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


class LayerNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.weight.shape[0],), self.weight, self.bias, LN_EPS)


def relative_position_table(d_model: int, r_hi: int, r_lo: int) -> torch.Tensor:
    """Sinusoids for relative positions r_hi, r_hi-1, ..., r_lo, computed as NeMo does (fp32)."""
    positions = torch.arange(r_hi, r_lo - 1, -1, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    pe = torch.zeros(positions.shape[0], d_model)
    pe[:, 0::2] = torch.sin(positions * div_term)
    pe[:, 1::2] = torch.cos(positions * div_term)
    return pe


class PreEncode(nn.Module):
    """Causal depthwise-striding subsampling (NeMo `ConvSubsampling`, dw_striding, causal)."""

    def __init__(self, arch: Architecture, sd: dict[str, Any]):
        super().__init__()
        p = "encoder.pre_encode."
        stages = int(math.log2(arch.encoder.subsampling_factor))
        self.channels = arch.subsampling_channels
        self.conv0_w = nn.Parameter(_t(sd, p + "conv.0.weight"), requires_grad=False)
        self.conv0_b = nn.Parameter(_t(sd, p + "conv.0.bias"), requires_grad=False)
        self.dw_w = nn.ParameterList()
        self.dw_b = nn.ParameterList()
        self.pw_w = nn.ParameterList()
        self.pw_b = nn.ParameterList()
        for s in range(1, stages):
            self.dw_w.append(nn.Parameter(_t(sd, f"{p}conv.{3 * s - 1}.weight"), requires_grad=False))
            self.dw_b.append(nn.Parameter(_t(sd, f"{p}conv.{3 * s - 1}.bias"), requires_grad=False))
            self.pw_w.append(nn.Parameter(_t(sd, f"{p}conv.{3 * s}.weight"), requires_grad=False))
            self.pw_b.append(nn.Parameter(_t(sd, f"{p}conv.{3 * s}.bias"), requires_grad=False))
        self.out = Linear(_t(sd, p + "out.weight"), _opt(sd, p + "out.bias"))

    @staticmethod
    def _causal_pad(x: torch.Tensor) -> torch.Tensor:
        # kernel 3, stride 2: left pad k-1=2, right pad s-1=1, on time and frequency alike
        return F.pad(x, (2, 1, 2, 1))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.unsqueeze(1)  # (B, 1, T, F): conv "height" = time
        x = F.relu(F.conv2d(self._causal_pad(x), self.conv0_w, self.conv0_b, stride=2))
        for dw_w, dw_b, pw_w, pw_b in zip(self.dw_w, self.dw_b, self.pw_w, self.pw_b):
            x = F.conv2d(self._causal_pad(x), dw_w, dw_b, stride=2, groups=self.channels)
            x = F.relu(F.conv2d(x, pw_w, pw_b))
        b, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(b, t, c * f)  # feature index = channel * F' + freq, as NeMo
        return self.out(x)


class FeedForward(nn.Module):
    def __init__(self, sd: dict[str, Any], layer_prefix: str, name: str):
        super().__init__()
        p = f"{layer_prefix}{name}."
        self.norm = LayerNorm(_t(sd, f"{layer_prefix}norm_{name}.weight"), _t(sd, f"{layer_prefix}norm_{name}.bias"))
        self.linear1 = Linear(_t(sd, p + "linear1.weight"), _opt(sd, p + "linear1.bias"))
        # the Macaron half-step residual factor 0.5 folded into the second projection (exact in binary)
        self.linear2 = Linear(_t(sd, p + "linear2.weight"), _opt(sd, p + "linear2.bias"), scale=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.silu(self.linear1(self.norm(x))))


class Attention(nn.Module):
    """Relative-position multi-head attention over [projected K/V cache ; current chunk]."""

    def __init__(self, arch: Architecture, sd: dict[str, Any], layer: int, pe: torch.Tensor):
        super().__init__()
        enc = arch.encoder
        p = f"encoder.layers.{layer}.self_attn."
        self.h = enc.n_heads
        self.dk = enc.d_model // enc.n_heads
        self.left = enc.left_context
        scale = 1.0 / math.sqrt(self.dk)
        d = enc.d_model
        # with untie_biases=false NeMo shares one pair between the layers, and its state dict lists that pair
        # under every layer: the layer's own entries are right either way
        u, v = _t(sd, p + "pos_bias_u").reshape(-1), _t(sd, p + "pos_bias_v").reshape(-1)
        # one projection for queries, keys and values; the query part carries pos_bias_u as its bias, so its
        # output is already q + u (NeMo adds u to the scaled-down query; the scale is folded in)
        zero = torch.zeros(d)
        bq, bk, bv = (_opt(sd, p + f"linear_{n}.bias") for n in "qkv")
        weight = torch.cat([_t(sd, p + "linear_q.weight") * scale, _t(sd, p + "linear_k.weight"),
                            _t(sd, p + "linear_v.weight")])
        bias = torch.cat([((bq if bq is not None else zero) + u) * scale, bk if bk is not None else zero,
                          bv if bv is not None else zero])
        self.qkv = Linear(weight, bias)
        # the position scores use q + v = (q + u) + (v - u)
        self.pos_bias_vu = nn.Parameter(((v - u) * scale).reshape(1, self.h, 1, self.dk), requires_grad=False)
        self.out = Linear(_t(sd, p + "linear_out.weight"), _opt(sd, p + "linear_out.bias"))
        pos = pe @ _t(sd, p + "linear_pos.weight").t()  # (R, D), R relative offsets, descending
        # (H, dk, R): every offset a step can use, in the layout the score MatMul reads
        self.pos_t = nn.Parameter(pos.reshape(-1, self.h, self.dk).permute(1, 2, 0).contiguous(), requires_grad=False)

    def forward(
        self, a: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask_bias: torch.Tensor,
        shapes: StepShapes,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """a (B, T, D); k_cache, v_cache (B, H, left, dk) ring buffers; mask_bias (B, 1, 1, left + T). Returns
        the output and this chunk's new keys and values (B, H, T, dk), which the caller writes into the rings."""
        heads = _reshape(self.qkv(a), shapes.qkv_heads).transpose(1, 2)  # (B, 3H, T, dk)
        qu, k_new, v_new = torch.split(heads, self.h, dim=1)  # each (B, H, T, dk); qu = (q + u), pre-scaled
        # position scores against every relative offset, then one gather puts each where its key lies: the
        # relative shift and the ring order in one index (StepShapes.score_index)
        bd_all = torch.matmul(qu + self.pos_bias_vu, self.pos_t)  # (B, H, T, R)
        bias = torch.gather(bd_all, 3, shapes.score_index) + mask_bias  # (B, H, T, left + T)
        # q.K^T with K stored (frames, dk): ONNX Runtime folds the transpose into the MatMul (FusedMatMul transB)
        scores = torch.cat([torch.matmul(qu, k_cache.transpose(-1, -2)), torch.matmul(qu, k_new.transpose(-1, -2))],
                           dim=-1)
        probs = torch.softmax(scores + bias, dim=-1)
        ctx = torch.matmul(probs[..., : self.left], v_cache) + torch.matmul(probs[..., self.left :], v_new)
        return self.out(_reshape(ctx.transpose(1, 2), shapes.model)), k_new, v_new


class Convolution(nn.Module):
    """Pointwise (as MatMul) -> GLU -> causal depthwise conv with cache -> norm -> SiLU -> pointwise."""

    def __init__(self, arch: Architecture, sd: dict[str, Any], layer: int):
        super().__init__()
        p = f"encoder.layers.{layer}.conv."
        self.d = arch.encoder.d_model
        self.cache = arch.encoder.conv_cache
        self.pw1 = Linear(_t(sd, p + "pointwise_conv1.weight"), _opt(sd, p + "pointwise_conv1.bias"))
        # depthwise taps as (K, D): the step applies them as a weighted sum over K shifted views (see forward)
        self.dw_taps = nn.Parameter(_t(sd, p + "depthwise_conv.weight")[:, 0, :].t().contiguous(), requires_grad=False)
        dw_b = _opt(sd, p + "depthwise_conv.bias")
        self.dw_b = None if dw_b is None else nn.Parameter(dw_b, requires_grad=False)
        nw, nb = _t(sd, p + "batch_norm.weight"), _t(sd, p + "batch_norm.bias")
        if arch.conv_norm == "batch_norm":  # inference BatchNorm is an affine map: fold the statistics
            inv = torch.rsqrt(_t(sd, p + "batch_norm.running_var") + LN_EPS)
            nb = nb - _t(sd, p + "batch_norm.running_mean") * inv * nw
            nw = nw * inv
            self.norm = None
            self.bn_scale = nn.Parameter(nw, requires_grad=False)
            self.bn_shift = nn.Parameter(nb, requires_grad=False)
        else:
            self.norm = LayerNorm(nw, nb)
        self.pw2 = Linear(_t(sd, p + "pointwise_conv2.weight"), _opt(sd, p + "pointwise_conv2.bias"))

    def forward(self, x: torch.Tensor, conv_cache: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), conv_cache (B, K-1, D), index (T, K) the shifted views (StepShapes.conv_index)."""
        h = self.pw1(x)
        g = h[..., : self.d] * torch.sigmoid(h[..., self.d :])
        g = torch.cat([conv_cache, g], dim=1)  # (B, K-1+T, D)
        # The causal depthwise conv over T new frames, as sum_k taps[k] * g[t + k]: one Gather of the K views,
        # a Mul and a ReduceSum. ONNX Runtime runs a grouped Conv as one tiny GEMM per channel (1024 of them
        # per stream), far more call overhead than arithmetic for a few thousand MACs.
        y = (g[:, index] * self.dw_taps).sum(dim=2)  # (B, T, K, D) -> (B, T, D)
        if self.dw_b is not None:
            y = y + self.dw_b
        y = self.norm(y) if self.norm is not None else y * self.bn_scale + self.bn_shift
        return self.pw2(F.silu(y)), g[:, -self.cache :]


class ConformerLayer(nn.Module):
    def __init__(self, arch: Architecture, sd: dict[str, Any], layer: int, pe: torch.Tensor):
        super().__init__()
        p = f"encoder.layers.{layer}."
        self.ff1 = FeedForward(sd, p, "feed_forward1")
        self.norm_att = LayerNorm(_t(sd, p + "norm_self_att.weight"), _t(sd, p + "norm_self_att.bias"))
        self.att = Attention(arch, sd, layer, pe)
        self.norm_conv = LayerNorm(_t(sd, p + "norm_conv.weight"), _t(sd, p + "norm_conv.bias"))
        self.conv = Convolution(arch, sd, layer)
        self.ff2 = FeedForward(sd, p, "feed_forward2")
        self.norm_out = LayerNorm(_t(sd, p + "norm_out.weight"), _t(sd, p + "norm_out.bias"))

    def forward(self, x, k_cache, v_cache, conv_cache, mask_bias, shapes: StepShapes):
        x = x + self.ff1(x)
        att, k_new, v_new = self.att(self.norm_att(x), k_cache, v_cache, mask_bias, shapes)
        x = x + att
        conv, conv_next = self.conv(self.norm_conv(x), conv_cache, shapes.conv_index)
        x = x + conv
        x = x + self.ff2(x)
        return self.norm_out(x), k_new, v_new, conv_next


class LanguagePrompt(nn.Module):
    """NeMo's language prompt (`PromptStreamingMixin`): each encoder frame concatenated with a one-hot
    language vector, through Linear-ReLU-Linear, before the joint.

    The one-hot part of the first Linear only selects a column, so it is folded into a per-language bias
    (one row per prompt slot, the Linear's bias included): the graph gathers each stream's row, and streams
    of different languages share a batch. The same function up to float rounding."""

    def __init__(self, arch: Architecture, sd: dict[str, Any]):
        super().__init__()
        d = arch.encoder.d_model
        w1 = _t(sd, "prompt_kernel.0.weight")  # (2D', D + P), input = [encoded ; one-hot]
        self.first = Linear(w1[:, :d], None)
        self.language_bias = nn.Parameter((w1[:, d:].t() + _t(sd, "prompt_kernel.0.bias")).contiguous(),
                                          requires_grad=False)  # (P, 2D')
        self.second = Linear(_t(sd, "prompt_kernel.2.weight"), _t(sd, "prompt_kernel.2.bias"))

    def forward(self, x: torch.Tensor, language: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), language (B,) int64 prompt slots."""
        bias = torch.index_select(self.language_bias, 0, language).unsqueeze(1)  # (B, 1, 2D')
        return self.second(F.relu(self.first(x) + bias))


class EncoderStep(nn.Module):
    """One streaming step: mel chunk + caches -> encoded frames (and their joint projection) + new cache entries.

    Inputs:  mel (B, W, n_mels) time-major; drop () int64, encoder frames dropped after pre-encoding
             (0 on a stream's first step, `drop_extra_pre_encoded` after); cache_len (B,) int64, valid cache
             frames; cache_start (B,) int64, the ring slot of the oldest frame (where the next frame goes);
             conv_cache (B, L, K-1, D); then k_cache_0..k_cache_{L-1} and v_cache_0..v_cache_{L-1}, each
             (B, H, left, d_k): one input per layer, so the graph reads the caller's arrays in place; a prompt
             model then takes language (B,) int64, each stream's prompt slot.
    Outputs: encoded (B, T, D) (after the language prompt, for a prompt model), encoded_proj (B, T, joint_hidden);
             k_new and v_new (B, L*H, T, d_k), this step's keys and values for the caller to write into the
             rings at cache_start; conv_cache_next (B, L*(K-1), D).
    """

    def __init__(self, arch: Architecture, sd: dict[str, Any]):
        super().__init__()
        enc = arch.encoder
        self.left = enc.left_context
        self.n_layers = enc.n_layers
        self.n_heads = enc.n_heads
        self.d_k = enc.d_model // enc.n_heads
        self.max_step = enc.max_step_frames
        self.conv_kernel = enc.conv_cache + 1
        self.xscale = math.sqrt(enc.d_model) if arch.xscaling else None
        self.pre_encode = PreEncode(arch, sd)
        pe = relative_position_table(enc.d_model, self.left + enc.max_step_frames - 1, -(enc.max_step_frames - 1))
        self.layers = nn.ModuleList(ConformerLayer(arch, sd, i, pe) for i in range(enc.n_layers))
        if enc.max_step_frames > self.left:
            raise ValueError("a step longer than the attention cache would overwrite its own frames in the ring")
        self.prompt = LanguagePrompt(arch, sd) if arch.num_prompts else None
        self.joint_enc = Linear(_t(sd, "joint.enc.weight"), _opt(sd, "joint.enc.bias"))

    def shapes(self, x: torch.Tensor, key_age: torch.Tensor) -> StepShapes:
        """This step's shared shapes and indices, from the encoded frames x (B, T, D) and key_age (B, left + T),
        each key column's index in oldest-first order (the ring slots', then the new frames')."""
        model = torch._shape_as_tensor(x)
        b, t = model[:1], model[1:2]
        heads = torch.tensor([3 * self.n_heads, self.d_k])
        steps = x.shape[1]
        # query t and the key of age index k are t + left - k frames apart, the position table's row
        # (max_step - 1 - t) + k (the table runs from offset left + max_step - 1 down)
        rows = (self.max_step - 1 - torch.arange(steps)).reshape(1, 1, steps, 1) + key_age[:, None, None, :]
        views = torch.arange(steps).unsqueeze(1) + torch.arange(self.conv_kernel).unsqueeze(0)
        return StepShapes(model=model, qkv_heads=torch.cat([b, t, heads]),
                          score_index=rows.expand(-1, self.n_heads, -1, -1), conv_index=views)

    def forward(self, mel, drop, cache_len, cache_start, conv_cache, *kv):
        k_cache, v_cache = kv[: self.n_layers], kv[self.n_layers : 2 * self.n_layers]
        x = self.pre_encode(mel)
        x = x[:, drop:]
        if self.xscale is not None:
            x = x * self.xscale
        # each ring slot's place in oldest-first order, and the mask of slots not yet filled
        slot = torch.arange(self.left, device=x.device).unsqueeze(0)  # (1, left)
        age_order = torch.remainder(slot - cache_start.unsqueeze(1), self.left)  # (B, left)
        cache_masked = age_order < (self.left - cache_len).unsqueeze(1)
        mask_cache = torch.where(cache_masked, MASK_VALUE, 0.0)
        mask_bias = torch.cat([mask_cache, torch.zeros_like(x[:, :, 0])], dim=1)[:, None, None, :]
        new_age = (torch.arange(x.shape[1], device=x.device) + self.left).unsqueeze(0).expand(x.shape[0], -1)
        shapes = self.shapes(x, torch.cat([age_order, new_age], dim=1))
        k_new, v_new, c_out = [], [], []
        for i, layer in enumerate(self.layers):
            x, k, v, c_next = layer(x, k_cache[i], v_cache[i], conv_cache[:, i], mask_bias, shapes)
            k_new.append(k)
            v_new.append(v)
            c_out.append(c_next)
        if self.prompt is not None:
            x = self.prompt(x, kv[2 * self.n_layers])
        # stacked along an existing axis (a view for the caller to reshape), not a new one: torch.stack
        # exports as one Unsqueeze per layer and tensor before the Concat
        return x, self.joint_enc(x), torch.cat(k_new, dim=1), torch.cat(v_new, dim=1), torch.cat(c_out, dim=1)


class PredictionStep(nn.Module):
    """RNN-T prediction network for one label per stream, with the joint's projection of its output.

    label (B,) int64 (the blank id primes the network: its embedding is the zero vector), h/c
    (layers, B, H) -> projected output (B, joint_hidden), h', c'.
    """

    def __init__(self, arch: Architecture, sd: dict[str, Any]):
        super().__init__()
        dec = arch.decoder
        p = "decoder.prediction."
        emb = _t(sd, p + "embed.weight")
        emb[dec.blank_id] = 0.0  # padding_idx row: NeMo keeps it zero
        self.embed = nn.Parameter(emb, requires_grad=False)
        self.lstm = nn.LSTM(dec.pred_hidden, dec.pred_hidden, num_layers=dec.pred_layers, batch_first=True)
        lstm_sd = {k[len(p + "dec_rnn.lstm.") :]: _t(sd, k) for k in sd if k.startswith(p + "dec_rnn.lstm.")}
        self.lstm.load_state_dict(lstm_sd)
        self.lstm.requires_grad_(False)
        self.proj = Linear(_t(sd, "joint.pred.weight"), _opt(sd, "joint.pred.bias"))

    def forward(self, label, h, c):
        x = F.embedding(label, self.embed).unsqueeze(1)  # (B, 1, H)
        y, (h2, c2) = self.lstm(x, (h, c))
        return self.proj(y[:, 0]), h2, c2


class Joint(nn.Module):
    """Joint network over all remaining frames of a chunk for one prediction output.

    encoded_proj (B, T, J), pred_proj (B, J) -> best label per frame (B, T) int64 (ties -> lowest id,
    as torch.argmax) and that label's log-probability (B, T), used for confidence. With `with_logits` (the
    exported graph) also every label's logit (B, T, V+1), fetched only by fused decoding (hotwords, LM).
    """

    def __init__(self, arch: Architecture, sd: dict[str, Any], with_logits: bool = False):
        super().__init__()
        self.out = Linear(_t(sd, arch.joint_out + ".weight"), _opt(sd, arch.joint_out + ".bias"))
        self.with_logits = with_logits

    def forward(self, encoded_proj, pred_proj):
        logits = self.out(F.relu(encoded_proj + pred_proj.unsqueeze(1)))
        best = torch.argmax(logits, dim=-1)
        logp = torch.max(logits, dim=-1).values - torch.logsumexp(logits, dim=-1)
        if self.with_logits:
            return best, logp, logits
        return best, logp


def initial_inputs(arch: Architecture, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """An empty stream's cache inputs in the encoder step's order: cache_len, cache_start, conv_cache, then
    the per-layer k and v rings (and a prompt model's language slots)."""
    shapes = cache_shapes(arch.encoder, batch)
    n = arch.encoder.n_layers
    rings = [torch.zeros(shapes["k_cache"]) for _ in range(n)] + [torch.zeros(shapes["v_cache"]) for _ in range(n)]
    zero = torch.zeros(batch, dtype=torch.int64)
    language = (zero.clone(),) if arch.num_prompts else ()
    return (zero, zero.clone(), torch.zeros(shapes["conv_cache"]), *rings, *language)
