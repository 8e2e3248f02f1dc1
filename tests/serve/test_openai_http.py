"""The OpenAI-compatible HTTP API over a real socket on 127.0.0.1, with the official `openai` package as client.

The tiny random model's text is nonsense but deterministic: every transcript must equal `Model.transcribe` of
the same samples at the same latency (the upload is a 16 kHz s16 WAV, so the reference is the s16 round trip).
"""

from __future__ import annotations

import io
import re
import threading

import numpy as np
import openai
import pytest
import soundfile as sf
import srt
import webvtt

from streamasr.serve.client import encode_pcm

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SEGMENT_FIELDS = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                  "compression_ratio", "no_speech_prob"}
SRT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})"
VTT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"


def _wav(samples: np.ndarray) -> bytes:
    pcm = np.frombuffer(encode_pcm(samples, "pcm_s16le"), dtype="<i2")
    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base.replace("ws://", "http://") + "/v1", api_key="x", max_retries=0,
                         timeout=60)


@pytest.fixture
def api(make_server):
    """(ServerThread, OpenAI client) on a fresh server."""
    st, base = make_server()
    client = _client(base)
    yield st, client
    client.close()


@pytest.fixture(scope="module")
def clip(short_speech, serve_model, s16_roundtrip):
    """(wav bytes, duration s, reference text at the default latency) of one short utterance."""
    x = short_speech[0]
    return _wav(x), x.size / 16000, serve_model.transcribe(s16_roundtrip(x)).text.strip()


