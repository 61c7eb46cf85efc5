"""The training recipe: the replay set (rehearsal) and weight-space interpolation, on the tiny Whisper."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from habla_ls.sample_recordings import DEFAULT_SENTENCES
from ml_backend.registry import read_card
from synth.sentences import EVERYDAY, REPLAY, SETS, Sentence
from synth.voices import ESPEAK, HELD_OUT_VOICES, TRAINING_VOICES, family_of
from tests.training_data import make_home
from training.base_model import BaseModel, load_processor
from training.dataset import build_dataset, mix_replay
from training.interpolate import (
    FullMixer,
    LambdaScore,
    LoraMixer,
    choose_lambda,
    parse_interpolation,
)
from training.manifest import SPLITS_FILE, read_manifest, split_rows
from training.model import build_model
from training.normalize import normalise
from training.options import (
    DEFAULT_RECIPE,
    PULLBACK_WEIGHT,
    RECIPES,
    REPLAY_RATIO,
    Recipe,
    TrainError,
    TrainOptions,
)
from training.replay_set import ReplaySetError, ensure_replay_set, load_replay, split_replay
from training.train import interpolate_version, train


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Greedy decoding of a tiny model is thousands of small ops: on 2 busy cores, a second OpenMP thread that
    is not scheduled makes each op wait a time slice (measured: 7 s -> 50 s for one test under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FAST = dict(batch_size=4, eval_batch_size=4, generation_max_length=8, progress=False, logging_steps=1, seed=3,
            early_stopping_patience=0, export_ct2=False)


def make_replay_manifest(directory: Path, count: int = 8) -> Path:
    """``count`` replay sentences spoken by the espeak-ng training voices (what the default set holds, smaller)."""
    from training.corpus import build_corpus, make_backend, plan_clips

    backend = make_backend(ESPEAK)
    plans = plan_clips(REPLAY[:count], TRAINING_VOICES[ESPEAK], accented=False, name="replay-espeak")
    result = build_corpus(directory, plans, backend, progress=False)
    rows = [json.loads(line) for line in result.manifest_path.read_text().splitlines()]
    rows = [{**r, "speaker": r["speaker"] if ":" in r["speaker"] else f"{ESPEAK}:{r['speaker']}"} for r in rows]
    result.manifest_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return result.manifest_path


# ---------------------------------------------------------------------------------------------- sentences


# Sharing these is not sharing vocabulary.
FUNCTION_WORDS = {"antes", "cuando", "desde", "encima", "están", "hasta", "hemos", "junto", "siempre", "después", "porque",
                  "también", "entre", "sobre"}


def _content_words(texts) -> set[str]:
    words = {w for t in texts for w in re.findall(r"[a-záéíóúüñ]+", t.lower())}
    return {w for w in words if len(w) >= 5 and w not in FUNCTION_WORDS}


def test_replay_sentences_are_new_standard_and_clip_sized() -> None:
    assert len(REPLAY) >= 60
    assert [s.id for s in REPLAY] == [f"P{i:03d}" for i in range(1, len(REPLAY) + 1)]
    from training import regression_set

    others: dict[str, list[str]] = {name: [s.text for s in sentences] for name, sentences in SETS.items() if name != "replay"}
    others["sample_recordings.DEFAULT_SENTENCES"] = list(DEFAULT_SENTENCES)
    others["regression_set"] = [getattr(s, "text", s) for s in getattr(regression_set, "STANDARD_SENTENCES", ())]
    replay = {normalise(s.text) for s in REPLAY}
    assert len(replay) == len(REPLAY), "a replay sentence appears twice"
    for name, texts in others.items():
        shared = replay & {normalise(t) for t in texts}
        assert not shared, f"replay sentences also in {name}: {sorted(shared)}"
    # The benchmarks test on EVERYDAY: training on its words would flatter the accent WER.
    shared_words = _content_words(s.text for s in REPLAY) & _content_words(s.text for s in EVERYDAY)
    assert not shared_words, sorted(shared_words)
    texts = [s.text for s in REPLAY]
    assert not [t for t in texts if re.search(r"\d", t)]
    assert all(3 <= len(t.split()) <= 14 for t in texts)


# ---------------------------------------------------------------------------------------------- replay set


def test_default_replay_set_is_made_once_with_training_voices_and_linked_into_the_home(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    sentences = REPLAY[:6]
    first = ensure_replay_set(tmp_path / "home1" / "datasets", sentences=sentences, families=(ESPEAK,), cache=cache, progress=False)
    assert first.is_relative_to(tmp_path / "home1" / "datasets" / "replay")
    rows, problems = read_manifest(first)
    assert problems == [] and len(rows) == 6
    assert {normalise(r["transcript"]) for r in rows} == {normalise(s.text) for s in sentences}
    for row in rows:
        family, _, voice = row["speaker"].partition(":")
        assert family_of(row["speaker"]) == ESPEAK and voice in TRAINING_VOICES[ESPEAK]
        assert voice not in HELD_OUT_VOICES[ESPEAK]
        assert Path(row["audio_path"]).is_relative_to(first.parent) and Path(row["audio_path"]).is_file()
    [cached] = [p for p in cache.iterdir() if not p.name.startswith(".")]
    cached_audio = {p.name: p.stat() for p in cached.rglob("*.wav")}

    # A second work dir reuses the machine's copy: the same files (hard links here), nothing re-made.
    second = ensure_replay_set(tmp_path / "home2" / "datasets", sentences=sentences, families=(ESPEAK,), cache=cache, progress=False)
    second_audio = {p.name: p.stat() for p in second.parent.rglob("*.wav")}
    assert set(second_audio) == set(cached_audio)
    assert all(second_audio[n].st_ino == cached_audio[n].st_ino for n in cached_audio)
    assert {p.name: p.stat().st_mtime_ns for p in cached.rglob("*.wav")} == {n: s.st_mtime_ns for n, s in cached_audio.items()}
    assert ensure_replay_set(tmp_path / "home1" / "datasets", sentences=sentences, families=(ESPEAK,), cache=cache) == first

    # Other sentences are another set (another key); the stale one leaves the work dir.
    third = ensure_replay_set(tmp_path / "home1" / "datasets", sentences=REPLAY[:3], families=(ESPEAK,), cache=cache, progress=False)
    assert third != first and not first.exists()

    # A clip that cannot be made: nothing is installed, no half-built directory stays.
    broken = (*REPLAY[:2], Sentence("P999", "   "))
    with pytest.raises(ReplaySetError, match="could not be made"):
        ensure_replay_set(tmp_path / "home3" / "datasets", sentences=broken, families=(ESPEAK,), cache=cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == sorted({first.parent.name, third.parent.name})
    assert not (tmp_path / "home3" / "datasets" / "replay").exists()

    with pytest.raises(ReplaySetError, match="not found"):
        ensure_replay_set(tmp_path, tmp_path / "nope.jsonl")


def test_replay_validation_slice_holds_whole_sentences_and_does_not_depend_on_order() -> None:
    rows = [{"transcript": s.text, "segment_key": f"{v}/{s.id}"} for s in REPLAY[:20] for v in ("a", "b")]
    pool, validation = split_replay(rows)
    assert len(validation) == 10 and len(pool) == 30  # a quarter of the sentences, both voices of each
    assert not {normalise(r["transcript"]) for r in pool} & {normalise(r["transcript"]) for r in validation}
    again_pool, again_validation = split_replay(list(reversed(rows)))
    assert {r["segment_key"] for r in again_validation} == {r["segment_key"] for r in validation}
    assert split_replay(rows[:2]) == (rows[:2], [])  # one sentence: nothing to hold out


def test_rehearsal_mixes_the_configured_share_into_train_only_seeded(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    home = tmp_path / "home"
    manifest = make_home(home, sessions=6, per_session=2)
    replay = load_replay(make_replay_manifest(tmp_path / "replay", count=8))
    processor = load_processor(tiny_whisper_dir, "es")
    datasets_dir = home / "datasets"

    def build(ratio: float, seed: int):
        return build_dataset(manifest, datasets_dir, processor, replay_pool=replay.pool, replay_ratio=ratio, replay_seed=seed)

    plain = build(0.0, 0)
    user_train = plain.sizes["train"]
    built = build(0.5, 1)
    assert built.replay_clips == round(0.5 * user_train) == built.replay_wanted
    assert built.sizes["train"] == user_train + built.replay_clips
    replay_keys = {k for k in built.dataset["train"]["segment_key"] if k.startswith("replay:")}
    pool_keys = {f"replay:{r['segment_key']}" for r in replay.pool}
    assert len(replay_keys) == built.replay_clips and replay_keys <= pool_keys
    for split in ("validation", "test"):
        assert built.sizes[split] == plain.sizes[split]
        assert not [k for k in built.dataset[split]["segment_key"] if k.startswith("replay")]
    assert not [s for s in json.loads((datasets_dir / SPLITS_FILE).read_text())["sessions"] if s.startswith("replay")]
    assert built.split_ids == plain.split_ids  # the user's splits are untouched

    same = build(0.5, 1)
    assert set(same.dataset["train"]["segment_key"]) == set(built.dataset["train"]["segment_key"])
    train_rows = split_rows(manifest, datasets_dir)[0]["train"]
    draws = {seed: frozenset(r["segment_key"] for r in mix_replay(train_rows, replay.pool, 0.5, seed)) for seed in range(6)}
    assert draws[1] == frozenset(replay_keys) and len(set(draws.values())) > 1  # the seed decides the draw
    everything = build(5.0, 1)  # more than the pool holds: all of it
    assert everything.replay_clips == len(replay.pool) < everything.replay_wanted


# ---------------------------------------------------------------------------------------------- interpolation


def test_lambda_choice_takes_the_largest_gain_within_the_standard_limit() -> None:
    scores = [
        LambdaScore(0.0, 0.50, 0.100),
        LambdaScore(0.25, 0.40, 0.100),
        LambdaScore(0.5, 0.30, 0.101),
        LambdaScore(0.75, 0.25, 0.110),
        LambdaScore(1.0, 0.20, 0.150),
    ]
    choice = choose_lambda(scores, limit=0.02)
    assert choice.lam == 0.5 and choice.within_limit
    assert choice.allowed_standard_wer == pytest.approx(0.102)
    assert choose_lambda(scores, limit=0.2).lam == 0.75
    assert choose_lambda(scores, limit=1.0).lam == 1.0
    # Ties on the accent go to the lower standard WER, then to the larger weight.
    tied = [LambdaScore(0.0, 0.5, 0.1), LambdaScore(0.5, 0.3, 0.1), LambdaScore(1.0, 0.3, 0.1)]
    assert choose_lambda(tied).lam == 1.0
    tied[1] = LambdaScore(0.5, 0.3, 0.09)
    assert choose_lambda(tied).lam == 0.5
    # Nothing within the limit: the smallest step, flagged.
    worse = [LambdaScore(0.0, 0.5, 0.1), LambdaScore(0.25, 0.4, 0.2), LambdaScore(1.0, 0.2, 0.3)]
    refused = choose_lambda(worse, limit=0.02)
    assert (refused.lam, refused.within_limit) == (0.25, False) and "smallest" in refused.reason
    # No validation split: the largest weight within the limit.
    blind = [LambdaScore(0.0, None, 0.1), LambdaScore(0.5, None, 0.1), LambdaScore(1.0, None, 0.2)]
    assert choose_lambda(blind).lam == 0.5


def test_interpolation_option_parsing() -> None:
    assert parse_interpolation("auto") == "auto" and parse_interpolation("OFF") == "off" and parse_interpolation(None) == "off"
    assert parse_interpolation("0.5") == 0.5 and parse_interpolation(1) == 1.0
    for bad in ("1.5", "-0.1", "sometimes"):
        with pytest.raises(ValueError):
            parse_interpolation(bad)
    # bench/quality's rehearsal at about one replay clip per eight of the user's, pulled back to 0.8 (bench/term)
    assert DEFAULT_RECIPE == "rehearsal+pullback" and RECIPES[DEFAULT_RECIPE] == Recipe(REPLAY_RATIO, PULLBACK_WEIGHT)
    default = TrainOptions()
    assert (default.effective_replay_ratio, default.effective_interpolation) == (0.12, 0.8)
    assert TrainOptions(recipe="rehearsal").effective_interpolation == "off"
    plain = TrainOptions(recipe="plain")
    assert (plain.effective_replay_ratio, plain.effective_interpolation) == (0.0, "off")
    both = TrainOptions(recipe="rehearsal+interpolation")
    assert (both.effective_replay_ratio, both.effective_interpolation) == (REPLAY_RATIO, "auto")
    mixed = TrainOptions(recipe="rehearsal", replay_ratio=0.5, interpolation="0.75", interpolation_grid="1, 0.5")
    assert (mixed.effective_replay_ratio, mixed.effective_interpolation, mixed.interpolation_grid) == (0.5, 0.75, (0.5, 1.0))
    for bad in (dict(recipe="magic"), dict(interpolation="2"), dict(interpolation_grid="0,1"), dict(replay_ratio=-1.0)):
        with pytest.raises(TrainError):
            TrainOptions(**bad)


def _perturbed(model, seed: int):
    import torch

    tuned = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    return tuned


def _same_weights(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_full_interpolation_ends_are_exactly_the_base_and_the_tuned_weights(tiny_whisper_dir: Path) -> None:
    import torch
    from transformers import WhisperForConditionalGeneration

    base = WhisperForConditionalGeneration.from_pretrained(str(tiny_whisper_dir))
    tuned = _perturbed(base, seed=1)
    reference = copy.deepcopy(tuned)
    model = copy.deepcopy(tuned)
    mixer = FullMixer(model, base)
    mixer.set(0.0)
    assert _same_weights(model, base)
    mixer.set(1.0)
    assert _same_weights(model, reference)
    mixer.set(0.5)
    name, param = next(iter(model.named_parameters()))
    expected = dict(base.named_parameters())[name] + 0.5 * (dict(reference.named_parameters())[name] - dict(base.named_parameters())[name])
    assert torch.allclose(param, expected, atol=1e-7) and not _same_weights(model, base) and not _same_weights(model, reference)


def test_lora_interpolation_scales_the_adapter_then_merges_exactly(tiny_whisper_dir: Path) -> None:
    import torch
    from transformers import WhisperForConditionalGeneration

    base = WhisperForConditionalGeneration.from_pretrained(str(tiny_whisper_dir))
    model = build_model(BaseModel(tiny_whisper_dir, None, "tiny"), TrainOptions(method="lora", lora_r=4, lora_alpha=8))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a trained adapter: B is zero at initialisation
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    tuned_merged = copy.deepcopy(model).merge_and_unload()
    mixer = LoraMixer(model)

    mixer.set(0.0)
    assert _same_weights(copy.deepcopy(model).merge_and_unload(), base)
    mixer.set(1.0)
    assert _same_weights(copy.deepcopy(model).merge_and_unload(), tuned_merged)
    mixer.set(0.5)
    half = copy.deepcopy(model).merge_and_unload()
    name = next(n for n, p in half.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n]))
    b, t, h = (dict(m.named_parameters())[name] for m in (base, tuned_merged, half))
    assert torch.allclose(h, b + 0.5 * (t - b), atol=1e-6)


# ---------------------------------------------------------------------------------------------- end to end


def test_train_with_rehearsal_and_interpolation_records_the_recipe(tmp_path: Path, tiny_registry) -> None:
    """Real training steps with both, a fixed λ = 0 that must give back the base, and interpolation of a registered version."""
    from safetensors.torch import load_file

    home = tmp_path / "home"
    make_home(home, sessions=6, per_session=2)
    base = tiny_registry(home / "models")
    replay_manifest = make_replay_manifest(tmp_path / "replay", count=8)
    replay = load_replay(replay_manifest)
    options = TrainOptions(recipe="rehearsal+interpolation", replay_ratio=0.5, replay_manifest=str(replay_manifest),
                           max_steps=2, interpolation_grid=(0.5, 1.0), **FAST)

    result = train(options, home=home)
    card = read_card(home / "models" / result.version)
    assert card["recipe"] == "rehearsal+interpolation"
    assert card["replay_clips"] == result.replay_clips == round(0.5 * card["train_clips"]) > 0
    assert card["replay"]["ratio"] == 0.5 and card["replay"]["pool"] == len(replay.pool)
    interpolation = card["interpolation"]
    assert interpolation["mode"] == "auto" and interpolation["lambda"] in (0.5, 1.0)
    assert card["interpolation_lambda"] == interpolation["lambda"] == result.interpolation.lam
    assert [s["lambda"] for s in interpolation["scores"]] == [0.0, 0.5, 1.0]
    assert interpolation["clips"] == {"validation": card["validation_clips"], "standard_validation": len(replay.validation)}
    assert all(s["standard_wer"] is not None and s["accent_wer"] is not None for s in interpolation["scores"])
    assert card["processes"] == 1

    # λ = 0 fixed: the registered weights are the base's, bit for bit (adapter scaled to zero, then merged).
    zero = train(options.with_overrides(name="zero", interpolation=0.0, restart=True), home=home)
    assert zero.interpolation.lam == 0.0 and read_card(zero.version_dir)["interpolation"]["mode"] == "fixed"
    registered = load_file(str(zero.version_dir / "hf" / "model.safetensors"))
    original = load_file(str(home / "models" / base / "hf" / "model.safetensors"))
    assert registered.keys() == original.keys()
    import torch

    assert all(torch.equal(registered[k], original[k]) for k in original)

    # The same choice on a version already registered (what bench/quality uses): a new version, same data.
    plain = train(options.with_overrides(name="plain", interpolation="off", restart=True), home=home)
    assert plain.interpolation is None and read_card(plain.version_dir)["interpolation"] is None
    mixed = interpolate_version(plain.version, options.with_overrides(name="plain-interp"), home=home)
    mixed_card = read_card(mixed.version_dir)
    assert mixed_card["interpolated_from"] == plain.version and mixed_card["parent"] == base
    assert mixed_card["interpolation"]["lambda"] in (0.5, 1.0) and mixed_card["replay_clips"] == plain.replay_clips
    assert mixed_card["test_wer_normalised"] is None


# ---------------------------------------------------------------------------------------------- benchmark


def _tiny_quality_corpus(directory: Path) -> Path:
    """bench/quality's three corpora in miniature: training voices train, held-out voices test."""
    from synth.sentences import CLASSROOM
    from training.corpus import build_corpus, make_backend, plan_clips

    backend = make_backend(ESPEAK)
    build_corpus(directory / "train", plan_clips(CLASSROOM[:10], TRAINING_VOICES[ESPEAK], accented=True, name="train",
                                                group_size=2), backend, progress=False)
    for name, accented in (("test_accent", True), ("test_standard", False)):
        build_corpus(directory / name, plan_clips(EVERYDAY[:2], HELD_OUT_VOICES[ESPEAK], accented=accented, name=name),
                     backend, progress=False)
    return directory


