"""`bench compare` backends built with random weights at small sizes: NeMo transducers (buffered chunked mode,
steered emissions), NeMo's cache-aware streaming, Canary and Qwen3-ASR (fixed-length generation).
The full sizes are the same code with the published shapes (benchmarks, not tests)."""

from __future__ import annotations

import itertools

import pytest

from streamasr.errors import OfflineError
from streamasr.eval.compare import nemo_chunked, qwen3
from streamasr.eval.compare.registry import check, load_system

SR = 16000


@pytest.fixture(scope="module")
def jfk(speech_manifest):
    from streamasr.audio import read_audio

    item = next(it for it in speech_manifest if it["audio"] == "jfk_inaugural_1961.wav")
    return read_audio(item["path"])[: 7 * SR]


SMALL = {
    "parakeet-tdt": nemo_chunked.TransducerShape(80, 2, 64, 2, "dw_striding", 8, 32, 9, 64, 64, 64, (0, 1, 2, 3, 4)),
    "conformer-transducer": nemo_chunked.TransducerShape(80, 2, 64, 2, "striding", 4, 64, 31, 32, 64, 64),
}


@pytest.mark.parametrize("backend", ["parakeet-tdt", "conformer-transducer"])
def test_random_transducer_chunked_emits_speech_like_tokens(monkeypatch, jfk, backend):
    monkeypatch.setitem(nemo_chunked.SHAPES, backend, SMALL[backend])
    system = load_system(f"{backend}:random:@chunk(1.6-0.8-0.8)", threads=2)
    assert system.info.random_weights and system.info.algorithmic_delay_s == 1.6
    tr = system.transcribe(jfk)
    assert len(tr.steps) == 9  # 7 s in 0.8 s chunks
    assert [round(s.audio_end_s, 2) for s in tr.steps[:2]] == [1.6, 2.4]  # chunk end + right context
    n_tokens = len(tr.text.split())
    assert 0.5 * 3 * 7 <= n_tokens <= 2 * 3 * 7  # steered to ~3 tokens/s, not blank-only nor every frame
    texts = [s.text for s in tr.steps]
    assert all(a == b[: len(a)] for a, b in itertools.pairwise(texts))  # the hypothesis carries over chunks
    batch = load_system(f"{backend}:random:@batch", threads=2).transcribe(jfk)
    assert len(batch.steps) == 1 and batch.text


def test_random_canary_and_qwen_generate_a_fixed_speech_like_length(monkeypatch, jfk):
    from transformers import CanaryConfig

    small_canary = CanaryConfig(encoder_config={"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2,
                                                "intermediate_size": 128, "num_mel_bins": 128},
                                decoder_config={"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2,
                                                "num_key_value_heads": 2, "intermediate_size": 128, "head_dim": 32,
                                                "vocab_size": 300},
                                vocab_size=300)
    import transformers

    monkeypatch.setattr(transformers, "CanaryConfig", lambda: small_canary)
    system = load_system("canary:random:@batch", threads=2)
    assert system.info.random_weights and system.info.algorithmic_delay_s is None
    assert len(system.transcribe(jfk).text.split()) == 21  # 7 s x 3 tokens/s, EOS suppressed

    monkeypatch.setattr(qwen3, "TEXT_0_6B", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                                             "vocab_size": 151936, "tie_word_embeddings": True})
    monkeypatch.setattr(qwen3, "AUDIO_0_6B", {"d_model": 64, "encoder_layers": 1, "encoder_attention_heads": 2,
                                              "encoder_ffn_dim": 128, "output_dim": 64,
                                              "downsample_hidden_size": 32})
    system = load_system("qwen3-asr:random:@chunk(3,1)", threads=2)
    tr = system.transcribe(jfk)
    assert [s.audio_end_s for s in tr.steps] == [3.0, 5.0, 7.0]  # windows of 3 s every 2 s
    assert system.info.algorithmic_delay_s == 3.0 and system.info.streams


def test_hub_models_of_hf_backends_offline_say_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never a 1B download from a test, connected or not
    with pytest.raises(OfflineError, match="backend canary: cannot reach the Hugging Face hub to download "
                                           "nvidia/canary-1b-v2"):
        load_system("canary:nvidia/canary-1b-v2@batch", threads=1)
    assert check("qwen3-asr:Qwen/Qwen3-ASR-0.6B@chunk(3,1)").mode.window_s == 3.0


def test_nemo_backend_streams_the_same_checkpoint_as_nemotron(tiny_model, jfk):
    nemo_path, model_dir, _ = tiny_model
    nemo_row = load_system(f"nemo:{nemo_path}@160", threads=2)
    ours = load_system(f"nemotron:{model_dir}@160", threads=2)
    # a .nemo file streamasr wrote with random weights says so in its config, and both rows report it
    assert nemo_row.info.random_weights is True and ours.info.random_weights is True
    clip = jfk[: 5 * SR]
    theirs, mine = nemo_row.transcribe(clip), ours.transcribe(clip)
    assert theirs.text == mine.text and theirs.processing_s > 0
    assert len(mine.steps) > 10 and len(theirs.steps) == 1  # NeMo's loop is timed as a whole
    batch = load_system(f"nemo:{nemo_path}@batch", threads=2).transcribe(clip)
    assert len(batch.steps) == 1
    with pytest.raises(Exception, match="no 100 ms mode"):
        load_system(f"nemo:{nemo_path}@100", threads=2)
