"""`canary` in chunk(L-C-R): NeMo's streaming AED decoding with the AlignAtt policy, on small Canary models
built with random weights (the full size is the same code with Canary-1B-v2's shape: a benchmark, not a test).

The reference is NeMo's example `speech_to_text_aed_streaming_infer.py` (not installed with the package)
driven as that script drives the library: its buffer, its encoder call, its lengths, mask and shift, the
library's `GreedyBatchedStreamingAEDComputer`, and the text read out of the state at the end."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from streamasr.cli import main
from streamasr.eval.compare import canary_alignatt
from streamasr.eval.compare.hf_common import fixed_tokens
from streamasr.eval.compare.registry import check, load_system

pytest.importorskip("nemo.collections.asr")

SR = 16000
SMALL = canary_alignatt.CanaryShape(128, 1, 64, 2, 32, 9, 2, 64, 2, 512)  # AlignAtt reads decoder layer -2
MODE = "chunk(4-0.8-0.4)"


@pytest.fixture(scope="module")
def jfk(speech_manifest):
    from streamasr.audio import read_audio

    item = next(it for it in speech_manifest if it["audio"] == "jfk_inaugural_1961.wav")
    return read_audio(item["path"])[: 6 * SR]


@pytest.fixture(scope="module")
def small_shape():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(canary_alignatt, "SHAPE", SMALL)
        yield SMALL


@pytest.fixture(scope="module")
def random_system(small_shape):
    return load_system(f"canary:random:@{MODE}", threads=1)


def nemo_script_text(model, computer, prompt, audio: np.ndarray, left_s: float, chunk_s: float, right_s: float):
    """The text NeMo's AED streaming example produces for one utterance (batch of one)."""
    import torch
    from nemo.collections.asr.models.aed_multitask_models import lens_to_mask
    from nemo.collections.asr.parts.submodules.aed_decoding import GreedyBatchedStreamingAEDComputer
    from nemo.collections.asr.parts.utils.streaming_utils import ContextSize, StreamingBatchedAudioBuffer

    feature_s = model.cfg.preprocessor.window_stride
    sub = model.encoder.subsampling_factor
    enc2samples = (int(SR * feature_s) // sub * sub) * sub
    ctx_frames = ContextSize(left=int(left_s * (1.0 / feature_s) / sub), chunk=int(chunk_s * (1.0 / feature_s) / sub),
                             right=int(right_s * (1.0 / feature_s) / sub))
    ctx = ContextSize(left=ctx_frames.left * enc2samples, chunk=ctx_frames.chunk * enc2samples,
                      right=ctx_frames.right * enc2samples)
    batch = torch.from_numpy(audio)[None]
    lengths = torch.tensor([batch.shape[1]])
    with torch.inference_mode():
        state = GreedyBatchedStreamingAEDComputer.initialize_aed_model_state(
            asr_model=model, decoder_input_ids=prompt, batch_size=1, context_encoder_frames=ctx_frames,
            chunk_secs=chunk_s, right_context_secs=right_s)
        left_sample, end_of_window = 0, min(ctx.chunk, batch.shape[1])
        right_sample = min(ctx.chunk + ctx.right, batch.shape[1])
        buffer = StreamingBatchedAudioBuffer(batch_size=1, context_samples=ctx, dtype=batch.dtype, device="cpu")
        rest = lengths.clone()
        while left_sample < batch.shape[1]:
            chunk_length = min(right_sample, batch.shape[1]) - left_sample
            is_last_chunk_batch = chunk_length >= rest
            is_last_chunk = right_sample >= batch.shape[1]
            chunk_lengths = torch.where(is_last_chunk_batch, rest, torch.full_like(rest, chunk_length))
            buffer.add_audio_batch_(batch[:, left_sample:right_sample], audio_lengths=chunk_lengths,
                                    is_last_chunk=is_last_chunk, is_last_chunk_batch=torch.zeros_like(is_last_chunk_batch))
            state.is_last_chunk_batch = is_last_chunk_batch
            _, encoded_len, enc_states, _ = model(input_signal=buffer.samples,
                                                  input_signal_length=buffer.context_size_batch.total())
            ctx_batch = buffer.context_size_batch.subsample(factor=enc2samples)
            corrected = torch.where(is_last_chunk_batch, encoded_len, ctx_batch.left + ctx_batch.chunk)
            mask = lens_to_mask(corrected, enc_states.shape[1]).to(enc_states.dtype)
            state.prev_encoder_shift = max(end_of_window // enc2samples - ctx_frames.left - ctx_frames.chunk, 0)
            state = computer(encoder_output=enc_states, encoder_output_len=corrected, encoder_input_mask=mask,
                             prev_batched_state=state)
            rest -= chunk_lengths
            left_sample = right_sample
            right_sample = min(right_sample + ctx.chunk, batch.shape[1])
            end_of_window += ctx.chunk
        ids = state.pred_tokens_ids[0, prompt.size(-1):state.current_context_lengths[0]]
        return model.tokenizer.ids_to_text(ids.tolist()).strip()


def test_the_mode_is_spelled_like_the_other_buffered_chunked_modes():
    assert check(f"canary:nvidia/canary-1b-v2@{MODE}").mode.kind == "lcr"
    assert check("canary:random:@batch").mode.kind == "batch"


def test_random_canary_streams_with_alignatt_at_a_speech_like_token_rate(random_system, jfk):
    info = random_system.info
    assert info.random_weights and info.streams and info.algorithmic_delay_s == 1.2  # 0.8 + 0.4 s
    tr = random_system.transcribe(jfk)
    # chunk end + right context; whole 80 ms encoder frames; the last chunk ends with the audio
    assert [round(s.audio_end_s, 2) for s in tr.steps] == [1.2, 2.0, 2.8, 3.6, 4.4, 5.2, 6.0]
    assert all(s.compute_s > 0 for s in tr.steps)
    assert tr.steps[0].text == "" and tr.steps[1].text  # NeMo waits for 2 chunks (waitk_lagging), then emits
    texts = [s.text for s in tr.steps]
    assert all(a == b[: len(a)] for a, b in itertools.pairwise(texts))  # kept tokens are never taken back
    assert len(tr.text.split()) == fixed_tokens(6.0)  # 3 tokens per second heard, then EOS
    assert tr.text == nemo_script_text(random_system.model, random_system.computer, random_system.prompt, jfk,
                                       4, 0.8, 0.4)


def test_a_nemo_checkpoint_streams_exactly_like_nemos_own_alignatt_loop(small_shape, tmp_path, jfk):
    from nemo.collections.asr.models import EncDecMultiTaskModel

    canary_alignatt.build_random(small_shape, tmp_path, seed=1).save_to(str(tmp_path / "canary.nemo"))
    system = load_system(f"canary:{tmp_path / 'canary.nemo'}@{MODE}", threads=1)
    assert not system.info.random_weights and system.computer.decoding_cfg.alignatt_thr == 8  # NeMo's default
    tr = system.transcribe(jfk)

    model = EncDecMultiTaskModel.restore_from(str(tmp_path / "canary.nemo"), map_location="cpu").eval()
    model.change_decoding_strategy(system.model.cfg.decoding)
    model.preprocessor.featurizer.dither = 0.0
    from nemo.collections.asr.parts.submodules.aed_decoding import GreedyBatchedStreamingAEDComputer

    computer = GreedyBatchedStreamingAEDComputer(model, frame_chunk_size=system.frames.chunk,
                                                 decoding_cfg=system.decoding_cfg)
    assert tr.text == nemo_script_text(model, computer, system.prompt, jfk, 4, 0.8, 0.4)
    assert len(tr.steps) == 7


def test_a_random_alignatt_row_never_prints_a_wer(capsys, small_shape, jfk, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "jfk.wav", jfk[: 3 * SR], SR)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(tmp_path / "jfk.wav"), "text": "and so my fellow", "id": "a"}) + "\n")
    out = tmp_path / "out"
    code = main(["bench", "compare", "--dataset", f"manifest:{manifest}", "--out", str(out), "--threads", "1",
                 "--no-progress", "--bootstrap", "50", "--in-process", "--system", f"canary:random:@{MODE}"])
    stdout = capsys.readouterr().out
    assert code == 0
    (row,) = json.loads((out / "summary.json").read_text())["systems"]
    assert row["random_weights"] and row["wer"] is None and row["wer_note"] == "random weights"
    assert row["first_partial_s"] is not None and row["final_lag_s"] is not None
    assert "random weights" in next(line for line in stdout.splitlines() if line.startswith("| 1 "))
