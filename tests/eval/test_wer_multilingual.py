"""`streamasr bench wer` on multilingual sets: languages per manifest line and per set (FLEURS), the prompt
each utterance is streamed with, CER for ja/zh/ko/th, the per-language table and its macro average.

The end-to-end tests run the real runner with a recording model: each utterance's hypothesis is fixed in
advance (keyed by its audio length), so every error rate is known exactly, and every prompt the runner asks
for is recorded. They need no ONNX session and run in a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import pytest

from streamasr.audio import read_audio
from streamasr.cli import main
from streamasr.errors import StreamASRError
from streamasr.eval import wer as wer_mod
from streamasr.eval.datasets import (
    FLEURS_REPO,
    FLEURS_REVISION,
    FleursDataset,
    open_dataset,
)
from streamasr.eval.languages import (
    display_locale,
    metric_for,
    prompt_for,
    resolve_prompt,
    same_language,
)
from streamasr.eval.normalize import normalize, normalizer_for
from streamasr.eval.stats import char_errors, unit_errors
from streamasr.model_config import ModelConfig
from streamasr.runtime.stream import Result

SPEECH_DIR = Path(os.environ.get("STREAMASR_SPEECH_DIR", Path(__file__).resolve().parents[3] / "shared/data/speech"))

# a part of the 3.5 checkpoint's prompt dictionary (aliases included), as a prompt model's `languages`
LANGUAGES = {"en-US": 0, "en": 0, "es-ES": 2, "es-US": 3, "es": 3, "zh-CN": 4, "ar-AR": 7, "ar": 7, "fr-FR": 8,
             "fr": 8, "de-DE": 9, "de": 9, "ja-JP": 10, "ko-KR": 14, "th-TH": 32, "fr-CA": 100, "auto": 101,
             "nb-NO": 103, "nb": 103}


# ----------------------------------------------------------------------------- pure logic
def test_cer_on_a_known_pair():
    # 今天天气很好 -> 今天天汽好: 气->汽 substituted, 很 deleted: 2 errors over 6 characters
    e = char_errors("今天天气很好", "今天天汽好")
    assert (e.substitutions, e.deletions, e.insertions, e.ref_words) == (1, 1, 0, 6)
    assert e.errors / e.ref_words == pytest.approx(2 / 6)
    # spaces are not characters: segmenting differently costs nothing
    assert char_errors("今天 天气", "今天天气").errors == 0
    assert unit_errors("今天 天气", "今天天气", "wer").errors == 2  # while word-level scoring would count 2
    assert char_errors("", "ab").insertions == 2 and char_errors("ab", "").deletions == 2
    with pytest.raises(ValueError):
        unit_errors("a", "a", "per")


@pytest.mark.parametrize("language,metric", [
    ("ja-JP", "cer"), ("ja_jp", "cer"), ("zh-CN", "cer"), ("cmn_hans_cn", "cer"), ("yue_hant_hk", "cer"),
    ("ko-KR", "cer"), ("th_th", "cer"), ("de-DE", "wer"), ("en", "wer"), ("hi-IN", "wer"), (None, "wer"),
])
def test_metric_by_language(language, metric):
    assert metric_for(language) == metric


@pytest.mark.parametrize("requested,key", [
    ("de-DE", "de-DE"), ("de_de", "de-DE"), ("DE-de", "de-DE"), ("en_us", "en-US"), ("fr_ca", "fr-CA"),
    ("es_419", "es"),           # Latin American Spanish: the bare-language key (es-US's slot)
    ("cmn_hans_cn", "zh-CN"),   # FLEURS's Mandarin config
    ("ar_eg", "ar"),            # Egyptian Arabic: the bare language
    ("nb_no", "nb-NO"), ("ko_kr", "ko-KR"), ("th_th", "th-TH"), ("auto", "auto"),
    ("xx_yy", None), ("yue_hant_hk", None), ("pt_br", None),
])
def test_fleurs_and_manifest_locales_map_to_prompt_keys(requested, key):
    assert resolve_prompt(requested, LANGUAGES) == key


def test_unique_slot_of_a_language_is_found_without_a_bare_key():
    assert resolve_prompt("ja_xx", {"ja-JP": 10, "ja-JA": 10, "auto": 101}) == "ja-JP"
    assert resolve_prompt("fr_be", {"fr-FR": 8, "fr-CA": 100}) is None  # two slots: ambiguous, not guessed


def test_prompt_for_errors():
    assert prompt_for(None, LANGUAGES, "m") is None
    assert prompt_for("en-US", {}, "english") is None  # an English model needs no prompt for English
    assert prompt_for(None, {}, "english") is None
    with pytest.raises(StreamASRError, match=r"m.jsonl:3: language 'de-DE': model english has no language prompt"):
        prompt_for("de-DE", {}, "english", "m.jsonl:3")
    with pytest.raises(StreamASRError, match="no language prompt"):
        prompt_for("auto", {}, "english")
    with pytest.raises(StreamASRError) as exc:
        prompt_for("xx-XX", LANGUAGES, "ml", "m.jsonl:2")
    assert str(exc.value).startswith("m.jsonl:2: language 'xx-XX' is not one of model ml's languages (")
    assert "de-DE" in str(exc.value) and "auto" in str(exc.value)


def test_locale_display_and_language_identity():
    assert display_locale("de_de") == "de-DE"
    assert display_locale("cmn_hans_cn") == "cmn-Hans-CN"
    assert display_locale("es_419") == "es-419"
    assert same_language("de-DE", "de_de") and same_language("zh-CN", "cmn-Hans-CN")
    assert not same_language("de-DE", "en-US") and not same_language(None, "en-US")


def test_non_english_normalizer_keeps_marks_and_words():
    assert normalizer_for("de-DE", "leaderboard") == "basic"
    assert normalizer_for("en-GB", "leaderboard") == "leaderboard" and normalizer_for(None, "whisper") == "whisper"
    assert normalize("Grüße, Herr Müller! (lacht)", "basic") == "grüße herr müller"
    # Devanagari vowel signs and the virama are marks: Whisper's default would split नमस्ते into pieces
    assert normalize("नमस्ते, दुनिया!", "basic") == "नमस्ते दुनिया"
    assert normalize("「今日は、良い天気です。」", "basic") == "今日は 良い天気です"


# ----------------------------------------------------------------------------- datasets
def _write_manifest(tmp_path: Path, lines: list[dict | str]) -> Path:
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                 encoding="utf-8")
    return p


def test_manifest_language_field(tmp_path):
    m = _write_manifest(tmp_path, [
        {"audio": str(SPEECH_DIR / "arctic_slt_a0001.wav"), "text": "a", "language": "de-DE"},
        {"audio": str(SPEECH_DIR / "arctic_slt_a0002.wav"), "text": "b"},
        {"audio": str(SPEECH_DIR / "arctic_slt_a0003.wav"), "text": "c", "language": 7},
    ])
    items = list(open_dataset(f"manifest:{m}").items())
    assert [it.language for it in items[:2]] == ["de-DE", None]
    assert items[0].meta["where"] == f"{m}:1"
    assert items[2].error and f"{m}:3" in items[2].error and "language" in items[2].error


class _FakeStreaming:
    def __init__(self, rows):
        self.rows = rows

    def cast_column(self, *a):
        return self

    def __iter__(self):
        return iter(self.rows)


def test_fleurs_reads_the_parquet_copy_with_the_locale(monkeypatch):
    import datasets

    calls = []
    rows = [{"id": 7, "raw_transcription": "Hallo Welt.", "transcription": "hallo welt", "audio": {"bytes": b"x"}},
            {"id": 7, "raw_transcription": "Guten Tag.", "transcription": "guten tag", "audio": {"bytes": b"y"}}]

    def fake_load(repo, config, **kw):
        calls.append((repo, config, kw))
        return _FakeStreaming(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    ds = open_dataset("fleurs:de_de")
    assert isinstance(ds, FleursDataset) and ds.name == "fleurs-de_de" and ds.language == "de_de"
    items = list(ds.items())
    assert calls == [(FLEURS_REPO, "de_de", {"split": "test", "streaming": True, "revision": FLEURS_REVISION})]
    assert [it.text for it in items] == ["Hallo Welt.", "Guten Tag."]  # cased and punctuated
    assert [it.language for it in items] == ["de_de", "de_de"]
    assert len({it.id for it in items}) == 2  # one sentence read twice: two recordings
    assert open_dataset("fleurs:ja_jp:validation").split == "validation"
    with pytest.raises(StreamASRError, match="not a FLEURS locale"):
        open_dataset("fleurs:German")


def test_fleurs_offline_fails_with_one_line(monkeypatch, tiny_model_dir, tmp_path, capsys):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'google/fleurs' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(StreamASRError) as exc:
        list(open_dataset("fleurs:de_de").items(2))
    msg = str(exc.value)
    assert "\n" not in msg and FLEURS_REPO in msg and "de_de" in msg and "manifest:" in msg
    code = main(["bench", "wer", "--model", str(tiny_model_dir), "--allow-random", "--no-progress",
                 "--dataset", "fleurs:de_de", "--language", "en-US", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and FLEURS_REPO in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the runner, with a recording model
class _Stream:
    def __init__(self, model, language):
        self.model, self.language, self.n, self.steps = model, language, 0, 0

    def accept(self, samples):
        self.n += samples.size
        self.steps += 1
        return ""

    def finish(self):
        text, detected = self.model.answers[self.n]
        return Result(text=text, token_ids=[], token_times_s=[], token_logprobs=[], tokens=[],
                      audio_s=self.n / 16000, latency_ms=560, chunks=self.steps,
                      language=detected if self.language == "auto" else self.language)


class RecordingModel:
    """A prompt model whose hypotheses are given in advance; records the language of every stream."""

    languages: ClassVar[dict] = LANGUAGES
    default_language = "en-US"
    answers: ClassVar[dict] = {}
    calls: ClassVar[list] = []
    config = None

    def __init__(self, config):
        self.config = config

    @classmethod
    def load_dir(cls, directory, threads=None):
        return cls(ModelConfig.load(Path(directory)))

    @property
    def sample_rate(self):
        return 16000

    @property
    def latency_modes(self):
        return [560]

    def stream(self, latency_ms=None, language=None):
        assert language is None or language in self.languages  # the runner hands over exact prompt keys
        type(self).calls.append(language)
        return _Stream(self, language)


class EnglishRecordingModel(RecordingModel):
    languages: ClassVar[dict] = {}
    default_language = None


# (file, language, reference, hypothesis, language the model detects in auto mode)
UTTERANCES = [
    ("arctic_slt_a0001.wav", "de-DE", "Eins, zwei, drei, vier.", "eins zwei drei", "de-DE"),      # 1/4 words
    ("arctic_slt_a0002.wav", "de-DE", "Hallo Welt!", "Hallo, Welt.", "fr-FR"),                   # 0/2
    ("arctic_slt_a0003.wav", "ja-JP", "今日は良い天気です。", "今日はいい天気です", "ja-JP"),         # 1/9 chars
    ("arctic_slt_a0004.wav", "en-US", "Hello world", "hello word", "en-US"),                     # 1/2 words
]
DE, JA, EN = 1 / 6, 1 / 9, 1 / 2


@pytest.fixture
def recording(monkeypatch):
    answers = {read_audio(SPEECH_DIR / f).size: (hyp, det) for f, _, _, hyp, det in UTTERANCES}
    assert len(answers) == len(UTTERANCES)  # the lengths tell the utterances apart
    monkeypatch.setattr(RecordingModel, "answers", answers)
    monkeypatch.setattr(RecordingModel, "calls", [])
    monkeypatch.setattr(wer_mod, "Model", RecordingModel)
    return RecordingModel


def _manifest(tmp_path, with_language=True):
    return _write_manifest(tmp_path, [{"audio": str(SPEECH_DIR / f), "text": ref,
                                       **({"language": lang} if with_language else {})}
                                      for f, lang, ref, _, _ in UTTERANCES])


def _bench(capsys, tmp_path, *argv):
    code = main(["bench", "wer", "--allow-random", "--no-progress", "--bootstrap", "50", "--out",
                 str(tmp_path / "o"), *argv])
    cap = capsys.readouterr()
    summary = json.loads((tmp_path / "o" / "summary.json").read_text()) if code == 0 else None
    return code, cap.out, cap.err, summary


def test_per_language_table_cer_and_macro_average(tmp_path, tiny_model_dir, recording, capsys):
    m = _manifest(tmp_path)
    code, out, err, summary = _bench(capsys, tmp_path, "--model", str(tiny_model_dir), "--dataset", f"manifest:{m}")
    assert code == 0, err
    assert recording.calls == ["de-DE", "de-DE", "ja-JP", "en-US"]  # each utterance with its own prompt
    by_lang = {r["language"]: r for r in summary["languages"]}
    assert list(by_lang) == ["de-DE", "ja-JP", "en-US"]
    assert by_lang["de-DE"]["error_rate"] == pytest.approx(DE, abs=1e-6) and by_lang["de-DE"]["metric"] == "wer"
    assert by_lang["ja-JP"]["error_rate"] == pytest.approx(JA, abs=1e-6) and by_lang["ja-JP"]["metric"] == "cer"
    assert by_lang["ja-JP"]["ref_units"] == 9 and by_lang["de-DE"]["ref_units"] == 6
    assert by_lang["en-US"]["error_rate"] == pytest.approx(EN, abs=1e-6)
    assert by_lang["de-DE"]["prompts"] == ["de-DE"] and by_lang["de-DE"]["lid_accuracy"] is None
    (mean,) = summary["language_means"]
    macro = (DE + JA + EN) / 3
    assert mean["macro_average"] == pytest.approx(macro, abs=1e-6) and mean["n_languages"] == 3
    assert mean["metrics"] == {"wer": 2, "cer": 1}
    # a set mixing words and characters reports the macro average of its languages, not a pooled ratio
    (row,) = summary["rows"]
    assert row["metric"] == "macro" and row["wer"] == pytest.approx(macro, abs=1e-6) and row["ci_low"] is None
    assert f"| ja-JP | ja-JP | CER | {100 * JA:.2f} |" in out
    assert f"| de-DE | de-DE | WER | {100 * DE:.2f} |" in out
    assert f"**macro average, 3 languages** | | 2 WER + 1 CER | {100 * macro:.2f} |" in out
    assert "| macro avg |" in out and "basic for other languages" in out
    recs = {r["id"]: r for r in map(json.loads, next((tmp_path / "o" / "utterances").glob("*.jsonl"))
                                     .read_text().splitlines())}
    ja = recs[str(SPEECH_DIR / "arctic_slt_a0003.wav")]
    assert ja["metric"] == "cer" and ja["ref_norm"] == "今日は良い天気です" and ja["errors"] == 1
    de = recs[str(SPEECH_DIR / "arctic_slt_a0002.wav")]
    assert de["errors"] == 0 and de["prompt"] == "de-DE"  # punctuation and case normalized away on both sides


def test_language_option_sets_prompt_and_scores_lid(tmp_path, tiny_model_dir, recording, capsys):
    m = _manifest(tmp_path)
    args = ["--model", str(tiny_model_dir), "--dataset", f"manifest:{m}"]
    code, out, err, _ = _bench(capsys, tmp_path, *args)
    assert code == 0, err
    recording.calls.clear()
    code, out, err, summary = _bench(capsys, tmp_path, *args, "--language", "auto")
    assert code == 0, err
    # finished results of another prompt are not reused: every utterance is redone in auto mode
    assert recording.calls == ["auto"] * 4
    by_lang = {r["language"]: r for r in summary["languages"]}
    assert by_lang["de-DE"]["prompts"] == ["auto"]
    assert by_lang["de-DE"]["lid_accuracy"] == 0.5 and by_lang["de-DE"]["n_lid"] == 2  # fr-FR detected once
    assert by_lang["ja-JP"]["lid_accuracy"] == 1.0
    assert "50.0 (n=2)" in out
    recording.calls.clear()
    assert _bench(capsys, tmp_path, *args, "--language", "auto")[0] == 0 and recording.calls == []  # resumed


def test_language_option_for_a_set_without_languages(tmp_path, tiny_model_dir, recording, capsys):
    m = _manifest(tmp_path, with_language=False)
    code, _, err, summary = _bench(capsys, tmp_path, "--model", str(tiny_model_dir), "--dataset", f"manifest:{m}",
                                     "--language", "ja_jp")
    assert code == 0, err
    assert recording.calls == ["ja-JP"] * 4  # the FLEURS-style name maps to the model's key
    (lang,) = summary["languages"]
    assert lang["language"] == "ja-JP" and lang["metric"] == "cer"
    (row,) = summary["rows"]
    assert row["metric"] == "cer" and row["ci_low"] is not None  # one language: an ordinary corpus CER


def test_a_set_of_several_word_languages_reports_their_mean(tmp_path, tiny_model_dir, recording, capsys):
    lines = [{"audio": str(SPEECH_DIR / f), "text": ref, "language": lang} for f, lang, ref, _, _ in UTTERANCES
             if lang != "ja-JP"]
    m = _write_manifest(tmp_path, lines)
    code, _, err, summary = _bench(capsys, tmp_path, "--model", str(tiny_model_dir), "--dataset", f"manifest:{m}")
    assert code == 0, err
    (row,) = summary["rows"]
    # de-DE 1/6 and en-US 1/2 are both WER; pooled they would be 2/8, but each language counts once
    assert row["metric"] == "macro" and row["wer"] == pytest.approx((DE + EN) / 2, abs=1e-6)
    assert summary["paired"] == []


def test_unknown_locale_names_the_line_before_any_work(tmp_path, tiny_model_dir, recording, capsys):
    lines = [{"audio": str(SPEECH_DIR / f), "text": ref, "language": lang} for f, lang, ref, _, _ in UTTERANCES]
    lines[2]["language"] = "xx-XX"
    m = _write_manifest(tmp_path, lines)
    code, _, err, _ = _bench(capsys, tmp_path, "--model", str(tiny_model_dir), "--dataset", f"manifest:{m}")
    assert code == 2 and f"{m}:3" in err and "'xx-XX'" in err and "de-DE" in err
    assert recording.calls == []
    code, _, err, _ = _bench(capsys, tmp_path, "--model", str(tiny_model_dir), "--dataset", f"manifest:{m}",
                             "--language", "klingon")
    assert code == 2 and "--language: language 'klingon'" in err


def test_english_model_refuses_other_languages(tmp_path, tiny_model_dir, recording, monkeypatch, capsys):
    monkeypatch.setattr(wer_mod, "Model", EnglishRecordingModel)
    m = _manifest(tmp_path)
    code, _, err, _ = _bench(capsys, tmp_path, "--model", str(tiny_model_dir), "--dataset", f"manifest:{m}")
    assert code == 2 and f"{m}:1" in err and "English only" in err
    english = _write_manifest(tmp_path, [{"audio": str(SPEECH_DIR / "arctic_slt_a0004.wav"), "text": "Hello world",
                                          "language": "en-US"}])
    code, _, err, summary = _bench(capsys, tmp_path, "--model", str(tiny_model_dir), "--dataset",
                                     f"manifest:{english}", "--fresh")
    assert code == 0, err
    assert recording.calls == [None]  # no prompt for a model without one
    assert summary["languages"][0]["prompts"] == [] and summary["rows"][0]["metric"] == "wer"


# ----------------------------------------------------------------------------- a real prompt model
def test_real_prompt_model_streams_each_utterance_with_its_language(prompt_model_dir, speech, tmp_path, capsys):
    """The runner's hypotheses are the stream's own output in each line's language (auto included), and
    the language changes them: the prompt reached the model."""
    from streamasr.runtime import Model

    model = Model.load_dir(prompt_model_dir, threads=1)
    lines = [("arctic_slt_a0005.wav", "de-DE"), ("ls_2412-153948-0000.wav", "ja-JP"), ("arctic_slt_a0005.wav", "auto")]
    m = _write_manifest(tmp_path, [{"id": f"u{i}", "audio": str(SPEECH_DIR / f), "text": "x", "language": lang}
                                   for i, (f, lang) in enumerate(lines)])
    code, _, err, summary = _bench(capsys, tmp_path, "--model", str(prompt_model_dir), "--dataset", f"manifest:{m}",
                                     "--latency", "320")
    assert code == 0, err
    recs = {r["id"]: r for r in map(json.loads, next((tmp_path / "o" / "utterances").glob("*.jsonl"))
                                     .read_text().splitlines())}
    differs = 0
    for i, (f, lang) in enumerate(lines):
        rec = recs[f"u{i}"]
        expected = model.transcribe(speech[f], 320, language=lang)
        assert rec["prompt"] == lang and rec["hyp"] == expected.text, (f, lang)
        if lang == "auto":
            assert rec["detected_language"] == expected.language
        differs += expected.token_ids != model.transcribe(speech[f], 320, language="en-US").token_ids
    assert differs >= 2
    # "auto" names a prompt, not the utterance's language: that line is scored, by WER, as unspecified
    assert [(r["language"], r["metric"]) for r in summary["languages"]] == [("de-DE", "wer"), ("ja-JP", "cer"),
                                                                          (None, "wer")]
