"""sherpa-onnx as a peer runtime on the same weights: its export of a NeMo model, and timed streams of it.

sherpa-onnx (k2-fsa) is what most people run this model with on a CPU. Its Nemotron recipe exports one set
of ONNX graphs per latency mode from NeMo's own cache-aware streaming export and quantizes them with
ONNX Runtime's `quantize_dynamic` (QUInt8). `export_sherpa` does the same steps on any NeMo source that
`bench speed --nemo` takes (a `.nemo` file, a hub id, or `random:NAME`, built in memory with the same
speech-like random weights as `convert --random NAME`), so both runtimes run the same network:

1. `tokens.txt`: each vocabulary piece with its id, then `<blk>` (the blank is last);
2. per mode: `set_default_att_context_size([left, ms // 80 - 1])`, then `window_size` = the streaming
   config's chunk plus pre-encode cache and `chunk_shift` = its chunk (the values sherpa-onnx feeds by);
3. NeMo's export with `cache_support`, of the encoder, decoder and joint (`joiner.onnx`);
4. the metadata sherpa-onnx reads from the encoder (vocabulary size, window, cache shapes, ...);
5. `quantize_dynamic(weight_type=QUInt8)` of all three into `*.int8.onnx`, as the published models ship.

A mode's folder (`DIR/<ms>/`) is what `sherpa_onnx.OnlineRecognizer.from_transducer` loads; `sherpa_once`
streams audio through it the way its examples do (blocks of samples, `decode_stream` while ready, then
`input_finished`) and times each block like `bench speed` times our `accept()`. sherpa-onnx computes its
own features, feeds every window with the pre-encode cache (no shorter first chunk) and does not decode the
last partial chunk, so its tokens need not equal NeMo's even in fp32 (see `token_agreement`).

`python -m streamasr.eval.sherpa_peer MODE_DIR AUDIO.npy` is a sherpa-onnx application alone in a process:
it prints its peak RSS (for the peer row's memory, measured like our own application's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamasr.convert.random_model import RANDOM_PREFIX, build_random_nemo
from streamasr.errors import ModelError, StreamASRError
from streamasr.eval.app_memory import StageLog
from streamasr.eval.nemo_baseline import load_nemo_baseline

PEER_PREFIX = "sherpa-onnx:"
#: what `export_sherpa` writes into each mode's folder, int8 and fp32 names
INT8_FILES = {"encoder": "encoder.int8.onnx", "decoder": "decoder.int8.onnx", "joiner": "joiner.int8.onnx"}
FP32_FILES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "joiner": "joiner.onnx"}
TOKENS = "tokens.txt"
NEMO_FILE = "model.nemo"


# ---------------------------------------------------------------- export (needs NeMo, onnx)
def right_context_for(latency_ms: int, frame_ms: int = 80) -> int:
    """sherpa-onnx's rule: a mode of `latency_ms` looks `latency_ms // frame_ms - 1` frames ahead."""
    if latency_ms % frame_ms or latency_ms < frame_ms:
        raise StreamASRError(f"latency {latency_ms} ms is not a whole number of {frame_ms} ms frames")
    return latency_ms // frame_ms - 1


