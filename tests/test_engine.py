"""The inference engine on a tiny random Whisper (every code path) and on the real whisper-base (real
transcripts: duplicates, order, a quiet clip in a packed window, the no-speech rule)."""

from __future__ import annotations

import math
import random
import shutil
import warnings

import jiwer
import numpy as np
import pytest

from ml_backend.cpu import cpu_layout, cpu_threads
from ml_backend.ct2_engine import FasterWhisperEngine
from ml_backend.decoding import (
    DecodeOptions,
    compression_ratio,
    is_likely_hallucination,
    meets_no_speech_rule,
    packed_clip_problem,
)
from ml_backend.engine import EngineError, audio_key, make_transcription
from ml_backend.features import log_mel_features
from ml_backend.hf_engine import TransformersEngine
from ml_backend.loading import load_engine
from ml_backend.lora import peft_deprecations_silenced
from ml_backend.windows import plan_windows
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
        silence = meets_no_speech_rule(result.avg_logprob, result.no_speech_prob, DecodeOptions())
        expected = math.exp(result.avg_logprob) * ((1 - result.no_speech_prob) if silence else 1.0)
        assert math.isclose(result.confidence, expected, rel_tol=1e-6) or result.avg_logprob <= -30
        assert 0.0 <= result.no_speech_prob <= 1.0
        assert result.audio_seconds == pytest.approx(len(clip) / 16000)
        assert result.elapsed_seconds >= 0


def test_ct2_dir_runs_on_faster_whisper_int8(tiny_ct2_dir, clips):
    engine = load_engine(tiny_ct2_dir, device="cpu", options=FAST)
    assert isinstance(engine, FasterWhisperEngine)
    assert engine.compute_type == "int8"
    _check_results(engine.transcribe(clips, beam_size=1), clips)


def test_packing_plan_is_first_fit_decreasing_and_fits_the_window():
    options = DecodeOptions()
    seconds = [12.0, 9.5, 8.0, 6.0, 5.0, 4.0, 3.5, 3.0, 2.0, 2.0, 1.0]  # the canonical order: longest first
    windows = plan_windows([int(s * 16000) for s in seconds], options)
    assert sorted(i for w in windows for i in w) == list(range(len(seconds)))
    assert windows[0] == [0]  # over pack_max_clip_seconds: a window of its own
    for window in windows:  # each window fits Whisper's 30 s with a gap after every clip and a 1-s margin
        assert sum(seconds[i] + options.pack_gap_seconds for i in window) <= 29.0 or len(window) == 1
    # First fit: the 1-s clip goes back into the first window with room, not into a new one.
    assert len(windows) == 3 and 10 in windows[1]
    assert plan_windows([16000] * 3, DecodeOptions(pack=False)) == [[0], [1], [2]]


def test_many_clips_packed_keep_their_order(tiny_ct2_dir, clips):
    engine = load_engine(tiny_ct2_dir, device="cpu", options=FAST)
    long_clip = np.zeros(16000 * 12, dtype=np.float32)
    many = clips + [long_clip] + [c * 0.5 for c in clips] + [c * 0.25 for c in clips]
    before = engine.counters.copy()
    results = engine.transcribe(many, beam_size=1)
    _check_results(results, many)
    done = engine.counters - before
    assert done["packed_windows"] >= 1 and done["packed_clips"] >= 2  # short clips did share a window
    assert results[3].window_clips == 1  # the long clip was alone
    # Each distinct clip decoded once: packed (kept or decoded again) or alone.
    assert done["packed_clips"] - done["redecoded_alone"] + done["alone_clips"] == len(many)


def test_identical_audio_is_decoded_once_and_shared(tiny_ct2_dir, clips):
    engine = load_engine(tiny_ct2_dir, device="cpu", options=FAST)
    a, b = clips[0], clips[1]
    request = [a, a.copy(), b, a.copy(), a.copy(), a.copy()]  # the same samples in different arrays
    before = engine.counters.copy()
    results = engine.transcribe(request, beam_size=1)
    done = engine.counters - before
    assert done["packed_clips"] - done["redecoded_alone"] + done["alone_clips"] == 2  # a and b, once each
    copies = [results[i] for i in (0, 1, 3, 4, 5)]
    assert all(c == copies[0] for c in copies)
    assert audio_key(a) == audio_key(a.copy()) != audio_key(b)


