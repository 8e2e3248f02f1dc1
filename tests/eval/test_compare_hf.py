"""`canary` and `qwen3-asr` on real checkpoints: tiny random-weight models of each family saved with
`save_pretrained` next to real processors (a word-level tokenizer, the family's feature extractor, a chat
template in the family's shape), loaded through `bench compare`'s backends and checked against the model and
processor called directly. The hub cases are offline: one clear line each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not all(hasattr(transformers, c) for c in ("CanaryForConditionalGeneration", "Qwen3ASRForConditionalGeneration")):
    pytest.skip("transformers without Canary / Qwen3-ASR", allow_module_level=True)

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from streamasr.errors import ModelError, OfflineError
from streamasr.eval.compare.registry import load_system

SR = 16000
CLIP_S = 2.0
GUARD_TOKENS = 16 + round(12 * CLIP_S)  # hf_common's runaway guard for a 2 s clip, written out
WORDS = ["and", "so", "my", "fellow", "americans", "ask", "not", "what", "your", "country", "can", "do", "for",
         "you"]

# Canary's decoder prompt: context, start of transcript, emotion, source and target language, punctuation,
# inverse normalisation, timestamps, diarisation. EOS is id 0 so that all-equal logits pick it (see _silence).
CANARY_SPECIALS = ["<|endoftext|>", "<unk>", "<pad>", "<|startoftranscript|>", "<|startofcontext|>",
                   "<|emo:undefined|>", "<|en|>", "<|pnc|>", "<|nopnc|>", "<|noitn|>", "<|notimestamp|>",
                   "<|nodiarize|>"]
CANARY_TEMPLATE = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}"
                   "<|startofcontext|><|startoftranscript|><|emo:undefined|>"
                   "<|{{ c['source_language'] }}|><|{{ c['target_language'] }}|>"
                   "{% if c['punctuation'] %}<|pnc|>{% else %}<|nopnc|>{% endif %}"
                   "<|noitn|><|notimestamp|><|nodiarize|>{% endif %}{% endfor %}{% endfor %}")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>",
                 "<|audio_pad|>", "<asr_text>"]
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {% for c in m['content'] %}"
                 "{% if c['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
                 "{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                 "{% if not loop.last %} <|im_end|> {% endif %}{% endfor %}")
TINY_DECODER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                "head_dim": 32}


@pytest.fixture(scope="module")
def jfk(speech_manifest):
    from streamasr.audio import read_audio

    item = next(it for it in speech_manifest if it["audio"] == "jfk_inaugural_1961.wav")
    return read_audio(item["path"])[: round(CLIP_S * SR)]


def _tokenizer(specials: list[str], words: list[str], **tokens):
    """A word-level fast tokenizer: whole words, specials split out wherever they stand."""
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(specials)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **tokens), vocab


def _save_canary(directory: Path) -> Path:
    tokenizer, vocab = _tokenizer(CANARY_SPECIALS, WORDS, unk_token="<unk>", pad_token="<pad>",
                                  eos_token="<|endoftext|>", bos_token="<|startoftranscript|>")
    processor = transformers.CanaryProcessor(feature_extractor=transformers.ParakeetFeatureExtractor(feature_size=128),
                                             tokenizer=tokenizer, chat_template=CANARY_TEMPLATE)
    config = transformers.CanaryConfig(
        encoder_config={"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2,
                        "intermediate_size": 128, "num_mel_bins": 128},
        decoder_config={**TINY_DECODER, "num_key_value_heads": 2, "vocab_size": len(vocab)},
        vocab_size=len(vocab), eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<|startoftranscript|>"], decoder_start_token_id=vocab["<|startofcontext|>"])
    torch.manual_seed(1)
    model = transformers.CanaryForConditionalGeneration(config).eval()
    _prefer_words(model, len(CANARY_SPECIALS))
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _save_qwen(directory: Path) -> Path:
    tokenizer, vocab = _tokenizer(QWEN_SPECIALS, ["system", "user", "assistant", "language", "English", *WORDS],
                                  unk_token="<|endoftext|>", pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                  extra_special_tokens={"audio_token": "<|audio_pad|>",
                                                        "audio_bos_token": "<|audio_start|>",
                                                        "audio_eos_token": "<|audio_end|>"})
    processor = transformers.Qwen3ASRProcessor(feature_extractor=transformers.Qwen3ASRFeatureExtractor(),
                                               tokenizer=tokenizer, chat_template=QWEN_TEMPLATE)
    config = transformers.Qwen3ASRConfig(
        audio_config={"d_model": 64, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 128,
                      "output_dim": 64, "downsample_hidden_size": 32},
        text_config={**TINY_DECODER, "num_key_value_heads": 1, "vocab_size": len(vocab),
                     "tie_word_embeddings": True},
        audio_token_id=vocab["<|audio_pad|>"])
    torch.manual_seed(1)
    model = transformers.Qwen3ASRForConditionalGeneration(config).eval()
    _prefer_words(model, len(QWEN_SPECIALS))
    model.generation_config.eos_token_id = [vocab["<|endoftext|>"], vocab["<|im_end|>"]]
    model.generation_config.pad_token_id = vocab["<|endoftext|>"]
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _prefer_words(model, n_specials: int) -> None:
    """Keep a random decoder off its special tokens (ids below `n_specials`), which decode to nothing, so that
    its text has words to compare; it never stops on its own then (see `test_a_real_checkpoint_stops_at_its_eos`)."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight[:n_specials] = 0.0
        if head.bias is not None:
            head.bias[:n_specials] = -1e4