def write_tokens(model, path: Path) -> None:
    """tokens.txt as sherpa-onnx reads it: `piece id` per line, the blank last."""
    vocabulary = list(model.joint.vocabulary)
    lines = [f"{piece} {i}" for i, piece in enumerate(vocabulary)] + [f"<blk> {len(vocabulary)}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def encoder_metadata(model, latency_ms: int) -> dict[str, str]:
    """The key/value pairs sherpa-onnx's NeMo transducer reads from encoder.onnx, for the current mode."""
    enc, cfg = model.encoder, model.encoder.streaming_cfg

    def second(value):
        return value[1] if isinstance(value, list) else value

    chunk, pre = second(cfg.chunk_size), second(cfg.pre_encode_cache_size)
    normalize = model.cfg.preprocessor.normalize
    return {k: str(v) for k, v in {
        "vocab_size": model.decoder.vocab_size, "window_size": chunk + pre, "chunk_size_ms": latency_ms,
        "chunk_shift": chunk, "normalize_type": "" if normalize == "NA" else normalize,
        "cache_last_channel_dim1": len(enc.layers), "cache_last_channel_dim2": cfg.last_channel_cache_size,
        "cache_last_channel_dim3": enc.d_model, "cache_last_time_dim1": len(enc.layers),
        "cache_last_time_dim2": enc.d_model, "cache_last_time_dim3": enc.conv_context_size[0],
        "pred_rnn_layers": model.decoder.pred_rnn_layers, "pred_hidden": model.decoder.pred_hidden,
        "subsampling_factor": enc.subsampling_factor, "feat_dim": model.cfg.preprocessor.features,
        "model_type": "EncDecHybridRNNTCTCBPEModel", "version": "1", "model_author": "NeMo",
        "comment": "exported by streamasr as sherpa-onnx's Nemotron recipe does",
    }.items()}


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def export_sherpa(source: str, out_dir: Path, latencies: list[int], int8: bool = True, keep_fp32: bool = False,
                  threads: int = 2, progress: Callable[[str], None] | None = None, save_nemo: bool = False) -> list[Path]:
    """Export NeMo `source` for sherpa-onnx into `out_dir/<ms>/` per latency mode (see the module docstring);
    returns the mode folders. Without `int8` the fp32 graphs are kept (they are the ones written). With
    `save_nemo`, a `random:` source is first written as `out_dir/model.nemo` (`convert --random`'s build) and
    exported from there, so that `bench speed --nemo` restores it in seconds instead of tuning it again."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    report = progress or (lambda step: None)
    out_dir = Path(out_dir)
    report(f"building the NeMo model {source}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if save_nemo and source.startswith(RANDOM_PREFIX):  # the same weights as the in-memory build, on disk
        build_random_nemo(source, out_dir / NEMO_FILE, progress=report)
        source = str(out_dir / NEMO_FILE)
    model = load_nemo_baseline(source, threads)
    left = model.encoder.att_context_size[0]
    model.set_export_config({"cache_support": True})
    folders = []
    for ms in latencies:
        folder = out_dir / str(ms)
        work = folder / "fp32"  # NeMo writes a large model's weights as one file per tensor beside it
        shutil.rmtree(folder, ignore_errors=True)
        work.mkdir(parents=True)
        model.encoder.set_default_att_context_size([left, right_context_for(ms)])
        report(f"{ms} ms: NeMo export")
        for name, module in (("encoder", model.encoder), ("decoder", model.decoder), ("joiner", model.joint)):
            module.export(str(work / FP32_FILES[name]))
        meta = encoder_metadata(model, ms)
        write_tokens(model, folder / TOKENS)
        if int8:
            for name, fp32 in FP32_FILES.items():
                report(f"{ms} ms: quantize_dynamic {name}")
                quantize_dynamic(model_input=str(work / fp32), model_output=str(folder / INT8_FILES[name]),
                                 weight_type=QuantType.QUInt8)
            _set_metadata(folder / INT8_FILES["encoder"], meta)
        if not int8 or keep_fp32:
            _set_metadata(work / FP32_FILES["encoder"], meta)
            for fp32 in FP32_FILES.values():
                # one weights file per graph (a protobuf can't hold a full-size fp32 encoder)
                _resave(work / fp32, folder / fp32)
        shutil.rmtree(work)
        (folder / "peer.json").write_text(json.dumps({"source": source, "latency_ms": ms, "int8": int8,
                                                      "metadata": meta}, indent=2) + "\n")
        folders.append(folder)
    return folders


def _resave(src: Path, dst: Path) -> None:
    """`src` (weights in files beside it) as `dst` with its weights in one `dst.data` beside it."""
    import onnx

    onnx.save(onnx.load(str(src)), str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
              location=dst.stem + ".data")


# ---------------------------------------------------------------- running (needs sherpa-onnx)
@dataclass
class PeerModel:
    """One latency mode of a sherpa-onnx export, loaded."""

    directory: Path
    latency_ms: int
    recognizer: object
    token_ids: dict[str, int]
    quantization: str
    size_bytes: int
    load_s: float


def mode_dir(directory: Path, latency_ms: int) -> Path:
    """The folder of one mode inside an `export_sherpa` output (or `directory` itself if it is one)."""
    directory = Path(directory)
    for candidate in (directory / str(latency_ms), directory):
        if (candidate / TOKENS).is_file() and _graph_files(candidate):
            meta = _metadata(candidate)
            if meta is None or int(meta.get("chunk_size_ms", latency_ms)) == latency_ms:
                return candidate
    raise StreamASRError(f"no sherpa-onnx export for {latency_ms} ms in {directory} "
                         f"(`streamasr bench export-sherpa` writes one folder per mode)")


def _graph_files(folder: Path) -> dict[str, str] | None:
    for files in (INT8_FILES, FP32_FILES):
        if all((folder / f).is_file() for f in files.values()):
            return files
    return None


def _metadata(folder: Path) -> dict | None:
    peer = folder / "peer.json"
    return json.loads(peer.read_text()).get("metadata") if peer.is_file() else None


def load_peer(directory: Path, latency_ms: int, threads: int = 2) -> PeerModel:
    """sherpa-onnx's OnlineRecognizer for one mode: greedy search, `threads` threads, CPU."""
    try:
        import sherpa_onnx
    except ImportError as exc:
        raise ModelError("the sherpa-onnx peer needs `pip install sherpa-onnx`") from exc
    folder = mode_dir(directory, latency_ms)
    files = _graph_files(folder)
    t0 = time.perf_counter()
    recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(folder / TOKENS), encoder=str(folder / files["encoder"]), decoder=str(folder / files["decoder"]),
        joiner=str(folder / files["joiner"]), num_threads=threads, sample_rate=16000, feature_dim=128,
        decoding_method="greedy_search", provider="cpu")
    load_s = time.perf_counter() - t0
    ids = {}
    for line in (folder / TOKENS).read_text(encoding="utf-8").splitlines():
        piece, _, index = line.rpartition(" ")
        ids[piece.replace("\u2581", " ")] = int(index)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix in (".onnx", ".data", ".txt"))
    return PeerModel(folder, latency_ms, recognizer, ids, "int8 dynamic" if files is INT8_FILES else "fp32",
                     size, load_s)