def test_same_clips_in_any_order_give_the_same_texts(tiny_ct2_dir, clips, espeak_clip):
    """Seeded sampling fallbacks included: the tiny model is unsure of everything, so each clip runs
    through every temperature, in every call, and a second engine instance agrees."""
    options = DecodeOptions(temperatures=(0.0, 0.5, 1.0), max_new_tokens=12)
    engine = load_engine(tiny_ct2_dir, device="cpu", options=options)
    audio = clips + [espeak_clip("Sacad el cuaderno de matemáticas.", voice="es+f3"), clips[0] * 0.1]
    before = engine.counters.copy()
    first = engine.transcribe(audio, beam_size=2)
    assert (engine.counters - before)["fallbacks"] > 0
    order = list(range(len(audio)))
    for seed in (1, 2):
        random.Random(seed).shuffle(order)
        shuffled = engine.transcribe([audio[i] for i in order], beam_size=2)
        assert [shuffled[order.index(i)].text for i in range(len(audio))] == [r.text for r in first]
    other = FasterWhisperEngine(version="again", model_path=engine.model_path, compute_type="int8", options=options)
    assert [r.text for r in other.transcribe(audio[::-1], beam_size=2)][::-1] == [r.text for r in first]


def test_a_clip_alone_is_decoded_as_faster_whisper_would(tiny_ct2_dir, clips):
    """The engine drives CTranslate2 itself; one clip per window it must match faster-whisper's transcribe()."""
    engine = load_engine(tiny_ct2_dir, device="cpu", options=FAST)
    ours = engine.transcribe(clips, beam_size=2, options=DecodeOptions(temperatures=(0.0,), max_new_tokens=16, pack=False))
    for clip, mine in zip(clips, ours, strict=True):
        segments, _info = engine._model.transcribe(
            clip, language="es", beam_size=2, temperature=[0.0], without_timestamps=True, condition_on_previous_text=False,
            no_speech_threshold=None, max_new_tokens=16, vad_filter=False,
        )
        segments = list(segments)
        assert mine.text == "".join(s.text for s in segments).strip()
        if segments:
            assert mine.avg_logprob == pytest.approx(segments[0].avg_logprob, abs=1e-5)
            assert mine.no_speech_prob == pytest.approx(segments[0].no_speech_prob, abs=1e-5)


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
    with peft_deprecations_silenced():
        peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data.normal_(0, 0.5)  # an adapter that really changes the model
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = load_engine(adapter_dir, device="cpu", options=FAST)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
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


def test_the_no_speech_rule_lowers_the_confidence_and_never_blanks():
    options = DecodeOptions()
    assert meets_no_speech_rule(-1.5, 0.9, options)
    assert not meets_no_speech_rule(-0.5, 0.9, options) and not meets_no_speech_rule(-1.5, 0.3, options)
    kept = make_transcription(" Subtítulos por la comunidad.", -1.5, 0.9, 2.0, 0.1, options)
    assert kept.text == "Subtítulos por la comunidad."  # the reference decoder would have dropped it
    assert kept.likely_hallucination
    assert kept.confidence == pytest.approx(math.exp(-1.5) * 0.1)
    unsure_speech = make_transcription("Abrid el libro.", -1.5, 0.3, 2.0, 0.1, options)
    assert unsure_speech.confidence == pytest.approx(math.exp(-1.5))
    assert unsure_speech.confidence > kept.confidence


