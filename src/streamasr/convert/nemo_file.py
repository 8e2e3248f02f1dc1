"""Read and write `.nemo` archives without NeMo.

A `.nemo` file is a tar archive (usually uncompressed) holding `model_config.yaml`, `model_weights.ckpt`
(a `torch.save`d state dict) and artifacts named `<uuid>_<name>` (the SentencePiece tokenizer). Reading it
directly keeps NeMo out of the conversion path; writing it lets us build random-weight test models
that NeMo itself can restore.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamasr.errors import ModelError


#: a key of the `.nemo` configs streamasr writes with random weights (convert/random_model.py): the converter
#: records it in the model directory (`random_weights`), so that no conversion of such a file passes for a
#: trained model
RANDOM_MARKER = "streamasr_random_weights"


@dataclass
class NemoCheckpoint:
    """The contents of a `.nemo` archive that the converter needs."""

    config: dict[str, Any]
    state_dict: dict[str, Any]  # name -> torch.Tensor
    artifacts: dict[str, bytes]  # artifact base name (uuid prefix removed) -> bytes
    sha256: str

    def artifact(self, config_path: str | None, fallback_suffix: str) -> bytes:
        """Find an artifact by its `nemo:<uuid>_name` config pointer, or by file-name suffix."""
        if config_path:
            name = str(config_path).split("nemo:", 1)[-1]
            base = _strip_uuid(Path(name).name)
            if base in self.artifacts:
                return self.artifacts[base]
        for base, data in self.artifacts.items():
            if base.endswith(fallback_suffix):
                return data
        raise ModelError(f"the .nemo archive has no {fallback_suffix} artifact")


def _strip_uuid(name: str) -> str:
    head, sep, tail = name.partition("_")
    if sep and len(head) == 32 and all(c in "0123456789abcdef" for c in head):
        return tail
    return name


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_nemo(path: Path) -> NemoCheckpoint:
    """Load config, weights and artifacts from a `.nemo` file (needs torch and pyyaml)."""
    import torch
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no such .nemo file: {path}")
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ModelError(f"{path} is not a .nemo archive (not a readable tar file): {exc}") from exc
    config = None
    state_dict = None
    artifacts: dict[str, bytes] = {}
    with tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            name = Path(member.name).name
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if name == "model_config.yaml":
                config = yaml.safe_load(data.decode("utf-8"))
            elif name == "model_weights.ckpt":
                state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            else:
                artifacts[_strip_uuid(name)] = data
    if config is None or state_dict is None:
        raise ModelError(f"{path} lacks model_config.yaml or model_weights.ckpt; is it a NeMo model?")
    return NemoCheckpoint(config=config, state_dict=dict(state_dict), artifacts=artifacts, sha256=file_sha256(path))


def write_nemo(path: Path, config: dict[str, Any], state_dict: dict[str, Any], artifacts: dict[str, bytes]) -> None:
    """Write a `.nemo` archive the way NeMo's SaveRestoreConnector lays it out.

    `artifacts` maps a base name (e.g. `tokenizer.model`) to bytes; each gets a uuid prefix, and every
    string value `nemo:<base name>` in `config` is rewritten to point at it.
    """
    import torch
    import yaml

    prefixed = {base: f"{uuid.uuid4().hex}_{base}" for base in artifacts}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: rewrite(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        if isinstance(node, str) and node.startswith("nemo:") and node[5:] in prefixed:
            return "nemo:" + prefixed[node[5:]]
        return node

    members: list[tuple[str, bytes]] = [("model_config.yaml", yaml.safe_dump(rewrite(config)).encode())]
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    members.append(("model_weights.ckpt", buf.getvalue()))
    members += [(prefixed[base], data) for base, data in artifacts.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:") as tar:
        for name, data in members:
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