@dataclass
class PeerRun:
    """One timed sherpa-onnx stream; the fields `bench speed` reports for every engine."""

    audio_s: float
    processing_s: float
    chunk_s: list[float]  # blocks whose processing ran at least one encoder window
    steps: int
    first_partial_s: float | None
    final_s: float
    token_ids: list[int]


def sherpa_once(peer: PeerModel, samples: np.ndarray, block: int, sample_rate: int = 16000) -> PeerRun:
    """Stream `samples` through sherpa-onnx, `block` samples per `accept_waveform`, decoding whenever a window
    is ready; first partial and final on the same simulated real-time clock as `speed.stream_once`."""
    rec = peer.recognizer
    stream = rec.create_stream()
    chunk_s: list[float] = []
    processing, clock, steps = 0.0, 0.0, 0
    first_partial = None
    for start in range(0, samples.size, block):
        piece = samples[start:start + block]
        t0 = time.perf_counter()
        stream.accept_waveform(sample_rate, piece)
        ran = 0
        while rec.is_ready(stream):
            rec.decode_stream(stream)
            ran += 1
        text = rec.get_result(stream) if ran and first_partial is None else ""
        dt = time.perf_counter() - t0
        processing += dt
        clock = max(clock, (start + piece.size) / sample_rate) + dt
        if ran:
            steps += ran
            chunk_s.append(dt)
        if text and first_partial is None:
            first_partial = clock
    t0 = time.perf_counter()
    stream.input_finished()
    while rec.is_ready(stream):
        rec.decode_stream(stream)
        steps += 1
    result = rec.get_result_all(stream)
    finish_dt = time.perf_counter() - t0
    processing += finish_dt
    audio_end = samples.size / sample_rate
    clock = max(clock, audio_end) + finish_dt
    ids = [peer.token_ids[t] for t in result.tokens if t in peer.token_ids]
    if len(ids) != len(result.tokens):
        raise ModelError(f"sherpa-onnx returned tokens missing from {peer.directory / TOKENS}")
    return PeerRun(audio_end, processing, chunk_s, steps, first_partial, clock - audio_end, ids)