def test_threads_match_the_cores_this_process_may_use(tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    assert cpu_threads({"HABLA_LS_CPU_THREADS": "3"}, quota) == 3
    assert cpu_threads({}, quota) == cores  # no cgroup file: the affinity
    quota.write_text("max 100000\n")
    assert cpu_threads({}, quota) == cores
    quota.write_text("150000 100000\n")  # docker --cpus=1.5
    assert cpu_threads({}, quota) == min(cores, 2)
    quota.write_text("50000 100000\n")
    assert cpu_threads({}, quota) == 1


def test_cores_are_split_into_workers():
    assert [cpu_layout(n) for n in (1, 2, 3, 4, 8, 16)] == [(1, 1), (2, 1), (3, 1), (4, 1), (4, 2), (4, 4)]


def test_windows_on_several_workers_give_what_one_worker_gives(tiny_ct2_dir, clips, monkeypatch):
    many = [c * g for c in clips for g in (1.0, 0.7, 0.4, 0.2)]  # several windows, so several batches
    monkeypatch.setenv("HABLA_LS_CPU_THREADS", "1")
    single = FasterWhisperEngine(version="one", model_path=tiny_ct2_dir, compute_type="int8", options=FAST)
    monkeypatch.setenv("HABLA_LS_CPU_THREADS", "2")
    pair = FasterWhisperEngine(version="two", model_path=tiny_ct2_dir, compute_type="int8", options=FAST)
    assert (single.workers, pair.workers) == (1, 2)
    before = pair.counters.copy()
    for options in (FAST, DecodeOptions(temperatures=(0.0,), max_new_tokens=16, pack=False)):
        assert [r.text for r in pair.transcribe(many, beam_size=2, options=options)] == [
            r.text for r in single.transcribe(many, beam_size=2, options=options)]
    assert (pair.counters - before)["packed_windows"] >= 2  # the packed call did have batches for both workers


def test_packed_clip_problems():
    options = DecodeOptions()
    assert packed_clip_problem("Buenos días a todos.", -0.4, 4, 2.0, options) is None
    assert packed_clip_problem("", -30.0, 0, 2.0, options) == "no words"
    assert packed_clip_problem("Sí.", -0.3, 1, 5.0, options) == "1 words in 5.0 s"  # lost words to its neighbours
    assert packed_clip_problem("Abrid el libro.", -1.4, 3, 2.0, options) == "log-prob -1.40"
    assert packed_clip_problem("y y y y y y y y y y y y y y y y y y y y y y", -0.2, 22, 4.0, options) == "repetitive"


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


@pytest.fixture(scope="module")
def base_engine(whisper_base_ct2_dir):
    return load_engine(whisper_base_ct2_dir, device="cpu")


LOUD = ["Buenos días a todos.", "Abrid el libro por la página veinte.", "¿Quién ha terminado?",
        "Hoy vamos a hablar de la historia de Andalucía.", "Mañana hace buen tiempo en el pueblo."]


@pytest.mark.quality
def test_whisper_base_copies_of_one_clip_get_its_text(base_engine, espeak_clip):
    """The issue's case: sent twice, the second copy came back empty (Whisper skips a repeat it just heard)."""
    clip = espeak_clip("Mañana tenemos un examen de ciencias naturales.")
    alone = base_engine.transcribe([clip])[0]
    assert alone.text
    for copies in (2, 5):
        results = base_engine.transcribe([clip.copy() for _ in range(copies)])
        assert [(r.text, r.confidence) for r in results] == [(alone.text, alone.confidence)] * copies
        # With a batch-mate the clip shares a window with it, once: every copy gets that one text.
        mixed = base_engine.transcribe([clip.copy() for _ in range(copies)] + [espeak_clip(LOUD[0])])
        assert mixed[0].text and mixed[0].window_clips == 2
        assert all(r == mixed[0] for r in mixed[:copies])


@pytest.mark.quality
def test_whisper_base_texts_do_not_depend_on_the_order(base_engine, espeak_clip):
    audio = [espeak_clip(t, voice=v) for t, v in zip(LOUD, ["es", "es+f3", "es-419", "es+m3", "es"], strict=True)]
    audio += [espeak_clip("Los alumnos escriben en la pizarra.", gain_db=-20.0), espeak_clip("Sacad el cuaderno.", speed=170)]
    first = [r.text for r in base_engine.transcribe(audio)]
    assert all(first)
    reverse = [r.text for r in base_engine.transcribe(audio[::-1])][::-1]
    order = list(range(len(audio)))
    random.Random(7).shuffle(order)
    shuffled = base_engine.transcribe([audio[i] for i in order])
    assert reverse == first
    assert [shuffled[order.index(i)].text for i in range(len(audio))] == first


@pytest.mark.quality
def test_whisper_base_quiet_clip_emptied_in_a_packed_window_is_decoded_alone(base_engine, espeak_clip):
    """A -50 dB clip after five loud ones: in their window Whisper hears nothing of it (no words come
    back); decoded again alone it gets the words it gets alone."""
    quiet = espeak_clip("Los alumnos escriben en la pizarra.", gain_db=-50.0)
    loud = [espeak_clip(t) for t in LOUD]
    shared = base_engine._decode_windows([loud + [quiet]], 5, base_engine.options)[0]
    assert shared[-1].text == "" and shared[-1].words == 0  # what packing alone would have returned
    before = base_engine.counters.copy()
    results = base_engine.transcribe(loud + [quiet])
    assert (base_engine.counters - before)["redecoded_alone"] >= 1
    alone = base_engine.transcribe([quiet])[0]
    assert results[-1].text == alone.text and "pizarra" in alone.text.lower()
    assert results[-1].window_clips == 1 and results[0].window_clips > 1


@pytest.mark.quality
def test_whisper_base_noise_keeps_its_text_with_a_low_confidence(base_engine):
    """Where the reference decoder blanks a window (no speech and unsure words), the text stays, flagged."""
    rng = np.random.default_rng(0)
    seconds = np.arange(48000) / 16000
    noises = [(rng.standard_normal(48000) * 0.01).astype(np.float32), (0.05 * np.sin(2 * np.pi * 50 * seconds)).astype(np.float32)]
    results = base_engine.transcribe(noises, options=DecodeOptions(pack=False))
    silent = [r for r in results if meets_no_speech_rule(r.avg_logprob, r.no_speech_prob, base_engine.options)]
    assert silent, [(r.text, r.no_speech_prob, r.avg_logprob) for r in results]
    for r in silent:
        assert r.text and r.likely_hallucination and r.confidence < 0.1


def test_embed_gives_one_vector_per_clip_that_depends_on_the_clip_alone(tiny_ct2_dir, tiny_whisper_dir, clips):
    for model in (tiny_ct2_dir, tiny_whisper_dir):
        engine = load_engine(model)
        together = engine.embed(clips)
        assert together.shape == (len(clips), 64)  # the tiny Whisper's d_model
        alone = engine.embed(clips[1:2])
        assert np.allclose(alone[0], together[1], atol=1e-5)
        assert not np.allclose(together[0], together[1])


def test_words_come_timed_with_their_probabilities_alone_and_packed(whisper_base_ct2_dir, espeak_clip):
    engine = load_engine(whisper_base_ct2_dir)
    clips = [espeak_clip("Abrid el libro por la página treinta y dos."), espeak_clip("Muy bien, seguimos mañana.")]
    alone = engine.transcribe(clips, options=DecodeOptions(pack=False, temperatures=(0.0,)), words=True)
    packed = engine.transcribe(clips, options=DecodeOptions(pack=True, temperatures=(0.0,)), words=True)
    for results in (alone, packed):
        for clip, result in zip(clips, results, strict=True):
            assert result.words, result
            assert "".join(w.text for w in result.words).strip() == result.text
            assert all(0 <= w.probability <= 1 for w in result.words)
            starts = [w.start for w in result.words]
            assert starts == sorted(starts) and all(w.start <= w.end for w in result.words)
            # Times are in the clip's own time line, packed or not.
            assert result.words[-1].end <= len(clip) / 16000 + 0.5
    assert max(r.window_clips for r in packed) == 2
    # Without asking, no words (and no extra alignment pass).
    assert engine.transcribe(clips, options=DecodeOptions(pack=False, temperatures=(0.0,)))[0].words == ()
