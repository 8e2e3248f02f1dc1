"""A multilingual model's language, as users reach it: the command line, the Python API, the WebSocket server and
the OpenAI route; and the one-line errors for a language the model does not have, a language on an English model
and a latency the checkpoint was not trained for."""

from __future__ import annotations

import json

import pytest
from test_cli import assert_user_error, run_cli

from streamasr.runtime import Model
from streamasr.serve.client import stream_url, transcribe_url

AUDIO = "ls_2412-153948-0000.wav"


@pytest.fixture(scope="module")
def prompt_model(prompt_model_dir):
    return Model.load_dir(prompt_model_dir, threads=1)


def test_transcribe_language_json(prompt_model, prompt_model_dir, speech, speech_manifest):
    path = next(str(it["path"]) for it in speech_manifest if it["audio"] == AUDIO)
    outputs = {}
    for language in ("de-DE", "fr-FR"):
        proc = run_cli("transcribe", path, "--model", str(prompt_model_dir), "--language", language, "--json",
                       "--allow-random")
        assert proc.returncode == 0, proc.stderr.decode()
        out = json.loads(proc.stdout)
        assert out["language"] == language
        assert out["token_ids"] == prompt_model.transcribe(speech[AUDIO], language=language).token_ids
        assert all(s["language"] == language for s in out["segments"])
        outputs[language] = out["token_ids"]
    assert outputs["de-DE"] != outputs["fr-FR"]


def test_list_languages(prompt_model_dir, tiny_model_dir):
    proc = run_cli("transcribe", "--list-languages", "--model", str(prompt_model_dir))
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "default en-US" in out and "320 ms (default)" in out
    assert "  101  auto" in out and "   27  no-NO, no" in out
    proc = run_cli("transcribe", "--list-languages", "--model", str(tiny_model_dir))
    assert proc.returncode == 0 and "no language prompt" in proc.stdout.decode()


def test_bad_language_and_latency_are_one_line(prompt_model_dir, tiny_model_dir, speech_manifest):
    path = str(speech_manifest[0]["path"])
    assert_user_error(run_cli("transcribe", path, "--model", str(prompt_model_dir), "--language", "xx-XX",
                              "--allow-random"), "unknown language 'xx-XX'", "de-DE", "auto")
    assert_user_error(run_cli("transcribe", path, "--model", str(tiny_model_dir), "--language", "de-DE",
                              "--allow-random"), "has no language prompt")
    assert_user_error(run_cli("transcribe", path, "--model", str(prompt_model_dir), "--latency", "160",
                              "--allow-random"), "unknown latency mode 160", "80, 320, 560, 1120")


def test_python_api(prompt_model, speech):
    assert prompt_model.default_language == "en-US" and "auto" in prompt_model.languages
    x = speech[AUDIO]
    default = prompt_model.transcribe(x)
    assert default.language == "en-US" and default.token_ids == prompt_model.transcribe(x, language="en-US").token_ids
    assert prompt_model.transcribe(x, language="en").token_ids == default.token_ids  # the same prompt slot
    with pytest.raises(Exception, match="unknown language"):
        prompt_model.stream(language="klingon")
    stream = prompt_model.stream(language="de-DE")
    with pytest.raises(Exception, match="unknown language"):
        stream.set_language("xx")
    assert stream.language == "de-DE"


def test_server_language_query(prompt_model_dir, prompt_model, speech):
    from streamasr.runtime.endpoint import EndpointConfig
    from streamasr.serve.server import ServerConfig, ServerThread

    st = ServerThread(prompt_model, ServerConfig(port=0, host="127.0.0.1",
                                                 endpoint=EndpointConfig(silence_ms=0, max_utterance_s=0)))
    port = st.start()
    try:
        x = speech[AUDIO][: 16000 * 6]
        url = stream_url(f"ws://127.0.0.1:{port}", 320, "pcm_f32le") + "&language=fr-FR"
        res = transcribe_url(url, x, block_ms=100, encoding="pcm_f32le", timeout=60)
        assert res.close_code == 1000 and not res.errors
        assert res.finals[-1]["language"] == "fr-FR"
        assert res.finals[-1]["text"] == prompt_model.transcribe(x, 320, language="fr-FR").text.strip()
        bad = transcribe_url(stream_url(f"ws://127.0.0.1:{port}", 320, "pcm_f32le") + "&language=xx-XX", x[:16000],
                             block_ms=100, encoding="pcm_f32le", timeout=60)
        assert bad.close_code == 1008 and "unknown language 'xx-XX'" in bad.errors[0]["message"]
    finally:
        st.stop()
