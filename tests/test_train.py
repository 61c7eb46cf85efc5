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
from training.dataset import DatasetOptions, featurize_rows, read_manifest
from training.train import (
    BaseModel,
    SpeechCollator,
    TrainError,
    TrainOptions,
    build_model,
    load_processor,
    train,
)

# Small and quick: 2 steps per epoch on 8 training clips, short validation decodes.
FAST = dict(batch_size=4, eval_batch_size=4, generation_max_length=8, progress=False, logging_steps=1, seed=3)


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
