"""The inference engine on a tiny random Whisper (every code path) and, once, on the real whisper-base."""

from __future__ import annotations

import math
import shutil

import jiwer
import numpy as np
import pytest

from ml_backend.engine import (
    DecodeOptions,
    EngineError,
    FasterWhisperEngine,
    TransformersEngine,
    compression_ratio,
    is_likely_hallucination,
    load_engine,
    log_mel_features,
)
from training.registry import set_current

FAST = DecodeOptions(temperatures=(0.0,), max_new_tokens=16)
SENTENCES = ["Buenos días a todos.", "Abrid el libro por la página veinte.", "¿Quién ha terminado?"]


@pytest.fixture(scope="module")
def clips(espeak_clip):
    return [espeak_clip(s) for s in SENTENCES]


def _check_results(results, clips):
    assert len(results) == len(clips)
    for result, clip in zip(results, clips, strict=True):
        assert 0.0 <= result.confidence <= 1.0
        assert math.isclose(result.confidence, math.exp(result.avg_logprob), rel_tol=1e-6) or result.avg_logprob <= -30
        assert 0.0 <= result.no_speech_prob <= 1.0
        assert result.audio_seconds == pytest.approx(len(clip) / 16000)
        assert result.elapsed_seconds >= 0


def test_ct2_dir_runs_on_faster_whisper_int8(tiny_ct2_dir, clips):
    engine = load_engine(tiny_ct2_dir, device="cpu", options=FAST)
    assert isinstance(engine, FasterWhisperEngine)
    assert engine.compute_type == "int8"
    _check_results(engine.transcribe(clips, beam_size=1), clips)


def test_packing_groups_short_clips_and_keeps_order(tiny_ct2_dir, clips):
    engine = load_engine(tiny_ct2_dir, device="cpu", options=FAST)
    long_clip = np.zeros(16000 * 12, dtype=np.float32)
    many = clips * 4 + [long_clip] + clips
    groups = engine._groups(many, FAST)
    assert sorted(i for g in groups for i in g) == list(range(len(many)))
    assert [12] in groups  # a long clip gets a window of its own
    assert any(len(g) > 1 for g in groups)
    for group in groups:  # each window fits Whisper's 30 s with the gaps
        assert sum(len(many[i]) + 16000 for i in group) <= 29 * 16000 or len(group) == 1
    _check_results(engine.transcribe(many, beam_size=1), many)


def test_transformers_dir_and_greedy_vs_beam(tiny_whisper_dir, clips):
    engine = load_engine(tiny_whisper_dir, device="cpu", options=FAST)
    assert isinstance(engine, TransformersEngine)
    greedy = engine.transcribe(clips, beam_size=1)
    _check_results(greedy, clips)
    _check_results(engine.transcribe(clips[:1], beam_size=2), clips[:1])


def test_lora_adapter_is_merged_over_its_base(tiny_whisper_dir, clips, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    base = WhisperForConditionalGeneration.from_pretrained(str(tiny_whisper_dir))
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data.normal_(0, 0.5)  # an adapter that really changes the model
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    engine = load_engine(adapter_dir, device="cpu", options=FAST)
    assert isinstance(engine, TransformersEngine)
    adapted = engine.transcribe(clips[:2], beam_size=1)
    plain = load_engine(tiny_whisper_dir, device="cpu", options=FAST).transcribe(clips[:2], beam_size=1)
    _check_results(adapted, clips[:2])
    assert [a.avg_logprob for a in adapted] != pytest.approx([p.avg_logprob for p in plain])


def test_registry_dir_serves_current_and_follows_it(tiny_registry, tmp_path):
    models = tmp_path / "models"
    first = tiny_registry(models)
    second = tiny_registry(models)
    engine = load_engine(models, device="cpu", options=FAST)
    assert engine.version == first and engine.model_path.name == "ct2"
    assert load_engine(models, device="cpu", options=FAST) is engine  # loaded once per process
    set_current(models, second)
    swapped = load_engine(models, device="cpu", options=FAST)
    assert swapped.version == second and swapped is not engine
    assert load_engine(models / second / "hf", device="cpu", options=FAST).version == second


def test_bad_inputs_name_the_problem(tiny_ct2_dir, tmp_path):
    with pytest.raises(EngineError, match="no such model dir"):
        load_engine(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="neither a CTranslate2 nor a transformers"):
        load_engine(tmp_path / "empty")
    with pytest.raises(EngineError, match="no current model"):
        shutil.copytree(tiny_ct2_dir, tmp_path / "models" / "x-v1" / "ct2")
        (tmp_path / "models" / "CURRENT").write_text("")
        load_engine(tmp_path / "models")
    engine = load_engine(tiny_ct2_dir, device="cpu", options=FAST)
    with pytest.raises(EngineError, match="clip 1: expected mono"):
        engine.transcribe([np.zeros(16000, np.float32), np.zeros((2, 16000), np.float32)])
    assert engine.transcribe([]) == []


def test_features_are_faster_whispers_on_both_runtimes(espeak_clip):
    """log_mel_features (fed to the transformers path too) is faster-whisper's input: the clip's log-mel
    padded with zeros; WhisperFeatureExtractor has the same speech frames but pads with "peak - 8 dB"."""
    from transformers import WhisperFeatureExtractor

    clip = espeak_clip("Buenos días a todos.")
    frames = len(clip) // 160
    ours = log_mel_features([clip, clip[:8000]])
    assert ours.shape == (2, 80, 3000) and ours.dtype == np.float32
    assert np.all(ours[0, :, frames + 1 :] == 0.0)
    theirs = WhisperFeatureExtractor()(clip, sampling_rate=16000, return_tensors="np").input_features[0]
    np.testing.assert_allclose(ours[0, :, : frames - 2], theirs[:, : frames - 2], atol=1e-3)
    assert np.all(theirs[:, -1] == theirs[0, -1]) and theirs[0, -1] < -0.1  # a constant, non-zero padding


def test_hallucination_flags():
    options = DecodeOptions()
    looping = "y entonces " * 30
    assert compression_ratio(looping) > 2.4
    assert is_likely_hallucination(looping, -0.2, 0.0, compression_ratio(looping), options)
    normal = "Buenos días, abrid el libro por la página veinte."
    assert compression_ratio(normal) < 2.4
    assert not is_likely_hallucination(normal, -0.3, 0.1, compression_ratio(normal), options)
    assert is_likely_hallucination("Subtítulos por la comunidad.", -1.5, 0.9, 1.0, options)
    assert not is_likely_hallucination("", -1.5, 0.9, 0.0, options)


@pytest.mark.quality
def test_whisper_base_transcribes_spanish_packed_and_unpacked(whisper_base_ct2_dir, espeak_clip):
    texts = ["Hoy vamos a hablar de la historia de Andalucía.", "Mañana hace buen tiempo en el pueblo.",
             "Abrid el libro por la página veinte.", "Los alumnos escriben en la pizarra."]
    audio = [espeak_clip(t) for t in texts]
    engine = load_engine(whisper_base_ct2_dir, device="cpu")
    assert engine.options.pack
    packed = engine.transcribe(audio)
    single = engine.transcribe(audio, options=DecodeOptions(pack=False))
    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])
    for results in (packed, single):
        hyp = [norm(r.text) for r in results]
        assert jiwer.wer([norm(t) for t in texts], hyp) < 0.5, hyp
        assert all(r.confidence > 0.2 and not r.likely_hallucination for r in results)
    # Words went back to the clip they were spoken in: "andalucía" in the first, "pizarra" in the last.
    assert "andalucía" in norm(packed[0].text) and "pizarra" in norm(packed[3].text)
