"""The three networks behind a small numpy interface, with ONNX Runtime as the production backend.

The streaming logic (chunk schedule, greedy RNN-T, text) is written once against `Backend`; the converter
plugs in a torch backend built from the same modules it exports, which lets it run the model (to tune
random weights, or to compare torch and ONNX) without a second implementation of the loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np

from streamasr.errors import ModelError
from streamasr.model_config import CONFIG_NAME, ModelConfig, cache_shapes
from streamasr.runtime.cache import CacheFeeds, encoder_input_names
from streamasr.runtime.huge_pages import huge_pages_for_new_memory
from streamasr.runtime.libc import glibc
from streamasr.runtime.mapped_weights import release_mapped_weights, release_wanted

EncoderOut = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
JOINT_OUTPUTS = ["best", "logprob"]  # joint.onnx also has `logits`, fetched only for fused decoding


class Backend(Protocol):
    def encode(self, mel: np.ndarray, drop: int, caches: CacheFeeds) -> EncoderOut:
        """mel (B, W, n_mels) -> encoded (B,T,D), encoded_proj (B,T,J), the step's new keys and values
        (B, L, H, T, d_k) and the next conv caches (B, L, K-1, D); see runtime/cache.py."""

    def predict(self, label: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """label (B,) int64 -> projected prediction output (B, J), h, c (layers, B, H)."""

    def joint(self, encoded_proj: np.ndarray, pred_proj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, J), (B, J) -> best label per frame (B, T) int64 and its log-probability (B, T)."""

    def joint_logits(self, encoded_proj: np.ndarray, pred_proj: np.ndarray) -> tuple[np.ndarray, ...]:
        """As `joint`, plus every label's logit (B, T, V+1): what fused decoding (hotwords, LM) re-ranks."""


#: `STREAMASR_SPIN` values: how ONNX Runtime's intra-op threads wait for work (see `session_options`)
SPIN_MODES = {"step": ("1", "1"), "0": ("0", "0"), "1": ("1", "0")}


