"""Where models come from: a model directory, a `.nemo` file, a Hugging Face repo id, or `random:NAME`.

Anything that is not already a model directory is converted once into the cache
(`~/.cache/streamasr/`, or `$STREAMASR_CACHE`) and loaded from there afterwards, so that
`streamasr transcribe talk.wav` is the whole story on a connected machine.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from streamasr.convert.nemo_file import read_nemo
from streamasr.convert.random_model import (
    ARCHITECTURES,
    RANDOM_PREFIX,
    build_random_nemo,
)
from streamasr.errors import ModelError, OfflineError
from streamasr.model_config import CONFIG_NAME, FORMAT_VERSION

DEFAULT_MODEL = "nvidia/nemotron-speech-streaming-en-0.6b"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: seconds the hub may take to accept a connection before we call the machine offline
HUB_CONNECT_TIMEOUT_S = 3.0
#: told the name of each step of a long build ("training tokenizer", "tuning blank bias (3/14)")
Progress = Callable[[str], None]


def cache_root() -> Path:
    return Path(os.environ.get("STREAMASR_CACHE", Path.home() / ".cache" / "streamasr"))


def _require_convert_extra() -> None:
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            f"converting a checkpoint needs the convert extra ({exc.name} is missing): "
            "pip install torch==2.13.0 'streamasr[convert]', or pass a converted model directory"
        ) from exc


def _hub_endpoint() -> tuple[str, int]:
    """The host and port the first hub call would connect to: the hub (HF_ENDPOINT) or the HTTPS proxy."""
    from huggingface_hub import constants

    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)),
                 None)
    url = urlsplit(proxy if proxy else constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme in ("https", "") else 80)


#: values of HF_HUB_OFFLINE that mean "on" (huggingface_hub's own reading)
_TRUE = {"1", "on", "yes", "true"}


def offline_reason() -> str | None:
    """Why the hub cannot be used now: HF_HUB_OFFLINE (read at call time: huggingface_hub reads it once, at
    import), else the connection probe of `hub_problem`; None when the hub answers."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "HF_HUB_OFFLINE is set"
    return hub_problem()


def hub_problem(timeout: float = HUB_CONNECT_TIMEOUT_S) -> str | None:
    """Why a TCP connection to the hub (or the proxy) does not open within `timeout` seconds, DNS
    included; None when it does.

    huggingface_hub retries a failed connection for about 25 s before giving up; offline, that is how long
    `streamasr transcribe talk.wav` would wait to say so. The probe runs in a daemon thread, because
    name resolution ignores socket timeouts."""
    host, port = _hub_endpoint()
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except socket.gaierror:
            outcome.append(f"cannot resolve {host}")
        except ConnectionRefusedError:
            outcome.append(f"{host}:{port} refused the connection")
        except OSError as exc:
            outcome.append(f"no connection to {host}:{port}: {exc.strerror or exc}")

    thread = threading.Thread(target=probe, name="streamasr-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {timeout:g} s"


def _cached_nemo(repo_id: str) -> Path | None:
    """A `.nemo` of `repo_id` already in the Hugging Face cache (an earlier download), or None."""
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=["*.nemo"]))
    except Exception:  # nothing cached: huggingface_hub raises several types for that
        return None
    found = sorted(local.glob("*.nemo"))
    return found[0] if found else None


def _offline_error(repo_id: str, why: str) -> OfflineError:
    return OfflineError(
        f"cannot reach the Hugging Face hub to download {repo_id} ({why}); "
        "download the .nemo file elsewhere and pass its path, e.g. "
        "`streamasr convert path/to/model.nemo -o models/nemotron-en`"
    )


