"""Where models come from: a model directory, a `.nemo` file, a Hugging Face repo id, or `random:NAME`.

Anything that is not already a model directory is converted once into the cache
(`~/.cache/streamasr/`, or `$STREAMASR_CACHE`) and loaded from there afterwards, so that
`streamasr transcribe talk.wav` is the whole story on a connected machine.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from streamasr.convert.nemo_file import read_nemo
from streamasr.convert.random_model import RANDOM_PREFIX, build_random_nemo
from streamasr.errors import ModelError, OfflineError
from streamasr.model_config import CONFIG_NAME, FORMAT_VERSION

DEFAULT_MODEL = "nvidia/nemotron-speech-streaming-en-0.6b"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def download_nemo(repo_id: str) -> Path:
    """Fetch the `.nemo` file of a Hugging Face model repo into the usual HF cache."""
    try:
        from huggingface_hub import hf_hub_download, list_repo_files
        from huggingface_hub.errors import RepositoryNotFoundError
    except ImportError as exc:  # pragma: no cover - a runtime dependency
        raise ModelError("huggingface_hub is required to download models") from exc
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # one clear error below instead of a retry log
    try:
        files = list_repo_files(repo_id)
    except RepositoryNotFoundError as exc:
        raise ModelError(f"no such model on the Hugging Face hub: {repo_id}") from exc
    except Exception as exc:  # connection errors come in many types
        try:  # offline: a previous download may still be in the HF cache
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=["*.nemo"]))
            found = sorted(local.glob("*.nemo"))
            if found:
                return found[0]
        except Exception:
            pass
        raise OfflineError(
            f"cannot reach the Hugging Face hub to download {repo_id} ({type(exc).__name__}); "
            "download the .nemo file elsewhere and pass its path, e.g. "
            "`streamasr convert path/to/model.nemo -o models/nemotron-en`"
        ) from exc
    nemo_files = [f for f in files if f.endswith(".nemo")]
    if not nemo_files:
        raise ModelError(f"{repo_id} has no .nemo file; streamasr converts NeMo checkpoints")
    try:
        return Path(hf_hub_download(repo_id, nemo_files[0]))
    except Exception as exc:
        raise OfflineError(f"download of {repo_id}/{nemo_files[0]} failed: {exc}") from exc


def convert_source(source: str, out_dir: Path) -> Path:
    """Convert a `.nemo` path, a hub repo id or `random:NAME` into `out_dir` (the convert extra needed)."""
    _require_convert_extra()
    from streamasr.convert.export import convert_checkpoint

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if source.startswith(RANDOM_PREFIX):
            with tempfile.TemporaryDirectory() as scratch:  # outside the model dir: not part of its size
                nemo_path = Path(scratch) / "random.nemo"
                build_random_nemo(source, nemo_path)
                convert_checkpoint(read_nemo(nemo_path), tmp, model_id=source, random_weights=True)
        else:
            nemo_path = Path(source) if source.endswith(".nemo") else download_nemo(source)
            convert_checkpoint(read_nemo(nemo_path), tmp, model_id=source)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


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


def resolve_model(source: str | Path | None) -> Path:
    """A model directory for `source`, converting into the cache on first use."""
    source = str(source or DEFAULT_MODEL)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise ModelError(f"{path} is not a streamasr model directory (no {CONFIG_NAME}); convert a model into it")
        return path
    if source.endswith(".nemo"):
        if not path.is_file():
            raise ModelError(f"no such .nemo file: {path}")
    elif not (source.startswith("random:") or _REPO_ID.match(source)):
        raise ModelError(f"model {source!r} is neither a model directory, a .nemo file nor a hub repo id (owner/name)")
    target = cache_root() / cache_name(source, path if path.is_file() else None)
    if (target / CONFIG_NAME).is_file() and _cached_format(target) >= FORMAT_VERSION:
        return target  # (a conversion by an older streamasr is redone below)
    return convert_source(str(path) if path.is_file() else source, target)
