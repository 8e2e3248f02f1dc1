"""`streamasr transcribe --engine ray`: bulk transcription of many files across a Ray cluster.

Inputs are manifests (JSONL, one object per line with an "audio" path relative to the manifest), folders (the
audio files in them, not recursing) or globs (`**` recurses). Each file is one task, sent to one of N worker
actors that each load the model once (ONNX Runtime with --threads threads, default 1, one CPU reserved per
worker). Workers return the document and the driver writes it into --output-dir with the single-process run's
own function, so the files are the same, file for file, as `streamasr transcribe --output-dir` writes.

Resumable: a file whose output already exists in OUT is skipped (outputs are written through a temporary name,
so an existing one is a finished one). A file that fails (unreadable audio, a worker that died) is recorded as
one line of OUT/errors.jsonl ({"audio", "output", "error"}) and the rest carry on; the next run retries it.
errors.jsonl holds the failures of the latest run only (removed when it had none). The exit status is 1 when any
file failed, 0 otherwise (2 for a usage error, as everywhere). A progress bar (tqdm, when installed and stderr is
a terminal) and a summary line: files done / skipped / failed, hours of audio, and the job's RTFx (audio seconds
transcribed / wall seconds of the whole job, Ray's start and the model loads included).

Local Ray by default (started here, `--workers N` CPUs, and shut down at the end), or `--ray-address` for an
existing cluster (`ray://HOST:10001`, or `auto`): there every node needs streamasr installed, the model directory
at the same path and the audio files at the same paths as the driver (a shared filesystem). Ray is an optional
dependency, imported only here and only when asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from streamasr.cli.common import output_paths, prepare_output_dir, random_build_progress
from streamasr.errors import ModelError, StreamASRError
from streamasr.formats import EXTENSIONS
from streamasr.model_config import ModelConfig
from streamasr.model_store import resolve_model
from streamasr.runtime import Model

#: what a folder input is searched for (the formats `transcribe` reads through soundfile)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au"}
ERRORS_FILE = "errors.jsonl"
#: exit status of a job that finished with failed files
EXIT_FAILED_FILES = 1


def _import_ray():
    try:
        import ray
    except ImportError:
        raise StreamASRError("--engine ray needs Ray: pip install 'streamasr[ray]'") from None
    return ray


def expand_inputs(names: list[str]) -> list[Path]:
    """Manifests, folders, files and globs -> the audio files, absolute (workers may run elsewhere), in order,
    each once."""
    files: list[Path] = []
    for name in names:
        if name == "-":
            raise StreamASRError("--engine ray reads files, not stdin; give a manifest, a folder or a glob")
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise StreamASRError(f"folder {path} has no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
            files += found
        elif path.is_file() and path.suffix.lower() == ".jsonl":
            files += _read_manifest(path)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(name):
            found = sorted(Path(p) for p in glob.glob(name, recursive=True) if Path(p).is_file())
            if not found:
                raise StreamASRError(f"{name} matches no files")
            files += found
        else:
            raise StreamASRError(f"{name}: no such file, folder or glob")
    seen: set[Path] = set()
    unique = []
    for f in files:
        f = f.absolute()
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique


def _read_manifest(path: Path) -> list[Path]:
    files = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StreamASRError(f"cannot read manifest {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            audio = item.get("audio", item.get("audio_filepath"))
        except (ValueError, AttributeError):
            audio = None
        if not isinstance(audio, str) or not audio:
            raise StreamASRError(f"{path} line {number}: not a JSON object with an \"audio\" path")
        files.append(path.parent / audio)
    if not files:
        raise StreamASRError(f"manifest {path} lists no audio")
    return files


def plan_outputs(files: list[Path], out: Path, fmt: str) -> dict[Path, Path]:
    """Input -> its output file (NAME.EXT, as the single-process run names it); two inputs that would write
    the same file are an error before any work."""
    return output_paths(files, out, EXTENSIONS[fmt])


def _check_args(args: argparse.Namespace) -> Path:
    if args.output_dir is None:
        raise StreamASRError("--engine ray writes one file per input: give --output-dir DIR")
    if args.json:
        raise StreamASRError("--engine ray writes documents into --output-dir; use --format json, not --json")
    if args.workers is not None and args.workers < 1:
        raise StreamASRError("--workers must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise StreamASRError("--threads must be at least 1")
    if args.format is None:
        args.format = "text"
    return prepare_output_dir(args.output_dir)


def _resolve(args: argparse.Namespace) -> tuple[Path, int]:
    """The model directory (converted into the cache on first use, here, once) and the latency mode, checked
    in the driver before any worker starts."""
    model_dir = Path(resolve_model(args.model, progress=random_build_progress(args.model))).absolute()
    config = ModelConfig.load(model_dir)
    if config.random_weights and not args.allow_random:
        raise ModelError(f"{args.model} has random weights (a benchmark model); its transcripts are meaningless. "
                         "Pass --allow-random to run it anyway")
    latency = config.encoder.default_latency_ms if args.latency is None else args.latency
    return model_dir, config.encoder.mode(latency).latency_ms


class _Worker:
    """One model, loaded once per worker process; `transcribe` never raises for a bad file."""

    def __init__(self, model_dir: str, threads: int, latency: int, fmt: str, nemo_compat: bool,
                 document: Callable):
        self.model = Model.load_dir(Path(model_dir), threads=threads)
        self.latency, self.fmt, self.nemo_compat, self.document = latency, fmt, nemo_compat, document

    def ready(self) -> bool:
        return True

    def transcribe(self, audio: str) -> dict:
        t0 = time.perf_counter()
        try:
            text, result = self.document(self.model, audio, self.fmt, self.latency, self.nemo_compat)
        except StreamASRError as exc:
            return {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the job; the driver records it
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {"text": text, "audio_s": result.audio_s, "compute_s": time.perf_counter() - t0}


class _Progress:
    """tqdm on stderr when installed and stderr is a terminal; else a counter line on a terminal; else quiet."""

    def __init__(self, total: int):
        self.total, self.n, self.bar = total, 0, None
        self.tty = sys.stderr.isatty()
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None and self.tty:
            self.bar = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True, desc="transcribe")

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            if self.tty and self.n:
                sys.stderr.write("\r\x1b[K")
            print(line, file=sys.stderr, flush=True)

    def step(self, failed: int) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix(failed=failed, refresh=False)
            self.bar.update(1)
        elif self.tty:
            sys.stderr.write(f"\rstreamasr: {self.n}/{self.total} files, {failed} failed")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.tty and self.n:
            sys.stderr.write("\n")
            sys.stderr.flush()


def cmd_bulk(args: argparse.Namespace, document: Callable, write: Callable[[Path, str], None]) -> int:
    """Run the job. `document(model, path, fmt, latency, nemo_compat) -> (text, result)` makes one file's
    document and `write(path, text)` writes it: the single-process run's own functions (cli/transcribe.py)."""
    t0 = time.perf_counter()
    out = _check_args(args)
    files = expand_inputs(args.audio)
    outputs = plan_outputs(files, out, args.format)
    todo = [f for f in files if not outputs[f].exists()]
    skipped = len(files) - len(todo)
    errors_path = out / ERRORS_FILE
    done, failed, audio_s = 0, 0, 0.0
    if todo:
        model_dir, latency = _resolve(args)
        ray = _import_ray()
        from ray.exceptions import RayActorError, RayError

        started = _start_ray(ray, args)
        actors: list = []
        progress = _Progress(len(todo))
        errors_path.unlink(missing_ok=True)
        try:
            threads = args.threads or 1
            n_workers = min(len(todo), args.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads))
            Worker = ray.remote(num_cpus=1, max_restarts=0)(_Worker)

            def new_worker():
                return Worker.remote(str(model_dir), threads, latency, args.format, args.nemo_compat, document)

            actors = [new_worker() for _ in range(n_workers)]
            try:
                ray.get([a.ready.remote() for a in actors])  # a model that cannot load is one error, said once
            except RayError as exc:
                raise StreamASRError(f"a Ray worker could not load the model {model_dir}: {_cause(exc)}") from None
            pending, inflight, idle = deque(todo), {}, list(actors)
            while pending or inflight:
                while idle and pending:
                    actor, audio = idle.pop(), pending.popleft()
                    inflight[actor.transcribe.remote(str(audio))] = (actor, audio)
                ready, _ = ray.wait(list(inflight), num_returns=1)
                actor, audio = inflight.pop(ready[0])
                try:
                    answer = ray.get(ready[0])
                except RayActorError as exc:  # the worker died on this file (crash, out of memory): a new one
                    answer = {"error": f"the Ray worker died: {_cause(exc)}"}
                    actors.remove(actor)
                    actor = new_worker()
                    actors.append(actor)
                except RayError as exc:
                    answer = {"error": _cause(exc)}
                idle.append(actor)
                if "error" in answer:
                    failed += 1
                    with errors_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps({"audio": str(audio), "output": str(outputs[audio]),
                                            "error": answer["error"]}, ensure_ascii=False) + "\n")
                    said = answer["error"] if str(audio) in answer["error"] else f"{audio}: {answer['error']}"
                    progress.note(f"streamasr: failed: {said}")
                else:
                    write(outputs[audio], answer["text"])
                    done += 1
                    audio_s += answer["audio_s"]
                progress.step(failed)
        finally:
            progress.close()
            for actor in actors:
                with contextlib.suppress(Exception):  # best effort at shutdown
                    ray.kill(actor)
            if started:
                ray.shutdown()
    else:
        errors_path.unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    rtfx = f"RTFx {audio_s / wall:.1f}" if done and wall > 0 else "RTFx -"
    where = f" (see {errors_path})" if failed else ""
    print(f"streamasr: {len(files)} files: {done} done, {skipped} skipped, {failed} failed{where}; "
          f"{audio_s / 3600:.4f} h of audio in {wall:.1f} s wall: {rtfx}", flush=True)
    return EXIT_FAILED_FILES if failed else 0


def _start_ray(ray, args: argparse.Namespace) -> bool:
    """Connect to --ray-address, or start a local Ray (--workers CPUs, no dashboard); True when started here
    (and so to be shut down). A Ray already initialised in this process is used as it is."""
    if ray.is_initialized():
        return False
    kwargs = {"logging_level": "ERROR", "log_to_driver": False, "configure_logging": True}
    if args.ray_address is None:
        kwargs["include_dashboard"] = False
        if args.workers is not None:
            kwargs["num_cpus"] = args.workers
    try:
        ray.init(address=args.ray_address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {args.ray_address}" if args.ray_address else "a local Ray instance"
        raise StreamASRError(f"cannot start or reach {where}: {exc}") from None
    return True


def _cause(exc: BaseException) -> str:
    """A Ray error's first line, without Ray's traceback."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