def download_nemo(repo_id: str) -> Path:
    """Fetch the `.nemo` file of a Hugging Face model repo into the usual HF cache.

    Offline (HF_HUB_OFFLINE, or the hub not answering a connection within a few seconds) a previous
    download in the HF cache is used, else an OfflineError says how to pass a local file: in seconds, not
    after huggingface_hub's retries."""
    try:
        from huggingface_hub import hf_hub_download, list_repo_files
        from huggingface_hub.errors import RepositoryNotFoundError
    except ImportError as exc:  # pragma: no cover - a runtime dependency
        raise ModelError("huggingface_hub is required to download models") from exc
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # one clear error below instead of a retry log
    problem = offline_reason()
    if problem:
        cached = _cached_nemo(repo_id)
        if cached is not None:
            return cached
        raise _offline_error(repo_id, problem)
    try:
        files = list_repo_files(repo_id)
    except RepositoryNotFoundError as exc:
        raise ModelError(f"no such model on the Hugging Face hub: {repo_id}") from exc
    except Exception as exc:  # connection errors come in many types
        cached = _cached_nemo(repo_id)
        if cached is not None:
            return cached
        raise _offline_error(repo_id, type(exc).__name__) from exc
    nemo_files = [f for f in files if f.endswith(".nemo")]
    if not nemo_files:
        raise ModelError(f"{repo_id} has no .nemo file; streamasr converts NeMo checkpoints")
    try:
        return Path(hf_hub_download(repo_id, nemo_files[0]))
    except Exception as exc:
        raise OfflineError(f"download of {repo_id}/{nemo_files[0]} failed: {exc}") from exc


def source_kind(source: str, directories: bool = True) -> str:
    """What `source` names: "directory" (a converted model), "nemo" (a local checkpoint), "random" or "hub";
    a ModelError for anything else, before any download or conversion starts.

    `directories=False` (what `convert` takes) refuses directories too, a model directory included."""
    path = Path(source).expanduser()
    if source.startswith(RANDOM_PREFIX):
        name = source[len(RANDOM_PREFIX):]
        if name not in ARCHITECTURES:
            raise ModelError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
        return "random"
    if path.is_dir():
        is_model = (path / CONFIG_NAME).is_file()
        if not directories:
            raise ModelError(f"{path} is a directory, not a .nemo file or hub repo id"
                             + ("; it is already a converted streamasr model" if is_model else ""))
        if not is_model:
            raise ModelError(f"{path} is not a streamasr model directory (no {CONFIG_NAME}); convert a model into it")
        return "directory"
    if path.exists():
        if path.is_file() and (path.suffix == ".nemo" or tarfile.is_tarfile(path)):
            return "nemo"
        raise ModelError(f"{path} is not a .nemo file (a NeMo checkpoint archive)")
    if source.endswith(".nemo"):
        raise ModelError(f"no such .nemo file: {path}")
    if _REPO_ID.match(source):
        return "hub"
    if directories:
        raise ModelError(f"model {source!r} is neither a model directory, a .nemo file nor a hub repo id (owner/name)")
    raise ModelError(f"{source!r} is neither a .nemo file nor a hub repo id (owner/name)")


