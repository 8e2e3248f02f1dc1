"""`streamasr bench fidelity` on a multilingual prompt model: drift against fp32 per (variant, language).

The prompt changes what the joint sees, so a quantized variant can drift differently per language. The
rows must really be per language (each fp32 reference run equals that language's own transcription, and the
languages give different outputs) and the table must say which language each row is.
"""

from __future__ import annotations

import json
import shutil

import pytest

from streamasr.cli import main
from streamasr.eval.fidelity import fidelity_languages
from streamasr.quant.quantize import quantize_model_dir
from streamasr.runtime import Model

FILES = ["arctic_slt_a0005.wav", "ls_2412-153948-0000.wav"]
LANGUAGES = ["en-US", "de-DE", "auto"]


@pytest.fixture(scope="module")
def prompt_int8_dir(prompt_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("ml-int8") / "tiny-ml-int8"
    shutil.copytree(prompt_model_dir, d)
    quantize_model_dir(d, "int8")
    return d


def test_fidelity_rows_per_language(prompt_model_dir, prompt_int8_dir, speech_manifest, speech, tmp_path, capsys):
    audio = {it["audio"]: str(it["path"]) for it in speech_manifest if it["audio"] in FILES}
    out = tmp_path / "fid.json"
    rc = main(["bench", "fidelity", "--model", str(prompt_int8_dir), "--reference", str(prompt_model_dir),
               "--audio", *audio.values(), "--latency", "320", "--languages", ",".join(LANGUAGES),
               "--threads", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    data = json.loads(out.read_text())
    assert data["languages"] == LANGUAGES
    rows = data["rows"]
    assert [r["language"] for r in rows if r["audio"] == "ALL"] == LANGUAGES  # one ALL row per (variant, language)
    assert len(rows) == len(LANGUAGES) * (len(FILES) + 1)
    reference = Model.load_dir(prompt_model_dir, threads=1)
    by_language: dict[str, list] = {}
    for r in rows:
        if r["audio"] == "ALL":
            continue
        samples = speech[next(k for k, v in audio.items() if v == r["audio"])]
        assert r["reference_text"] == reference.transcribe(samples, 320, language=r["language"]).text
        by_language.setdefault(r["language"], []).append((r["reference_text"], r["model_text"]))
        assert 0.0 <= r["token_agreement"] <= 1.0 and r["proj_cosine_min"] > 0.9
    assert len({tuple(v) for v in by_language.values()}) == len(LANGUAGES)  # each language its own outputs
    # the drift is measured per language: the errors are not one number copied to every row
    assert len({r["proj_max_abs"] for r in rows if r["audio"] == "ALL"}) > 1
    assert len({r["max_abs"] for r in rows if r["audio"] == "ALL"}) > 1  # the prompt's output: per language
    table = [line for line in text.splitlines() if line.startswith("| int8")]
    assert len(table) == len(rows)
    assert "| language |" in text and "joint proj max abs" in text
    assert [line.split("|")[3].strip() for line in table if "| ALL |" in line] == LANGUAGES


def test_default_languages_and_bad_languages(prompt_model_dir, tiny_model_dir, capsys):
    model = Model.load_dir(prompt_model_dir, threads=1)
    assert fidelity_languages(model, None) == ["en-US", "de-DE", "ja-JP", "auto"]  # the model's default first
    assert fidelity_languages(model, "auto, de-DE,auto") == ["auto", "de-DE"]
    rc = main(["bench", "fidelity", "--model", str(prompt_model_dir), "--reference", str(prompt_model_dir),
               "--languages", "en-US,xx-XX"])
    err = capsys.readouterr().err
    assert rc == 2 and "xx-XX" in err and "de-DE" in err
    rc = main(["bench", "fidelity", "--model", str(tiny_model_dir), "--reference", str(tiny_model_dir),
               "--languages", "de-DE"])
    assert rc == 2 and "no language prompt" in capsys.readouterr().err
    rc = main(["bench", "fidelity", "--model", str(tiny_model_dir), "--reference", str(prompt_model_dir)])
    assert rc == 2 and "different languages" in capsys.readouterr().err
