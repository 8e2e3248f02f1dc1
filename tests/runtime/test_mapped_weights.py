"""Weight files live beside each graph, and the pages ONNX Runtime keeps mapped are handed back after load."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np
import pytest

from streamasr.eval.serve_load import server_process
from streamasr.quant.quantize import quantize_model_dir
from streamasr.runtime import Model
from streamasr.runtime.mapped_weights import clean_file_mappings, release_wanted

linux_only = pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/smaps")


def _mapping(start: int, end: int, perms: str, path: str, anonymous_kb: int) -> str:
    return (f"{start:x}-{end:x} {perms} 00000000 fe:00 123 {path}\n"
            f"Size: {(end - start) // 1024} kB\nRss: 4 kB\nAnonymous: {anonymous_kb} kB\nVmFlags: rd mr\n")


def test_only_unwritten_private_mappings_inside_the_directory_are_chosen(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    smaps = tmp_path / "smaps"
    smaps.write_text(
        _mapping(0x1000, 0x3000, "rw-p", f"{d}/encoder.onnx.data", 0)           # chosen
        + _mapping(0x3000, 0x4000, "r--p", f"{d}/decoder.onnx.data", 0)         # chosen
        + _mapping(0x4000, 0x5000, "rw-p", f"{d}/joint.onnx.data", 8)           # a written page: kept
        + _mapping(0x5000, 0x6000, "rw-s", f"{d}/shared.data", 0)               # shared: kept
        + _mapping(0x6000, 0x7000, "r--p", f"{tmp_path}/other/x.data", 0)       # outside: kept
        + _mapping(0x7000, 0x8000, "r--p", f"{d}/old.onnx.data (deleted)", 0)   # deleted: kept
        + _mapping(0x8000, 0x9000, "rw-p", "", 0))                              # anonymous: kept
    chosen = clean_file_mappings(d, smaps=str(smaps))
    assert [(s, e, Path(p).name) for s, e, p in chosen] == [(0x1000, 0x3000, "encoder.onnx.data"),
                                                            (0x3000, 0x4000, "decoder.onnx.data")]


def test_every_graph_keeps_its_weights_in_a_side_file(tiny_model_dir):
    for graph in ("encoder", "decoder", "joint"):
        onnx_file, data = tiny_model_dir / f"{graph}.onnx", tiny_model_dir / f"{graph}.onnx.data"
        assert data.is_file() and data.stat().st_size > onnx_file.stat().st_size, graph


@pytest.fixture(scope="module")
def int4_dir(tiny_model_dir, tmp_path_factory):
    d = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("mapped") / "m")
    quantize_model_dir(d, "int4-kquant", block_size=32, accuracy_level=4)
    assert (d / "encoder.onnx.data").is_file()
    return d


def _resident_mapped(directory: Path) -> tuple[int, int]:
    """(mapped bytes, resident bytes) of this process's mappings of files in `directory`."""
    root = str(directory.resolve()) + "/"
    mapped = resident = 0
    inside = False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            inside = len(fields) >= 6 and fields[5].startswith(root)
            if inside:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                mapped += end - start
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1]) * 1024
    return mapped, resident


def _encoded(model: Model, audio: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Every encoder frame (its joint projection) and the tokens of one 160 ms stream over `audio`."""
    frames: list[np.ndarray] = []
    stream = model.stream(160, on_chunk=lambda chunk, _new: frames.append(chunk.encoded_proj))
    stream.accept(audio)
    return np.concatenate(frames), stream.finish().token_ids


@linux_only
def test_loading_hands_back_mapped_weight_pages_and_changes_no_output(int4_dir, speech, monkeypatch):
    audio = np.concatenate([speech[n] for n in sorted(speech)[:3]])

    monkeypatch.delenv("STREAMASR_RELEASE_MAPPED", raising=False)
    kept = Model.load_dir(int4_dir, threads=1, release_mapped=False)
    mapped, resident = _resident_mapped(int4_dir)
    assert mapped > 0 and resident > 0, "ONNX Runtime maps the weight files and, kept, they stay resident"
    reference, tokens = _encoded(kept, audio)
    assert reference.std() > 0.1 and len(tokens) > 0, "the model must compute something for this test to mean anything"

    released = Model.load_dir(int4_dir, threads=1)  # drops the pages of every mapping of the directory's files
    mapped, resident = _resident_mapped(int4_dir)
    assert mapped > 0 and resident == 0
    # pages a step reads come back from the file: every encoder output of both models is unchanged, bit for bit
    for model in (released, kept):
        encoded, again = _encoded(model, audio)
        assert np.array_equal(encoded, reference) and again == tokens


def test_weight_files_are_as_readable_as_their_graphs(tiny_model_dir):
    for graph in ("encoder", "decoder", "joint"):
        mode = (tiny_model_dir / f"{graph}.onnx").stat().st_mode & 0o777
        assert (tiny_model_dir / f"{graph}.onnx.data").stat().st_mode & 0o777 == mode, graph


def _resident_in(pid: int, directory: Path) -> int:
    """Resident bytes of process `pid`'s mappings of files in `directory`."""
    root = str(directory.resolve()) + "/"
    resident, inside = 0, False
    for line in open(f"/proc/{pid}/smaps"):
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            inside = len(fields) >= 6 and fields[5].startswith(root)
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1]) * 1024
    return resident


@linux_only
def test_the_server_keeps_weight_pages_unless_told_to_release(int4_dir, monkeypatch):
    """`streamasr serve` keeps them by default (a busy server stalled somewhat more often without them); with
    STREAMASR_RELEASE_MAPPED=1 only what its warm-up steps read comes back."""
    resident = {}
    for env in (None, "1"):
        if env is None:
            monkeypatch.delenv("STREAMASR_RELEASE_MAPPED", raising=False)
        else:
            monkeypatch.setenv("STREAMASR_RELEASE_MAPPED", env)
        with server_process(int4_dir, ["--threads", "1"]) as (server, _port):
            resident[env] = _resident_in(server.pid, int4_dir)
    assert resident[None] > resident["1"] > 0, resident


def test_the_environment_overrides_the_loaders_choice(monkeypatch):
    monkeypatch.delenv("STREAMASR_RELEASE_MAPPED", raising=False)
    assert release_wanted(True) and not release_wanted(False)
    monkeypatch.setenv("STREAMASR_RELEASE_MAPPED", "0")
    assert not release_wanted(True)
    monkeypatch.setenv("STREAMASR_RELEASE_MAPPED", "1")
    assert release_wanted(False)


@linux_only
def test_a_loader_that_keeps_the_pages_is_overridden_by_the_environment(int4_dir, monkeypatch):
    monkeypatch.setenv("STREAMASR_RELEASE_MAPPED", "1")
    model = Model.load_dir(int4_dir, threads=1, release_mapped=False)
    mapped, resident = _resident_mapped(int4_dir)
    assert model.backend.release_mapped and mapped > 0 and resident == 0