def check_output(out_dir: Path) -> Path:
    """`out_dir` if a conversion may write it, else a ModelError, before minutes of work: an existing file,
    a directory holding something other than a model (it would be replaced), or a place that cannot be
    created or written."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ModelError(f"output {out} is an existing file; give a directory path for the model")
    if out.is_dir() and not (out / CONFIG_NAME).is_file() and any(out.iterdir()):
        raise ModelError(f"output {out} is a directory holding other files, not a streamasr model; give a new or "
                         "empty directory (a model already there is replaced)")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ModelError(f"cannot create output {out}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ModelError(f"cannot create output {out}: {parent} is not writable")
    return out


def _this_host() -> str:
    return re.sub(r"[^\w-]+", "_", socket.gethostname()) or "host"


def _sibling(out_dir: Path, kind: str) -> Path:
    """A fresh directory beside `out_dir` for this process's work (`kind` "partial") or for a model being
    replaced ("old"). Unique per host, process and call, so that two processes converting the same source
    into the cache never share one; created with the user's umask (unlike mkdtemp's 0700), since it
    becomes the model directory."""
    for _ in range(100):
        path = out_dir.with_name(f"{out_dir.name}.{kind}-{_this_host()}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ModelError(f"cannot create a working directory beside {out_dir}")


def _remove_stale_siblings(out_dir: Path) -> None:
    """Remove what killed conversions of this host left beside `out_dir` (a full model's partial directory
    is gigabytes); a directory of a process still running, here or on another host, is left alone."""
    pattern = re.compile(re.escape(out_dir.name) + r"\.(?:partial|old)-" + re.escape(_this_host())
                         + r"-(\d+)-[0-9a-f]+")
    try:
        siblings = list(out_dir.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        match = pattern.fullmatch(sibling.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(sibling, ignore_errors=True)
        except OSError:  # alive, another user's
            pass


def is_complete(directory: Path) -> bool:
    """A model directory this streamasr can load without re-converting (config.json of the current format)."""
    return (directory / CONFIG_NAME).is_file() and _cached_format(directory) >= FORMAT_VERSION


def _publish(work: Path, out_dir: Path, keep_complete: bool) -> Path:
    """Rename the finished `work` directory to `out_dir`: the only step that makes a model appear there.

    A directory already at `out_dir` is moved aside first and removed after; with `keep_complete` (the
    cache) one that is complete is kept instead, and `work` discarded: another process converting the same
    source finished first."""
    replaced: list[Path] = []
    try:
        for _ in range(10):
            if out_dir.exists() or out_dir.is_symlink():
                if keep_complete and is_complete(out_dir):
                    shutil.rmtree(work)
                    return out_dir
                aside = _sibling(out_dir, "old")
                replaced.append(aside)
                try:
                    os.rename(out_dir, aside / "model")  # (a path inside: `out_dir` may be a symlink)
                except FileNotFoundError:  # removed meanwhile
                    continue
            try:
                os.rename(work, out_dir)
                return out_dir
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # another process put a directory there between our check and our rename: look again
        raise ModelError(f"cannot put the converted model at {out_dir}: other processes keep replacing it")
    finally:
        for aside in replaced:
            shutil.rmtree(aside, ignore_errors=True)


def convert_source(source: str, out_dir: Path, finish: Callable[[Path], None] | None = None,
                   progress: Progress | None = None, keep_complete: bool = False) -> Path:
    """Convert a `.nemo` path, a hub repo id or `random:NAME` into `out_dir` (the convert extra needed).

    Everything, the conversion and then `finish` (the caller's fusion and quantization, given the work
    directory), happens in a directory of this process's own beside `out_dir`, renamed to `out_dir` only
    when all of it succeeded: a killed or failed conversion never leaves a directory at `out_dir` that
    looks like a model. A model already at `out_dir` is replaced, unless `keep_complete` (see `_publish`).
    `progress` is told each step of a random model's build (it takes about a minute); library callers
    that pass none hear nothing."""
    kind = source_kind(source, directories=False)
    # (the cache's own directories, whatever a crash left in them, are simply replaced)
    out_dir = Path(out_dir) if keep_complete else check_output(Path(out_dir))
    _require_convert_extra()
    from streamasr.convert.export import convert_checkpoint

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create output {out_dir}: {exc}") from exc
    _remove_stale_siblings(out_dir)
    work = _sibling(out_dir, "partial")
    try:
        if kind == "random":
            with tempfile.TemporaryDirectory() as scratch:  # outside the model dir: not part of its size
                nemo_path = Path(scratch) / "random.nemo"
                build_random_nemo(source, nemo_path, progress=progress)
                convert_checkpoint(read_nemo(nemo_path), work, model_id=source, random_weights=True,
                                   progress=progress)
        else:
            nemo_path = Path(source).expanduser() if kind == "nemo" else download_nemo(source)
            convert_checkpoint(read_nemo(nemo_path), work, model_id=source)
        if finish is not None:
            finish(work)
        return _publish(work, out_dir, keep_complete)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def cache_name(source: str, nemo_file: Path | None) -> str:
    """A stable cache folder name; a local file is keyed by its path, size and modification time."""
    import hashlib

    if nemo_file is not None:
        st = nemo_file.stat()
        key = f"{nemo_file.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        return f"nemo-{nemo_file.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return re.sub(r"[^\w.-]+", "--", source)


def _cached_format(directory: Path) -> int:
    import json

    try:
        return int(json.loads((directory / CONFIG_NAME).read_text()).get("format_version", 0))
    except (OSError, ValueError, TypeError):
        return 0


def resolve_model(source: str | Path | None, progress: Progress | None = None) -> Path:
    """A model directory for `source`, converting into the cache on first use (`progress`: see
    convert_source). Processes resolving the same source at once each convert in their own directory;
    the first to finish puts its model in place and the others use it."""
    source = str(source or DEFAULT_MODEL)
    path = Path(source).expanduser()
    kind = source_kind(source)
    if kind == "directory":
        return path
    target = cache_root() / cache_name(source, path if kind == "nemo" else None)
    if is_complete(target):
        return target  # (a conversion by an older streamasr is redone below)
    return convert_source(str(path) if kind == "nemo" else source, target, progress=progress, keep_complete=True)