def _seconds(match: re.Match) -> float:
    h, m, s, ms = (int(g) for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def parse_srt(doc: str) -> list[tuple[float, float, str]]:
    """A strict SubRip reader: numbered cues from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, at least one
    non-empty text line, blocks separated by exactly one blank line, a final newline."""
    assert doc.endswith("\n") and "\r" not in doc
    cues = []
    for i, block in enumerate(doc.rstrip("\n").split("\n\n"), start=1):
        lines = block.split("\n")
        assert lines[0] == str(i), block
        m = re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", lines[1])
        assert m, lines[1]
        start = _seconds(re.match(SRT_TIME, lines[1]))
        end = _seconds(re.search(SRT_TIME + "$", lines[1]))
        text = lines[2:]
        assert text and all(t.strip() and "-->" not in t for t in text), block
        cues.append((start, end, " ".join(text)))
    return cues


def parse_vtt(doc: str) -> list[tuple[float, float, str]]:
    """A strict WebVTT reader for cues without identifiers or settings: the `WEBVTT` line, a blank line,
    then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm` with text free of raw `<`, `&` and `-->`."""
    assert doc.startswith("WEBVTT\n") and doc.endswith("\n")
    blocks = doc.rstrip("\n").split("\n\n")
    assert blocks[0] == "WEBVTT"
    cues = []
    for block in blocks[1:]:
        lines = block.split("\n")
        assert re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", lines[0]), lines[0]
        start = _seconds(re.match(VTT_TIME, lines[0]))
        end = _seconds(re.search(VTT_TIME + "$", lines[0]))
        text = lines[1:]
        for t in text:
            assert t.strip() and "-->" not in t and "<" not in t and not re.search(r"&(?!amp;|lt;|gt;)", t), t
        cues.append((start, end, " ".join(text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")))
    return cues


def _check_cues(cues: list[tuple[float, float, str]], duration: float, text: str) -> None:
    assert cues, "no cues"
    prev = 0.0
    for start, end, _ in cues:
        assert prev <= start < end <= duration + 0.5, (start, end)
        prev = end
    # the cues hold the words of the transcript, in order (an endpoint may fall inside a word)
    assert "".join(t for *_, t in cues).replace(" ", "") == text.replace(" ", "")


# ---------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_json_and_text_equal_transcribe(api, clip, fmt):
    st, client = api
    data, _, ref = clip
    out = client.audio.transcriptions.create(file=("a.wav", data), model="whisper-1", response_format=fmt)
    text = out.text if fmt == "json" else out
    assert text.strip() == ref and ref
    if fmt == "json":
        assert out.usage.type == "duration" and out.usage.seconds > 0
    assert st.server.active == 0


def test_verbose_json_words_and_segments(api, clip, serve_model):
    _, client = api
    data, duration, ref = clip
    out = client.audio.transcriptions.create(file=("a.wav", data), model=serve_model.config.model_id,
                                             language="en", response_format="verbose_json",
                                             timestamp_granularities=["word", "segment"])
    assert out.text == ref and out.language == "en" and out.duration == pytest.approx(duration, abs=0.01)
    assert out.task == "transcribe"
    assert out.segments and out.words
    raw = out.model_dump()
    prev = 0.0
    for i, seg in enumerate(raw["segments"]):
        assert SEGMENT_FIELDS <= set(seg) and seg["id"] == i
        assert prev <= seg["start"] < seg["end"] <= duration + 0.5
        assert seg["text"] and seg["tokens"] and seg["avg_logprob"] <= 0
        prev = seg["end"]
    prev = 0.0
    for w in raw["words"]:
        assert prev <= w["start"] < w["end"] <= duration + 0.5 and 0 < w["confidence"] <= 1
        prev = w["start"]
    assert "".join(s["text"] for s in raw["segments"]).replace(" ", "") == ref.replace(" ", "")
    assert "".join(w["word"] for w in raw["words"]).replace(" ", "") == ref.replace(" ", "")
    tokens = [t for s in raw["segments"] for t in s["tokens"]]
    assert tokens == serve_model.transcribe(_read(data)).token_ids[: len(tokens)]


def _read(wav: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(wav), dtype="float32")[0]


def test_verbose_json_granularities(api, clip):
    _, client = api
    data, _, ref = clip
    words_only = client.audio.transcriptions.create(file=("a.wav", data), model="m", response_format="verbose_json",
                                                    timestamp_granularities=["word"]).model_dump()
    assert words_only["words"] and words_only.get("segments") is None
    segments_only = client.audio.transcriptions.create(file=("a.wav", data), model="m",
                                                       response_format="verbose_json",
                                                       timestamp_granularities=["segment"]).model_dump()
    assert segments_only["segments"] and segments_only.get("words") is None


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles_parse(api, clip, fmt):
    _, client = api
    data, duration, ref = clip
    doc = client.audio.transcriptions.create(file=("a.wav", data), model="m", response_format=fmt)
    cues = parse_srt(doc) if fmt == "srt" else parse_vtt(doc)
    _check_cues(cues, duration, ref)
    # and the subtitle libraries read the same cues
    if fmt == "srt":
        library = [(c.start.total_seconds(), c.end.total_seconds(), c.content.replace("\n", " "))
                   for c in srt.parse(doc)]
    else:
        library = [(_seconds(re.match(VTT_TIME, c.start)), _seconds(re.match(VTT_TIME, c.end)),
                    c.text.replace("\n", " ")) for c in webvtt.from_string(doc)]
    assert [(round(a, 3), round(b, 3)) for a, b, _ in library] == [(round(a, 3), round(b, 3)) for a, b, _ in cues]
    assert [t for *_, t in library] == [t for *_, t in cues]


def test_logprobs(api, clip, serve_model):
    _, client = api
    data, _, ref = clip
    out = client.audio.transcriptions.create(file=("a.wav", data), model="m", include=["logprobs"])
    result = serve_model.transcribe(_read(data))
    # the same tokens; their log-probabilities agree to float32 rounding (relative 1e-5: the server's encoder and
    # joint calls see other batch and frame counts, and MLAS's kernels round by shape)
    assert [lp.logprob for lp in out.logprobs] == pytest.approx(result.token_logprobs, rel=1e-5, abs=1e-4)
    assert "".join(lp.token for lp in out.logprobs).strip() == "".join(result.tokens).replace("\u2581", " ").strip()


def test_stream_deltas_then_done(api, clip):
    _, client = api
    data, _, ref = clip
    events = list(client.audio.transcriptions.create(file=("a.wav", data), model="m", stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}, kinds
    deltas = [e.delta for e in events[:-1]]
    assert len(deltas) >= 2 and all(deltas)  # only new text, in pieces
    assert "".join(deltas) == events[-1].text == ref
    assert events[-1].usage.seconds > 0


def test_latency_mode_and_format_file_types(make_server, short_speech, serve_model, s16_roundtrip, tmp_path):
    """A latency mode as a form field or a query parameter; a FLAC at 44.1 kHz stereo is read like transcribe
    reads it."""
    from streamasr.audio import read_audio, resample

    _, base = make_server()
    client = _client(base)
    x = short_speech[1]
    ref = serve_model.transcribe(s16_roundtrip(x), 80).text.strip()
    out = client.audio.transcriptions.create(file=("a.wav", _wav(x)), model="m", extra_body={"latency": "80"})
    assert out.text == ref
    out = client.audio.transcriptions.create(file=("a.wav", _wav(x)), model="m", extra_query={"latency": 80})
    assert out.text == ref
    flac = tmp_path / "stereo.flac"
    y = resample(x, 16000, 44100)
    sf.write(flac, np.stack([y, y], axis=1), 44100)
    out = client.audio.transcriptions.create(file=flac, model="m", extra_query={"latency": 160})
    assert out.text == serve_model.transcribe(read_audio(flac), 160).text.strip()


def test_long_upload_is_paced_and_concurrent_uploads_share_the_scheduler(make_server, short_speech, serve_model,
                                                                         s16_roundtrip):
    """A minute of audio with a 1 s backlog limit (many flow-control pauses) beside a second upload: both
    equal their own transcribe, the scheduler saw every sample, and nothing stays open."""
    st, base = make_server(max_backlog_s=1.0)
    long_x = np.concatenate([*short_speech] * 6)
    jobs = {"long": long_x, "short": short_speech[2]}
    out: dict[str, str] = {}

    def run(name: str) -> None:
        client = _client(base)
        out[name] = client.audio.transcriptions.create(file=("a.wav", _wav(jobs[name])), model="m").text

    threads = [threading.Thread(target=run, args=(n,)) for n in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for name, x in jobs.items():
        assert out[name] == serve_model.transcribe(s16_roundtrip(x)).text.strip(), name
    assert st.server.scheduler.audio_samples == sum(x.size for x in jobs.values())
    assert st.server.active == 0


# ---------------------------------------------------------------- models
def test_models_list_and_retrieve(api, serve_model):
    _, client = api
    models = client.models.list().data
    assert [m.id for m in models] == [serve_model.config.model_id]
    card = models[0].model_dump()
    assert card["object"] == "model" and card["latency_modes_ms"] == serve_model.latency_modes
    assert card["default_latency_ms"] == serve_model.config.encoder.default_latency_ms and card["languages"] == ["en"]
    assert client.models.retrieve(serve_model.config.model_id).id == serve_model.config.model_id
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("whisper-1")
    assert err.value.param == "model" and err.value.code == "model_not_found"


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, param", [
    (dict(file=("a.txt", b"this is not audio " * 50)), "file"),
    (dict(file=("a.wav", _wav(np.zeros(0, dtype=np.float32)))), "file"),  # a WAV without samples
    (dict(response_format="xml"), "response_format"),
    (dict(language="fr"), "language"),
    (dict(timestamp_granularities=["sentence"], response_format="verbose_json"), "timestamp_granularities"),
    (dict(extra_body={"latency": "123"}), "latency"),
    (dict(extra_query={"latency": "fast"}), "latency"),
])
def test_bad_requests_raise_bad_request_error(api, clip, kwargs, param):
    st, client = api
    kwargs = {"file": ("a.wav", clip[0]), "model": "m", **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(**kwargs)
    assert err.value.status_code == 400 and err.value.param == param, err.value.body
    assert err.value.type == "invalid_request_error" and err.value.message
    assert st.server.active == 0


def test_missing_file_and_not_multipart(api):
    _, client = api
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/audio/transcriptions", cast_to=object, body={"model": "m"},
                    files=[("audio", ("a.wav", b"RIFF", "audio/wav"))],
                    options={"headers": {"Content-Type": "multipart/form-data"}})
    assert err.value.param == "file" and err.value.code == "missing_required_parameter"
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/audio/transcriptions", cast_to=object, body={"model": "m"})
    assert "multipart/form-data" in err.value.message


def test_full_server_answers_503_without_retry(make_server, clip):
    """At --max-streams (one live WebSocket stream open) an upload is refused with 503, Retry-After and
    x-should-retry: false (the SDK does not retry even with retries on); once the stream ends it is served."""
    from websockets.sync.client import connect

    st, base = make_server(max_streams=1)
    client = openai.OpenAI(base_url=base.replace("ws://", "http://") + "/v1", api_key="x", max_retries=2)
    with connect(base + "/v1/stream?latency=160") as ws:
        ws.send(encode_pcm(np.zeros(1600, dtype=np.float32)))
        for _ in range(100):
            if st.server.active == 1:
                break
            threading.Event().wait(0.02)
        with pytest.raises(openai.InternalServerError) as err:
            client.audio.transcriptions.create(file=("a.wav", clip[0]), model="m")
        resp = err.value.response
        assert resp.status_code == 503 and resp.headers["x-should-retry"] == "false"
        assert int(resp.headers["retry-after"]) > 0
        assert err.value.body["type"] == "server_error" and "full" in err.value.message
        ws.send('{"type": "end"}')
        for _ in ws:  # the final, then the close
            pass
    for _ in range(100):
        if st.server.active == 0:
            break
        threading.Event().wait(0.02)
    assert client.audio.transcriptions.create(file=("a.wav", clip[0]), model="m").text == clip[2]


def test_server_subtitles_equal_transcribe_command(api, serve_model, short_speech, tmp_path):
    """The server and `streamasr transcribe --format` write the same documents for the same file."""
    import subprocess
    import sys

    _, client = api
    wav = tmp_path / "clip.wav"
    wav.write_bytes(_wav(np.concatenate([short_speech[0], np.zeros(16000, np.float32), short_speech[1]])))
    for fmt in ("srt", "vtt"):
        proc = subprocess.run([sys.executable, "-m", "streamasr", "transcribe", str(wav), "--model",
                               str(serve_model.directory), "--allow-random", "--format", fmt], capture_output=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        assert client.audio.transcriptions.create(file=wav, model="m", response_format=fmt) == proc.stdout.decode()


def test_client_gone_mid_upload_frees_the_stream(make_server, short_speech, clip):
    """A client that gives up (a timeout) while its long upload is being recognized: the server stops feeding
    it, its stream leaves the scheduler and the slot is free for the next request."""
    st, base = make_server(max_backlog_s=0.5, max_streams=1)
    impatient = openai.OpenAI(base_url=base.replace("ws://", "http://") + "/v1", api_key="x", max_retries=0,
                              timeout=0.3)
    long_x = np.concatenate([*short_speech] * 40)  # several minutes
    with pytest.raises(openai.APITimeoutError):
        impatient.audio.transcriptions.create(file=("a.wav", _wav(long_x)), model="m")
    for _ in range(500):
        if st.server.active == 0 and st.server.scheduler.active == 0:
            break
        threading.Event().wait(0.02)
    assert st.server.active == 0 and st.server.scheduler.active == 0
    assert st.server.scheduler.audio_samples < long_x.size  # it stopped early
    assert _client(base).audio.transcriptions.create(file=("a.wav", clip[0]), model="m").text == clip[2]
    # the same for a client that closes its event stream after the first delta
    before = st.server.scheduler.audio_samples
    events = _client(base).audio.transcriptions.create(file=("a.wav", _wav(long_x)), model="m", stream=True)
    assert next(iter(events)).type == "transcript.text.delta"
    events.close()
    for _ in range(500):
        if st.server.active == 0 and st.server.scheduler.active == 0:
            break
        threading.Event().wait(0.02)
    assert st.server.active == 0 and st.server.scheduler.active == 0
    assert st.server.scheduler.audio_samples - before < long_x.size
