"""`habla-ls train` on two CPU processes (gloo) under the README's launchers, then the promotion gate.

The README's lines, run here as they are written (from the venv's Python; the tiny Whisper and a few
steps keep each run short):

    torchrun --standalone --nproc-per-node 2 -m habla_ls.cli train ...
    accelerate launch --multi_gpu --num_processes 2 -m habla_ls.cli train ...

(``--multi_gpu`` is accelerate's name for its torchrun-based launcher; without CUDA the processes
train on the CPU with gloo. The test adds a free ``--main_process_port`` so parallel runs do not meet.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from ml_backend.registry import list_versions, read_card, read_current
from tests.test_recipe import make_replay_manifest
from tests.training_data import make_home, make_regression_manifest
from training.features import CACHE_SUBDIR, cache_writes
from training.options import REPLAY_RATIO

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(batch_size=2, eval_batch_size=2, generation_max_length=8, progress=False, logging_steps=1, seed=3,
                max_steps=3, early_stopping_patience=0, interpolation_grid=[0.5, 1.0])

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher(name: str) -> list[str]:
    if name == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port())]


def _home(tmp_path: Path, tiny_registry) -> tuple[Path, str, Path, Path]:
    home = tmp_path / "home"
    make_home(home, sessions=6, per_session=2)
    base = tiny_registry(home / "models")
    replay = make_replay_manifest(tmp_path / "replay", count=8)
    config = tmp_path / "train.toml"
    config.write_text("[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in SETTINGS.items()))
    return home, base, replay, config


def _train(launcher: str, home: Path, config: Path, replay: Path) -> subprocess.CompletedProcess:
    command = [*_launcher(launcher), "-m", "habla_ls.cli", "--home", str(home), "train", "--config", str(config),
               "--recipe", "rehearsal+interpolation", "--replay-manifest", str(replay)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _check_one_run_on_two_processes(home: Path, base: str, done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    # Exactly one version, registered once (by rank 0), trained on two processes.
    assert list_versions(home / "models") == sorted([base, "habla-v1"])
    assert done.stdout.count("registered habla-v1") == 1
    card = read_card(home / "models" / "habla-v1")
    assert card["processes"] == 2
    assert card["replay_clips"] == round(REPLAY_RATIO * card["train_clips"]) > 0
    assert card["interpolation"]["mode"] == "auto" and card["interpolation_lambda"] in (0.5, 1.0)
    # Features cached once: one file per set (the default packs half the training clips into windows,
    # a set of its own), each computed by rank 0 only (rank 1 read them).
    assert card["packed"]["windows"] >= 1
    cache = home / "datasets" / CACHE_SUBDIR
    files = sorted(p.name for p in cache.glob("*.arrow"))
    assert sorted(name.rsplit("-", 1)[0] for name in files) == sorted(
        ["train", "train-windows", "validation", "test", "standard_validation"])
    writes = cache_writes(cache)
    assert sorted(w["file"] for w in writes) == files
    assert {w["rank"] for w in writes} == {0}
    assert read_current(home / "models") == base  # training never promotes
    return card


def test_torchrun_two_processes_then_the_gate(tmp_path: Path, tiny_registry, monkeypatch) -> None:
    home, base, replay, config = _home(tmp_path, tiny_registry)
    _check_one_run_on_two_processes(home, base, _train("torchrun", home, config, replay))

    # The same gate after it: evaluate both on the test split and a (small) regression set, then promote.
    monkeypatch.setenv("HABLA_LS_REGRESSION_MANIFEST", str(make_regression_manifest(tmp_path / "regression")))
    monkeypatch.setenv("HABLA_LS_MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("HABLA_LS_TEMPERATURES", "0")
    runner = CliRunner()
    evaluated = runner.invoke(cli, ["--home", str(home), "evaluate", "habla-v1", base, "--beam-size", "1"])
    assert evaluated.exit_code == 0, evaluated.output
    promoted = runner.invoke(cli, ["--home", str(home), "models", "promote", "habla-v1"])
    assert promoted.exit_code in (0, 1), promoted.output  # a decision, either way, not a crash
    assert "habla-v1" in promoted.output
    assert read_current(home / "models") == ("habla-v1" if promoted.exit_code == 0 else base)


def test_accelerate_launch_two_processes(tmp_path: Path, tiny_registry) -> None:
    home, base, replay, config = _home(tmp_path, tiny_registry)
    _check_one_run_on_two_processes(home, base, _train("accelerate", home, config, replay))