@pytest.mark.slow
def test_quality_bench_runs_the_variants_end_to_end_and_resumes(tmp_path: Path, tiny_whisper_dir: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tests.bench_scripts import bench_script

    with bench_script("quality/run.py", "bench_quality_run") as bench:
        corpus = _tiny_quality_corpus(tmp_path / "corpus")
        out = tmp_path / "out"
        argv = ["--corpus", str(corpus), "--work", str(tmp_path / "work"), "--out", str(out), "--base", str(tiny_whisper_dir),
                "--variants", "base-recipe,rehearsal+interpolation", "--seeds", "0", "--max-steps", "1", "--batch-size", "4",
                "--max-train-clips", "10", "--validation-fraction", "0.2", "--replay-manifest",
                str(make_replay_manifest(tmp_path / "replay", count=8)), "--interpolation-grid", "0.5,1",
                "--beam-size", "1", "--max-new-tokens", "4", "--generation-max-length", "8", "--quiet"]
        assert bench.main(argv) == 0
        captured = capsys.readouterr()
        printed = captured.out
        assert "trained 1 step(s) in" in printed  # --quiet drops the bars, not the training's lines
        assert "{'loss'" not in printed and "{'train_runtime'" not in printed
        # and no bar at all: not scoring's, not interpolation's weight loading, not feature caching's
        assert "\r" not in captured.out + captured.err
        summary = json.loads((out / "quality-recipes.json").read_text())
        assert set(summary["variants"]) == {"base-recipe", "rehearsal+interpolation"}
        both = summary["variants"]["rehearsal+interpolation"]
        assert both["lambdas"][0] in (0.5, 1.0) and both["replay_clips"][0] > 0
        assert both["total_training_clips"] <= 10  # replay clips count against the clip budget
        assert summary["variants"]["base-recipe"]["lambdas"] == [None]
        md = (out / "quality-recipes.md").read_text()
        assert "| rehearsal+interpolation | 0 |" in md
        # Scored each clip alone (as Habla transcribes a segment), the packed grouping beside it.
        base = json.loads((out / "runs" / "base.json").read_text())
        assert base["scoring"] == "alone" and base["other_scoring"]["scoring"] == "packed"
        assert "each clip decoded alone" in md and "| packed: " in md
        # the options the runs trained with, defaults resolved: a row can be reproduced from the report
        from training.options import TrainOptions
        assert f"batch 4, learning rate 0.001, pack fraction {TrainOptions().pack_fraction:g}" in md
        assert (out / "quality-recipes.png").read_bytes()[:4] == b"\x89PNG"
        runs = sorted(p.name for p in (out / "runs").glob("*.json"))
        assert runs == ["base-recipe-s0.json", "base.json", "rehearsal+interpolation-s0.json",
                        "train-plain-s0.json", "train-plain-s0.started.json",
                        "train-rehearsal-s0.json", "train-rehearsal-s0.started.json"]

        # Resumable: a second run with the same settings trains and scores nothing again.
        stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
        versions = sorted(p.name for p in (tmp_path / "work" / "models").iterdir())
        assert bench.main(argv) == 0
        assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == stamps
        assert sorted(p.name for p in (tmp_path / "work" / "models").iterdir()) == versions


def test_a_short_run_trains_at_a_lower_default_rate():
    from training.options import FULL_RATE_STEPS, TrainOptions, planned_steps

    options = TrainOptions(batch_size=8, epochs=5)
    # 28 clips of a first round: 4 rows of 8 per epoch, 20 steps, half of LoRA's 1e-3.
    assert planned_steps(options, 28) == 20
    assert options.learning_rate_for(20) == pytest.approx(5e-4)
    assert options.learning_rate_for(60) == pytest.approx(7.5e-4)
    assert options.learning_rate_for(FULL_RATE_STEPS * 3) == pytest.approx(1e-3)
    # A rate given is used as it is, and max_steps is the plan.
    assert TrainOptions(learning_rate=3e-3).learning_rate_for(5) == 3e-3
    assert planned_steps(TrainOptions(max_steps=7), 1000) == 7
    assert TrainOptions(method="full").learning_rate_for(10) == pytest.approx(5e-6)
