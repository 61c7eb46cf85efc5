"""Fine-tuning with real training steps on the tiny Whisper: learning, crash safety, resume, options."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from transformers import TrainerCallback

from habla_ls.cli import cli
from ml_backend.registry import list_versions, read_card, read_current
from tests.training_data import make_home
from training.base_model import BaseModel, load_processor
from training.collator import SpeechCollator
from training.features import featurize_rows
from training.manifest import DatasetOptions, read_manifest
from training.model import build_model
from training.options import TrainError, TrainOptions
from training.train import train

# Small and quick: 2 steps per epoch on 8 training clips, short validation decodes.
# These tests are about training's mechanics; the default recipe's replay set is tested in test_recipe.py.
FAST = dict(batch_size=4, eval_batch_size=4, generation_max_length=8, progress=False, logging_steps=1, seed=3, recipe="plain")


@pytest.mark.parametrize(("method", "lr", "ratio"), [("full", 3e-3, 0.7), ("lora", 3e-2, 0.97)])
def test_loss_falls_on_a_fixed_batch(tiny_whisper_dir: Path, tmp_path: Path, method: str, lr: float, ratio: float) -> None:
    import torch

    manifest = make_home(tmp_path, sessions=1, per_session=2)
    processor = load_processor(tiny_whisper_dir, "es")
    rows, _ = read_manifest(manifest)
    data, rejected, _ = featurize_rows(rows, processor, DatasetOptions(), tmp_path / "cache")
    assert rejected == []
    options = TrainOptions(method=method, lora_r=4, lora_alpha=8)
    model = build_model(BaseModel(tiny_whisper_dir, None, "tiny"), options)
    if method == "lora":
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)
    batch = SpeechCollator(processor.tokenizer.pad_token_id, model.config.decoder_start_token_id)(
        list(data.with_format("numpy", columns=["input_features", "labels"]))
    )
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(12):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    # LoRA moves only small low-rank deltas of the attention projections: its loss falls more slowly.
    assert losses[-1] < ratio * losses[0], losses
    assert min(losses[-3:]) < min(losses[:3]), losses


class CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_killed_run_leaves_registry_unchanged_and_resume_continues(tmp_path: Path, tiny_registry) -> None:
    """A real `habla-ls train` process is SIGKILLed after its first checkpoint; `--resume` finishes it."""
    home = tmp_path / "home"
    make_home(home)
    models = home / "models"
    base = tiny_registry(models)
    before = (list_versions(models), read_current(models))
    config = tmp_path / "train.toml"
    settings = {**FAST, "epochs": 3, "early_stopping_patience": 0}
    config.write_text("[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    run_dir = home / "runs" / "habla"

    process = subprocess.Popen(
        [sys.executable, "-m", "habla_ls.cli", "--home", str(home), "train", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
    )
    try:
        deadline = time.monotonic() + 240
        while not list(run_dir.glob("checkpoint-*/trainer_state.json")):
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists())
    assert checkpoints and checkpoints[-1] < 6
    assert (list_versions(models), read_current(models)) == before

    with pytest.raises(TrainError, match="--resume"):
        train(TrainOptions(**settings), home=home)

    counter = CountSteps()
    result = train(TrainOptions(**settings, resume=True), home=home, callbacks=[counter])
    assert result.resumed_from is not None and result.resumed_from.endswith(f"checkpoint-{checkpoints[-1]}")
    assert counter.steps == list(range(checkpoints[-1] + 1, 7))  # finished steps are not trained again
    assert result.global_step == 6
    assert result.version == "habla-v1" and list_versions(models) == sorted([base, "habla-v1"])
    assert not [p for p in models.iterdir() if p.name.startswith(".staging")]
    assert read_current(models) == base  # training never promotes
    version_dir = models / "habla-v1"
    for sub in ("hf/config.json", "lora/adapter_config.json", "ct2/model.bin", "ct2/tokenizer.json"):
        assert (version_dir / sub).is_file(), sub
    card = read_card(version_dir)
    assert card["parent"] == base and card["method"] == "lora" and card["train_clips"] == result.train_clips > 0
    assert card["validation_wer"] is not None and card["test_split_id"]
    assert not list(run_dir.glob("checkpoint-*"))  # a finished run leaves no checkpoints
    assert list(run_dir.rglob("events.out.tfevents*"))  # TensorBoard logs stay


def test_failure_while_writing_the_version_registers_nothing(tmp_path: Path, tiny_registry) -> None:
    """The export step fails half-way through writing the new version: no version, no staging left."""
    home = tmp_path / "home"
    make_home(home, sessions=4, per_session=2)
    models = home / "models"
    tiny_registry(models)
    before = sorted(p.name for p in models.iterdir())
    with pytest.raises(ValueError, match="int3"):
        train(TrainOptions(epochs=1, ct2_quantization="int3", **FAST), home=home)
    assert sorted(p.name for p in models.iterdir()) == before


def test_options_from_file_with_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "train.toml"
    toml.write_text('[train]\nmethod = "full"\nepochs = 2\nlora_target_modules = "q_proj, k_proj"\n')
    options = TrainOptions.from_file(toml, epochs=4.0)
    assert (options.method, options.epochs, options.lora_target_modules) == ("full", 4.0, ("q_proj", "k_proj"))
    assert options.effective_learning_rate == 1e-5
    (tmp_path / "bad.json").write_text(json.dumps({"epochz": 3}))
    with pytest.raises(TrainError, match="unknown option"):
        TrainOptions.from_file(tmp_path / "bad.json")
    with pytest.raises(TrainError, match="method"):
        TrainOptions(method="qlora")


def test_cli_preprocessing_only_caches_features(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    home = tmp_path / "home"
    make_home(home, sessions=4, per_session=1)
    runner = CliRunner()
    args = ["--home", str(home), "train", "--base", str(tiny_whisper_dir), "--preprocessing-only"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "features cached" in first.output
    cached = sorted((home / "datasets" / "cache").glob("*.arrow"))
    assert cached and (home / "datasets" / "splits.json").is_file()
    stamps = [p.stat().st_mtime_ns for p in cached]
    again = runner.invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert [p.stat().st_mtime_ns for p in sorted((home / "datasets" / "cache").glob("*.arrow"))] == stamps
    assert not list((home / "models").glob("*")) if (home / "models").exists() else True

    missing = runner.invoke(cli, ["--home", str(tmp_path / "empty"), "train", "--base", str(tiny_whisper_dir)])
    assert missing.exit_code != 0 and "manifest not found" in missing.output
    no_base = runner.invoke(cli, ["--home", str(home), "train"])
    assert no_base.exit_code != 0 and "no CURRENT version" in no_base.output


def test_training_prints_readable_lines_not_dicts(tmp_path: Path, tiny_registry, capsys) -> None:
    home = tmp_path / "home"
    make_home(home)
    tiny_registry(home / "models")
    result = train(TrainOptions(**{**FAST, "progress": True, "max_steps": 2, "epochs": 1}), home=home)
    printed = capsys.readouterr()
    out = printed.out + printed.err
    assert result.global_step == 2
    assert "step 1 (epoch" in out and "training loss" in out
    assert "trained 2 step(s)" in out
    assert "{'" not in out  # no Python dicts of transformers' own progress callback


def test_log_events_read_as_sentences() -> None:
    from training.progress import describe_log

    assert describe_log({"eval_loss": 0.5691, "eval_wer": 0.1094, "epoch": 3.0}, 12) == "epoch 3: validation WER 0.109, loss 0.569"
    assert describe_log({"loss": 0.9842, "learning_rate": 0.000959, "epoch": 0.83}, 10) == (
        "step 10 (epoch 0.83): training loss 0.984, learning rate 0.00096"
    )
    assert describe_log({"total_flos": 1.0}, 3) is None


@pytest.mark.parametrize("frozen", [1, 2])
def test_frozen_encoder_layers_train_from_states_computed_once(tmp_path: Path, tiny_registry, frozen: int) -> None:
    """frozen_encoder_layers: the layers above learn from cached states; the frozen ones stay the base's.

    The tiny Whisper has 2 encoder layers: 1 freezes the stem and layer 0, 2 the whole encoder.
    """
    import torch
    from safetensors.torch import load_file

    from training.encoder_cache import compute_states

    home = tmp_path / "home"
    make_home(home)
    models = home / "models"
    base = tiny_registry(models)
    calls: list[int] = []

    def counting(*args, **kwargs):
        calls.append(1)
        return compute_states(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("training.encoder_cache.compute_states", counting)
        result = train(TrainOptions(frozen_encoder_layers=frozen, epochs=2, early_stopping_patience=0, **FAST), home=home)
    assert len(calls) == 2  # train and validation, once each for the whole run
    assert result.global_step == 4 and result.validation_wer is not None
    tuned = load_file(str(models / result.version / "hf" / "model.safetensors"))
    original = load_file(str(models / base / "hf" / "model.safetensors"))
    assert tuned.keys() == original.keys()
    changed = {k for k in original if not torch.equal(tuned[k], original[k])}
    frozen_keys = [k for k in original if ".encoder." in k and (".layers.0." in k or ".layers." not in k)]
    assert frozen_keys and not changed & set(frozen_keys)
    upper = {k for k in changed if ".encoder.layers.1." in k}
    assert bool(upper) == (frozen == 1)  # LoRA merged into the layer above the frozen ones
    assert any(".decoder.layers." in k for k in changed)
    assert read_card(models / result.version)["options"]["frozen_encoder_layers"] == frozen
    assert not list((home / "runs" / "habla").glob("encoder-states-*"))  # removed with the checkpoints


@pytest.mark.parametrize("frozen", [1, 2])
def test_cached_encoder_states_give_the_loss_of_the_full_forward(tiny_whisper_dir: Path, tmp_path: Path, frozen: int) -> None:
    import torch

    from training.encoder_cache import EncoderStatesDataset, compute_states, run_upper_layers

    manifest = make_home(tmp_path, sessions=1, per_session=3)
    processor = load_processor(tiny_whisper_dir, "es")
    rows, _ = read_manifest(manifest)
    data, _, _ = featurize_rows(rows, processor, DatasetOptions(), tmp_path / "cache")
    model = build_model(BaseModel(tiny_whisper_dir, None, "tiny"), TrainOptions(method="full", frozen_encoder_layers=frozen))
    encoder = model.get_encoder()
    assert not any(p.requires_grad for p in encoder.layers[0].parameters())
    assert all(p.requires_grad for p in encoder.layers[1].parameters()) == (frozen == 1)
    collate = SpeechCollator(processor.tokenizer.pad_token_id, model.config.decoder_start_token_id)
    features = data.with_format("numpy", columns=["input_features", "labels"])
    states = compute_states(model, features, tmp_path / "states" / "encoder-states-train-x.npy", frozen_layers=frozen, batch_size=2)
    assert states.shape[0] == 3
    cached = EncoderStatesDataset(states, data["labels"])
    model.eval()
    with torch.no_grad():
        full = model(**collate(list(features))).loss.item()
        restore = run_upper_layers(encoder, frozen)
        from_states = model(**collate([cached[i] for i in range(len(cached))])).loss.item()
        restore()
        again = model(**collate(list(features))).loss.item()
    assert from_states == pytest.approx(full, rel=1e-3)
    assert again == full  # the encoder's own forward is back


def test_frozen_encoder_refuses_spec_augment() -> None:
    with pytest.raises(TrainError, match="spec_augment"):
        TrainOptions(frozen_encoder_layers=1, spec_augment=True)


def test_mel_warp_moves_formants_and_draws_a_new_voice_each_time() -> None:
    import numpy as np

    from training.augment import MelWarpedRows, warp_mel_axis

    features = np.zeros((80, 6), dtype=np.float32)
    features[40] = 1.0  # one formant, at mel bin 40
    assert np.array_equal(warp_mel_axis(features, 1.0), features)
    lowered = warp_mel_axis(features, 1.25)  # a longer vocal tract: the formant moves down, to bin 32
    assert int(lowered[:, 0].argmax()) == 32 and lowered[32, 0] == pytest.approx(1.0)
    raised = warp_mel_axis(features, 0.8)
    assert int(raised[:, 0].argmax()) == 50
    rows = MelWarpedRows([{"input_features": features, "labels": np.array([1, 2])}], 0.2, seed=0)
    peaks = {int(rows[0]["input_features"][:, 0].argmax()) for _ in range(20)}
    assert len(peaks) > 3 and all(33 <= p <= 50 for p in peaks)  # factors within [0.8, 1.2]
    assert np.array_equal(rows.rows[0]["input_features"], features)  # the cached features are left as they were


def test_mel_warp_draws_other_factors_in_each_dataloader_worker_and_epoch() -> None:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from training.augment import MelWarpedRows

    features = np.zeros((80, 6), dtype=np.float32)
    features[40] = 1.0
    rows = MelWarpedRows([{"input_features": features}] * 8, 0.2, seed=0)

    def epoch() -> list[bytes]:
        loader = DataLoader(rows, batch_size=1, num_workers=2, collate_fn=lambda batch: batch[0])
        return [row["input_features"].tobytes() for row in loader]

    torch.manual_seed(0)
    first, second = epoch(), epoch()
    # Worker 0 serves items 0, 2, ...; worker 1 items 1, 3, ...: with one copied generator they would match.
    assert first[0::2] != first[1::2]
    assert first != second  # and a new epoch is not a replay of the last
    torch.manual_seed(0)
    assert epoch() == first  # reproducible from the seed


def test_training_with_mel_warp_registers_a_version(tmp_path: Path, tiny_registry, capsys: pytest.CaptureFixture[str]) -> None:
    import datasets

    home = tmp_path / "home"
    make_home(home)
    tiny_registry(home / "models")
    result = train(TrainOptions(mel_warp=0.1, epochs=1, early_stopping_patience=0, **FAST), home=home)
    # progress=False: no library bars either (feature caching, weight loading), and they are back afterwards
    printed = capsys.readouterr()
    assert "log-mel features" not in printed.err + printed.out and "Loading weights" not in printed.err + printed.out
    assert not datasets.are_progress_bars_disabled()
    assert result.global_step == 2 and read_card(home / "models" / result.version)["options"]["mel_warp"] == 0.1
    with pytest.raises(TrainError, match="mel_warp"):
        TrainOptions(mel_warp=0.1, frozen_encoder_layers=2)


@pytest.mark.parametrize("scope", ["encoder", "decoder"])
def test_lora_scope_puts_adapters_on_one_half_only(tiny_whisper_dir: Path, scope: str) -> None:
    model = build_model(BaseModel(tiny_whisper_dir, None, "tiny"), TrainOptions(lora_scope=scope, lora_r=4, lora_alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    other = "decoder" if scope == "encoder" else "encoder"
    assert trainable and all("lora_" in n and f".{scope}." in n for n in trainable)
    assert not any(f".{other}." in n for n in trainable)
    with pytest.raises(TrainError, match="lora_scope"):
        TrainOptions(lora_scope="both")


def test_training_with_packed_windows_takes_fewer_steps_and_counts_clips(tmp_path: Path, tiny_registry) -> None:
    home = tmp_path / "home"
    make_home(home, sessions=8, per_session=2)
    tiny_registry(home / "models")
    alone = train(TrainOptions(pack_fraction=0.0, epochs=1, early_stopping_patience=0, **FAST), home=home)
    packed = train(TrainOptions(pack_fraction=1.0, epochs=1, early_stopping_patience=0, **FAST), home=home)
    card = read_card(home / "models" / packed.version)
    # the same clips, fewer rows: every 1-s clip fits a window with others
    assert packed.train_clips == alone.train_clips and card["train_clips"] == alone.train_clips
    assert card["packed"]["clips"] == alone.train_clips and card["packed"]["windows"] >= 1
    assert packed.global_step < alone.global_step
    with pytest.raises(TrainError, match="pack_fraction"):
        TrainOptions(pack_fraction=1.5)



def test_repacked_windows_give_each_epoch_its_own_arrangement(tmp_path: Path, tiny_registry) -> None:
    from transformers import TrainerCallback

    from training.packing import RowsByEpoch

    seen: list[tuple[int, int]] = []  # (epoch the trainer is in, plan its batches came from)

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):
            rows = train_dataloader.dataset
            assert isinstance(rows, RowsByEpoch)
            seen.append((int(state.epoch - 1e-9), rows.epoch % len(rows.epochs)))

    home = tmp_path / "home"
    make_home(home, sessions=8, per_session=2)
    tiny_registry(home / "models")
    once = train(TrainOptions(pack_fraction=1.0, epochs=2, early_stopping_patience=0, **FAST), home=home)
    result = train(TrainOptions(pack_fraction=1.0, epochs=2, repack_windows=True, early_stopping_patience=0, **FAST),
                   home=home, callbacks=[Record()])
    card = read_card(home / "models" / result.version)
    assert card["packed"]["plans"] == 2 and read_card(home / "models" / once.version)["packed"]["plans"] == 1
    assert result.global_step == once.global_step  # as many rows every epoch: the step count holds
    assert sorted(set(seen)) == [(0, 0), (1, 1)]


class ThreadsAtStep(TrainerCallback):
    def __init__(self) -> None:
        self.threads: list[int] = []

    def on_step_begin(self, args, state, control, **kwargs):
        import torch

        self.threads.append(torch.get_num_threads())


def test_training_after_a_ctranslate2_model_in_the_same_process_uses_every_core(
    tmp_path: Path, tiny_registry, tiny_ct2_dir: Path
) -> None:
    """Scoring or serving loads CTranslate2, which sets the process's OpenMP threads to its own (one per
    replica on 2 cores); a training after it in the same process (bench/quality, `habla-ls watch`) must not
    inherit that."""
    import torch

    from ml_backend.cpu import cpu_layout, cpu_threads
    from ml_backend.decoding import DecodeOptions
    from ml_backend.loading import load_engine
    from training.train import training_threads

    if cpu_threads() < 2:
        pytest.skip("one core: one thread is all there is")
    original = torch.get_num_threads()
    try:
        load_engine(tiny_ct2_dir, device="cpu", options=DecodeOptions(temperatures=(0.0,), max_new_tokens=8))
        assert torch.get_num_threads() == cpu_layout(cpu_threads())[1]  # the fault, as CTranslate2 leaves it
        home = tmp_path / "home"
        make_home(home)
        tiny_registry(home / "models")
        seen = ThreadsAtStep()
        train(TrainOptions(epochs=1, **FAST), home=home, callbacks=[seen])
        assert seen.threads and set(seen.threads) == {training_threads()} == {cpu_threads()}
    finally:
        torch.set_num_threads(original)


def test_training_threads_follow_the_launcher() -> None:
    from training.train import training_threads

    assert training_threads({"OMP_NUM_THREADS": "3", "HABLA_LS_CPU_THREADS": "8"}) == 3  # torchrun's setting wins
    assert training_threads({"HABLA_LS_CPU_THREADS": "8", "LOCAL_WORLD_SIZE": "2"}) == 4  # a share per process
    assert training_threads({"HABLA_LS_CPU_THREADS": "1", "LOCAL_WORLD_SIZE": "4"}) == 1