SAVERS = {"canary": _save_canary, "qwen3-asr": _save_qwen}


def _direct(backend: str, directory: Path, audio: np.ndarray) -> tuple[str, int]:
    """The same transcription without streamasr: the classes' own from_pretrained, transcription request,
    greedy generate and decode. Returns the text and the number of generated tokens."""
    if backend == "canary":
        model_cls, proc_cls, kw = (transformers.CanaryForConditionalGeneration, transformers.CanaryProcessor,
                                   {"source_language": "en"})
    else:
        model_cls, proc_cls, kw = (transformers.Qwen3ASRForConditionalGeneration, transformers.Qwen3ASRProcessor,
                                   {"language": "English"})
    model = model_cls.from_pretrained(directory).eval()
    processor = proc_cls.from_pretrained(directory)
    inputs = processor.apply_transcription_request(audio, **kw)
    prompt = inputs["decoder_input_ids" if backend == "canary" else "input_ids"]
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=GUARD_TOKENS)
    new = out[0, prompt.shape[1]:]
    if backend == "canary":
        text = processor.batch_decode(new[None], skip_special_tokens=True)[0]
    else:
        text = processor.decode(new, return_format="transcription_only")
    return text.strip(), int(new.numel())


def _weights(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


@pytest.mark.parametrize("backend", ["canary", "qwen3-asr"])
def test_a_saved_checkpoint_transcribes_like_the_model_and_processor_called_directly(tmp_path, jfk, backend):
    directory = SAVERS[backend](tmp_path / "ckpt")
    system = load_system(f"{backend}:{directory}@batch", threads=2)
    assert system.info.random_weights is False
    assert system.info.size_bytes == _weights(directory) > 0
    tr = system.transcribe(jfk)
    expected, n_new = _direct(backend, directory, jfk)
    assert isinstance(tr.text, str) and tr.text and len(tr.steps) == 1
    assert tr.text == expected
    assert set(tr.text.split()) <= set(WORDS) | {"system", "user", "assistant", "language", "English"}
    assert n_new == GUARD_TOKENS  # random weights never pick EOS: the guard ends them (see the next test)


def _silence(model, eos_id: int) -> None:
    """Zero every output logit but EOS's: a decoder that has nothing to say, as a real one would on silence."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        for norm in (m for n, m in model.named_modules() if n.endswith(("decoder.norm", "language_model.norm"))):
            norm.weight.zero_()
            if getattr(norm, "bias", None) is not None:
                norm.bias.zero_()
        if head.bias is not None:
            head.bias.zero_()
            head.bias[eos_id] = 1.0


@pytest.mark.parametrize("backend", ["canary", "qwen3-asr"])
def test_a_real_checkpoint_stops_at_its_eos(tmp_path, jfk, backend):
    directory = SAVERS[backend](tmp_path / "ckpt")
    model_cls = (transformers.CanaryForConditionalGeneration if backend == "canary"
                 else transformers.Qwen3ASRForConditionalGeneration)
    model = model_cls.from_pretrained(directory)
    _silence(model, eos_id=0)  # both tiny vocabularies put <|endoftext|> (an EOS) at id 0
    model.save_pretrained(directory)
    system = load_system(f"{backend}:{directory}@batch", threads=2)
    assert system.transcribe(jfk).text == ""
    assert _direct(backend, directory, jfk) == ("", 1)  # one token, EOS, not a fixed count


def test_a_hub_id_offline_says_so_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec, repo in [("canary:nvidia/canary-1b-v2@batch", "nvidia/canary-1b-v2"),
                       ("qwen3-asr:Qwen/Qwen3-ASR-0.6B@chunk(3,1)", "Qwen/Qwen3-ASR-0.6B")]:
        with pytest.raises(OfflineError, match=rf"cannot reach the Hugging Face hub to download {repo} "
                                               r"\(HF_HUB_OFFLINE is set\)") as info:
            load_system(spec, threads=1)
        assert "\n" not in str(info.value)


def test_a_missing_or_foreign_local_directory_says_so(tmp_path):
    with pytest.raises(ModelError, match="is not a directory") as info:
        load_system(f"canary:{tmp_path / 'nowhere'}@batch", threads=1)
    assert "\n" not in str(info.value) and not isinstance(info.value, OfflineError)
    with pytest.raises(ModelError, match="has no config.json"):
        load_system(f"qwen3-asr:{tmp_path}@batch", threads=1)