# ---------------------------------------------------------------- agreement
@dataclass
class Agreement:
    """How a token sequence matches a reference one (NeMo's streaming output)."""

    tokens: int
    reference_tokens: int
    common_prefix: int
    error_rate: float  # token edits / reference tokens (Levenshtein)
    identical: bool


def token_agreement(hypothesis: list[int], reference: list[int]) -> Agreement:
    prefix = 0
    for a, b in zip(hypothesis, reference):
        if a != b:
            break
        prefix += 1
    return Agreement(len(hypothesis), len(reference), prefix,
                     _edits(hypothesis, reference) / max(len(reference), 1), hypothesis == reference)


def _edits(a: list[int], b: list[int]) -> int:
    """Levenshtein distance, one row at a time."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


# ---------------------------------------------------------------- command line
def cmd_export(args) -> int:
    try:
        latencies = [int(x) for x in args.latency.split(",") if x.strip()]
    except ValueError:
        raise StreamASRError(f"--latency wants comma-separated milliseconds, got {args.latency!r}") from None
    for ms in latencies:
        right_context_for(ms)
    folders = export_sherpa(args.source, Path(args.output), latencies, int8=not args.fp32, keep_fp32=args.keep_fp32,
                            threads=args.threads, progress=lambda step: print(f"export-sherpa: {step}", file=sys.stderr),
                            save_nemo=args.save_nemo)
    for folder in folders:
        print(folder)
    return 0


def add_parser(bench_sub) -> None:
    p = bench_sub.add_parser("export-sherpa", help="export a NeMo model the way sherpa-onnx's Nemotron recipe does, "
                             "for `bench speed --peer sherpa-onnx:DIR`", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help=".nemo file, hub id, or random:NAME (speech-like random weights, as convert --random)")
    p.add_argument("-o", "--output", required=True, help="output folder (one subfolder per latency mode)")
    p.add_argument("--latency", default="80,160,560", help="modes to export (default: %(default)s)")
    p.add_argument("--fp32", action="store_true", help="keep the fp32 graphs instead of quantizing (not what ships)")
    p.add_argument("--keep-fp32", action="store_true", help="write the fp32 graphs beside the int8 ones")
    p.add_argument("--threads", type=int, default=2, help="torch threads while building/exporting")
    p.add_argument("--save-nemo", action="store_true",
                   help=f"random: sources: save the NeMo model as OUTPUT/{NEMO_FILE} first (for `bench speed --nemo`)")
    p.set_defaults(func=cmd_export)


# ---------------------------------------------------------------- a sherpa-onnx application alone
def main(argv: list[str] | None = None) -> int:
    """Load one mode, stream the audio once, print peak RSS and tokens as JSON (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m streamasr.eval.sherpa_peer")
    parser.add_argument("model", help="an export_sherpa output folder (or one mode's folder)")
    parser.add_argument("audio", help=".npy of float32 16 kHz mono samples")
    parser.add_argument("--latency", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    log = StageLog()
    log.mark("start")
    samples = np.load(args.audio).astype(np.float32, copy=False)
    log.mark("audio")
    peer = load_peer(Path(args.model), args.latency, args.threads)
    log.mark("load")
    run = sherpa_once(peer, samples, max(1, int(16000 * args.block_ms / 1000)))
    log.mark(f"stream {args.latency} ms")
    print(json.dumps({"stages": log.stages, "peak_rss_bytes": log.peak, "tokens": len(run.token_ids),
                      "rtfx": run.audio_s / run.processing_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