def session_options(threads: int | None = None):
    """ORT options for low-latency streaming: a fixed intra-op pool, no inter-op parallelism, and threads that
    spin only while a step runs.

    An encoder step is some 1,700 small kernels, most of them split over the pool: a worker that sleeps
    between them is woken by a futex call every time, which costs more than many of the kernels. Spinning
    workers avoid that, but spinning between steps would burn a core while the stream waits for audio (on a
    2-core machine, the audio thread's and other streams' core). So they spin within a `run` and stop when
    it returns (`session.force_spinning_stop`). `STREAMASR_SPIN=0` never spins; `STREAMASR_SPIN=1` spins
    between steps too (ONNX Runtime's own default).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = threads if threads else (os.cpu_count() or 1)
    mode = os.environ.get("STREAMASR_SPIN", "step")
    if mode not in SPIN_MODES:
        raise ModelError(f"STREAMASR_SPIN={mode!r}: use step (the default), 0 or 1")
    spin, stop = SPIN_MODES[mode]
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.force_spinning_stop", stop)
    opts.log_severity_level = 3
    return opts


#: glibc's mallopt() parameter for the mmap threshold (malloc.h)
_M_MMAP_THRESHOLD = -3
#: while sessions load: glibc's initial threshold, held fixed
_LOAD_MMAP_THRESHOLD = 128 * 1024
#: afterwards: the ceiling glibc's own dynamic threshold climbs to on 64-bit systems
_RUN_MMAP_THRESHOLD = 32 * 1024 * 1024


@contextmanager
def lean_heap_while_loading() -> Iterator[None]:
    """Keep the buffers ONNX Runtime frees while it creates sessions out of the resident heap.

    Loading an int4 encoder builds every initializer and then prepacks each MatMulNBits weight into a new
    buffer before the unpacked one is freed. glibc raises its mmap threshold whenever a mapped buffer is freed,
    so after the first few, these buffers of 0.1-32 MB come from the brk heap, where freed space stays
    resident and fragmented: the load's peak RSS then holds the unpacked and the packed weights at once (the
    memory table in docs/benchmarks.md). Holding the threshold at
    glibc's initial 128 KiB while the sessions are created gives each such buffer its own mapping, returned to
    the system when freed; afterwards the threshold is set to the ceiling the dynamic rule reaches in a running
    process anyway (so streaming allocates as before) and `malloc_trim` hands back what the heap freed.

    Process-wide (malloc has one configuration); a no-op off glibc or with STREAMASR_MALLOC_TUNING=0.
    """
    libc = glibc() if os.environ.get("STREAMASR_MALLOC_TUNING", "1") != "0" else None
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _LOAD_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _RUN_MMAP_THRESHOLD)
            libc.malloc_trim(0)


@contextmanager
def loading_sessions() -> Iterator[None]:
    """What a block that creates sessions runs inside: the lean heap while they load (`lean_heap_while_loading`),
    then huge pages for the memory the load created, the packed weights (`runtime.huge_pages`)."""
    with huge_pages_for_new_memory(), lean_heap_while_loading():
        yield


#: a joint scoring at least this many labels (blank included) runs on the encoder's threads (`graph_threads`)
LARGE_JOINT_LABELS = 4096


def graph_threads(graph: str, threads: int | None, config: ModelConfig | None) -> int | None:
    """Intra-op threads for one of the three graphs.

    The encoder takes `threads`. The prediction network and a small joint run on one thread: a call costs
    microseconds, less than handing work to a pool. A large joint (the multilingual model's 13,088 labels:
    a 33 MB output layer read on every call, several calls per chunk) is the other way round: two threads
    halve it, and its output is the same (the product is split by output column)."""
    if graph == "encoder":
        return threads
    if graph == "joint" and config is not None and config.decoder.vocab_size + 1 >= LARGE_JOINT_LABELS:
        return threads
    return 1


#: short names for `--provider`; the default CPU provider is always the fallback
PROVIDERS = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


def encoder_providers(name: str = "cpu", threads: int | None = None) -> list:
    """The ONNX Runtime provider list for the encoder: `cpu`, or `openvino` (the OpenVINO execution
    provider of the `onnxruntime-openvino` package, on the CPU device, with the CPU provider behind it for
    any node it does not take). A clear error where this onnxruntime build lacks it."""
    import onnxruntime as ort

    if name not in PROVIDERS:
        raise ModelError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}")
    full = PROVIDERS[name]
    if full not in ort.get_available_providers():
        raise ModelError(f"this onnxruntime ({ort.__version__}) has no {full}; for OpenVINO install "
                         "`onnxruntime-openvino` in place of `onnxruntime` (x86 only)")
    if name == "openvino":
        options = {"device_type": "CPU", "precision": "FP32"}  # explicit: OpenVINO's CPU default here is bf16
        if threads:
            options["num_of_threads"] = str(threads)
        return [(full, options), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def expected_inputs(config: ModelConfig) -> dict[str, dict[str, tuple]]:
    """Each graph's inputs (names in order) and the shapes `config` implies; None marks a free dimension
    (batch, frames). What the runtime will feed, so a graph that disagrees can be refused at load."""
    enc, dec = config.encoder, config.decoder
    shapes = cache_shapes(enc, batch=1)
    encoder: dict[str, tuple] = {"mel": (None, None, config.frontend.n_mels), "drop": (), "cache_len": (None,),
                                 "cache_start": (None,), "conv_cache": (None, *shapes["conv_cache"][1:])}
    for name in encoder_input_names(enc.n_layers)[5:]:
        encoder[name] = (None, *shapes["k_cache" if name.startswith("k_") else "v_cache"][1:])
    if config.languages:
        encoder["language"] = (None,)
    state = (dec.pred_layers, None, dec.pred_hidden)
    return {"encoder": encoder,
            "decoder": {"label": (None,), "h": state, "c": state},
            "joint": {"encoded_proj": (None, None, dec.joint_hidden), "pred_proj": (None, dec.joint_hidden)}}


def expected_outputs(config: ModelConfig) -> dict[str, dict[str, tuple]]:
    """The graph outputs whose widths `config` fixes (see `expected_inputs`)."""
    j = config.decoder.joint_hidden
    return {"encoder": {"encoded": (None, None, config.encoder.d_model), "encoded_proj": (None, None, j)},
            "decoder": {"pred_proj": (None, j)}, "joint": {}}


def check_session(session, graph: str, path: Path, config: ModelConfig) -> None:
    """A ModelError when a graph's inputs do not fit `config` (an encoder.onnx copied from a model of
    another size, say): said at load, naming the file and the mismatch, rather than as an ONNX Runtime
    shape error at the first step."""
    expected = expected_inputs(config)[graph]
    found = {i.name: tuple(d if isinstance(d, int) else None for d in i.shape) for i in session.get_inputs()}
    enc = config.encoder
    size = (f"{enc.n_layers} layers, d_model {enc.d_model}, {enc.n_heads} heads, prediction network "
            f"{config.decoder.pred_layers}x{config.decoder.pred_hidden}, joint {config.decoder.joint_hidden}")
    problem = None
    if list(found) != list(expected):
        layers = sum(n.startswith("k_cache_") for n in found)
        if graph == "encoder" and layers != enc.n_layers:
            problem = f"its inputs are for {layers} layers"
        else:
            missing, extra = [n for n in expected if n not in found], [n for n in found if n not in expected]
            problem = (f"its inputs are {', '.join(found)}" + (f" (missing {', '.join(missing)})" if missing else "")
                       + (f" (unexpected {', '.join(extra)})" if extra else ""))
    else:
        # the projections the joint adds must have its width too (an encoder of the same depth and width
        # but another joint would pass the input checks)
        outputs = {o.name: tuple(d if isinstance(d, int) else None for d in o.shape) for o in session.get_outputs()}
        checks = [("input", name, found[name], want) for name, want in expected.items()]
        checks += [("output", name, outputs[name], want) for name, want in expected_outputs(config)[graph].items()
                   if name in outputs]
        for kind, name, have, want in checks:
            fits = len(have) == len(want) and all(h is None or w is None or h == w for h, w in zip(have, want))
            if not fits:
                problem = f"its {kind} {name} has shape {_shape(have)} where the model needs {_shape(want)}"
                break
    if problem:
        raise ModelError(f"{path.name} in {path.parent} does not match its {CONFIG_NAME} ({size}): {problem}; "
                         "the files come from different models (re-convert the model into a fresh directory)")


def _shape(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


class OrtBackend:
    """Runs the model directory's ONNX graphs. Sessions are shared by every stream of a loaded model
    (ORT's `run` is thread-safe); each stream keeps its own state. `providers` applies to the encoder; the
    small decoder and joint graphs always run on the CPU provider, where a call costs microseconds."""

    def __init__(self, directory: Path, files: dict[str, str], threads: int | None = None,
                 providers: list[str] | None = None, config: ModelConfig | None = None,
                 release_mapped: bool = True):
        """`config` (the directory's config.json, as Model.load_dir passes it): each graph's inputs are
        checked against it, so files of different models are refused here. `release_mapped`: hand back the
        weight pages ORT keeps mapped but never reads after each session is created (`mapped_weights`;
        STREAMASR_RELEASE_MAPPED, when set, decides instead)."""
        self.providers = providers or ["CPUExecutionProvider"]
        self.config = config
        self.release_mapped = release_wanted(release_mapped)
        self.sessions = {}
        with loading_sessions():
            self._load(Path(directory), files, threads, config)

    def _load(self, directory: Path, files: dict[str, str], threads: int | None, config: ModelConfig | None):
        """One session per graph, each checked against `config`."""
        import onnxruntime as ort

        for name in ("encoder", "decoder", "joint"):
            path = Path(directory) / files.get(name, f"{name}.onnx")
            if not path.is_file():
                raise ModelError(f"model directory {directory} is missing {path.name}")
            opts = session_options(graph_threads(name, threads, config))
            try:
                providers = self.providers if name == "encoder" else ["CPUExecutionProvider"]
                # no silent fallback: a provider that fails must not quietly become the CPU provider
                session = ort.InferenceSession(str(path), sess_options=opts, providers=providers, enable_fallback=0)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise ModelError(f"cannot load {path}: {exc}") from exc
            wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
            if wanted not in session.get_providers():  # ORT drops a provider with bad options, logging only
                raise ModelError(f"{wanted} could not be created for {path.name} (the session has "
                                 f"{session.get_providers()}); see onnxruntime's error log above")
            if config is not None:
                check_session(session, name, path, config)
            self.sessions[name] = session
            if self.release_mapped:  # after each graph: the next one loads beside less memory
                release_mapped_weights(directory)

    def with_encoder(self, path: Path, options, providers: list | None = None) -> "OrtBackend":
        """A backend sharing this one's decoder and joint sessions, with the encoder loaded from `path` under
        ORT `options` (other weights, a profiler): a benchmark's or analysis' variant, nothing patched."""
        import onnxruntime as ort

        other = object.__new__(OrtBackend)
        other.providers = providers or self.providers
        other.config = self.config
        other.release_mapped = self.release_mapped
        other.sessions = dict(self.sessions)
        try:
            with loading_sessions():
                other.sessions["encoder"] = ort.InferenceSession(str(path), sess_options=options,
                                                                 providers=other.providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {path}: {exc}") from exc
        if self.config is not None:
            check_session(other.sessions["encoder"], "encoder", Path(path), self.config)
        if self.release_mapped:
            release_mapped_weights(Path(path).parent)
        return other

    def encode(self, mel, drop, caches: CacheFeeds) -> EncoderOut:
        # (ORT reads C-contiguous float32 numpy inputs in place: the cache rings are not copied)
        feeds = {"mel": mel, "drop": np.array(drop, dtype=np.int64), **caches.as_inputs()}
        return tuple(self.sessions["encoder"].run(None, feeds))  # type: ignore[return-value]

    def predict(self, label, h, c):
        return tuple(self.sessions["decoder"].run(None, {"label": label, "h": h, "c": c}))

    def joint(self, encoded_proj, pred_proj):
        return tuple(self.sessions["joint"].run(JOINT_OUTPUTS, {"encoded_proj": encoded_proj, "pred_proj": pred_proj}))

    @property
    def has_joint_logits(self) -> bool:
        """joint.onnx returns every label's logit (directories converted before hotwords existed do not)."""
        return "logits" in {o.name for o in self.sessions["joint"].get_outputs()}

    def joint_logits(self, encoded_proj, pred_proj):
        feeds = {"encoded_proj": encoded_proj, "pred_proj": pred_proj}
        return tuple(self.sessions["joint"].run([*JOINT_OUTPUTS, "logits"], feeds))
