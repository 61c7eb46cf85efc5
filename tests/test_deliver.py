"""Delivery to Habla: the delivered dir loads in faster-whisper as Habla loads it, atomically switched,
the previous version kept, Habla's .env line rewritten alone, and a failed or killed delivery changes nothing."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from ml_backend.audio import decode
from ml_backend.registry import CT2_SUBDIR
from tests.fixtures_models import convert_to_ct2
from tests.training_data import spoken
from training.deliver import (
    ENV_FILE,
    REQUIRED_FILES,
    STATE_FILE,
    DeliveryError,
    deliver,
    env_value,
    read_env_line,
    read_state,
    rollback,
    set_env_line,
)

REPO = Path(__file__).resolve().parent.parent

# Habla's own habla/.env.example layout (CRLF: Habla is set up on Windows), trimmed.
HABLA_ENV = (
    "# Habla Translate - Environment Variables\r\n"
    "HF_TOKEN=hf_your_token_here\r\n"
    "# --- ASR ---\r\n"
    "# WHISPER_MODEL=small           # tiny | base | small | medium | large-v2\r\n"
    "WHISPER_MODEL=small\r\n"
    "WHISPER_DEVICE=cpu\r\n"
    "# RECORDING_ENABLED=false\r\n"
)


@pytest.fixture
def registry(tmp_path: Path, tiny_registry, tiny_whisper_dir: Path) -> tuple[Path, list[str]]:
    """Three versions; tiny-v2 and tiny-v3 hold an int8 export, so every version's model.bin differs from v1's."""
    models = tmp_path / "home" / "models"
    versions = [tiny_registry(models) for _ in range(3)]
    int8 = convert_to_ct2(tiny_whisper_dir, tmp_path / "int8", quantization="int8")
    for version in versions[1:]:
        shutil.rmtree(models / version / CT2_SUBDIR)
        shutil.copytree(int8, models / version / CT2_SUBDIR)
    return models, versions


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) with its content hash."""
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _transcribe_as_habla(env_file: Path) -> tuple[str, str]:
    """Habla's start: WHISPER_MODEL from its .env, whisperx.load_model -> faster-whisper's WhisperModel(<dir>,
    device, compute_type=int8) with the hub unreachable; then one clip. Returns (model dir, text)."""
    from faster_whisper import WhisperModel

    model_dir = read_env_line(env_file)
    assert model_dir and Path(model_dir).is_dir()
    model = WhisperModel(model_dir, device="cpu", compute_type="int8", local_files_only=False, cpu_threads=1)
    segments, info = model.transcribe(decode(spoken("hola a todos")), language="es", beam_size=1,
                                      max_new_tokens=8, without_timestamps=True)
    text = "".join(segment.text for segment in segments)
    assert info.language == "es" and info.duration > 0.5
    return model_dir, text


def test_delivered_version_loads_in_faster_whisper_as_habla_loads_it(registry, tmp_path, monkeypatch) -> None:
    models, (v1, v2, _v3) = registry
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on Habla's machine without a hub: the dir must be complete
    habla_dir, env = tmp_path / "habla-models", tmp_path / "habla" / ".env"
    env.parent.mkdir()
    env.write_bytes(HABLA_ENV.encode())

    first = deliver(models, v1, habla_dir, env_file=env)
    assert first.changed and first.previous is None and first.path == habla_dir / v1
    model_dir, text = _transcribe_as_habla(env)
    assert isinstance(text, str)
    assert Path(model_dir) == (habla_dir / v1).resolve()
    assert _sha(Path(model_dir) / "model.bin") == _sha(models / v1 / CT2_SUBDIR / "model.bin")
    assert read_env_line(habla_dir / ENV_FILE) == model_dir

    second = deliver(models, v2, habla_dir, env_file=env)
    assert second.changed and second.previous == v1
    model_dir, _ = _transcribe_as_habla(env)
    assert Path(model_dir) == (habla_dir / v2).resolve()
    assert _sha(Path(model_dir) / "model.bin") == _sha(models / v2 / CT2_SUBDIR / "model.bin")
    assert _sha(Path(model_dir) / "model.bin") != _sha(habla_dir / v1 / "model.bin")
    assert all((habla_dir / v1 / name).is_file() for name in REQUIRED_FILES)  # kept for rollback
    assert read_state(habla_dir).current == v2 and read_state(habla_dir).previous == v1

    # Only the active WHISPER_MODEL line changed; the comment, the other settings and CRLF are intact.
    before, after = HABLA_ENV.split("\r\n"), env.read_bytes().decode().split("\r\n")
    assert [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b] == [4]
    assert after[4] == f"WHISPER_MODEL={(habla_dir / v2).resolve()}"


def test_redelivery_is_a_no_op_and_older_copies_go(registry, tmp_path) -> None:
    models, (v1, v2, v3) = registry
    habla_dir, env = tmp_path / "habla-models", tmp_path / ".env"
    env.write_text("HF_TOKEN=x\n")
    deliver(models, v1, habla_dir, env_file=env)
    deliver(models, v2, habla_dir, env_file=env)
    stamps = {p: p.stat().st_mtime_ns for p in (habla_dir / STATE_FILE, habla_dir / ENV_FILE, env, habla_dir / v2 / "model.bin")}
    snapshot = _snapshot(habla_dir)

    again = deliver(models, v2, habla_dir, env_file=env)
    assert not again.changed and again.previous == v1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and _snapshot(habla_dir) == snapshot
    assert env.read_text() == f"HF_TOKEN=x\nWHISPER_MODEL={(habla_dir / v2).resolve()}\n"  # appended once

    third = deliver(models, v3, habla_dir, env_file=env)
    assert third.previous == v2 and third.removed == (v1,)
    assert not (habla_dir / v1).exists() and (habla_dir / v2 / "model.bin").is_file()


def test_rollback_swaps_back_and_forth(registry, tmp_path) -> None:
    models, (v1, v2, _v3) = registry
    habla_dir, env = tmp_path / "habla-models", tmp_path / ".env"
    with pytest.raises(DeliveryError, match="nothing to roll back to"):
        rollback(habla_dir, env_file=env)
    deliver(models, v1, habla_dir, env_file=env)
    deliver(models, v2, habla_dir, env_file=env)
    back = rollback(habla_dir, env_file=env)
    assert (back.version, back.previous) == (v1, v2)
    assert read_env_line(env) == read_env_line(habla_dir / ENV_FILE) == str((habla_dir / v1).resolve())
    forth = rollback(habla_dir, env_file=env)
    assert (forth.version, forth.previous) == (v2, v1) and read_env_line(env).endswith(v2)


def test_a_failing_delivery_leaves_the_habla_dir_unchanged(registry, tmp_path) -> None:
    models, (v1, v2, v3) = registry
    habla_dir, env = tmp_path / "habla-models", tmp_path / ".env"
    deliver(models, v1, habla_dir, env_file=env)
    snapshot, env_text = _snapshot(habla_dir), env.read_text()

    shutil.rmtree(models / v2 / CT2_SUBDIR)
    with pytest.raises(DeliveryError, match=rf"^{v2}: no CTranslate2 export in .*habla-ls models export {v2}"):
        deliver(models, v2, habla_dir, env_file=env)
    (models / v3 / CT2_SUBDIR / "tokenizer.json").unlink()  # faster-whisper would go to the hub for it
    with pytest.raises(DeliveryError, match=rf"^{v3}: missing tokenizer.json"):
        deliver(models, v3, habla_dir, env_file=env)
    with pytest.raises(DeliveryError, match="no model version 'tiny-v9'"):
        deliver(models, "tiny-v9", habla_dir, env_file=env)
    assert _snapshot(habla_dir) == snapshot and env.read_text() == env_text

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DeliveryError, match=r"a-file/models: not writable"):
        deliver(models, v1, blocker / "models")


def _run_delivery(models: Path, version: str, habla_dir: Path, env: Path, prelude: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(prelude) + textwrap.dedent(f"""
        from pathlib import Path
        from training.deliver import DeliveryError, deliver
        try:
            deliver(Path({str(models)!r}), {version!r}, Path({str(habla_dir)!r}), env_file=Path({str(env)!r}))
        except DeliveryError as exc:
            print(exc)
            raise SystemExit(3)
        """)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_disk_full_mid_copy_cleans_up_and_changes_nothing(registry, tmp_path) -> None:
    """A real write failure: the process may not write files past 256 KiB (EFBIG, like ENOSPC mid-copy)."""
    models, (v1, v2, _v3) = registry
    habla_dir, env = tmp_path / "habla-models", tmp_path / ".env"
    deliver(models, v1, habla_dir, env_file=env)
    snapshot, env_text = _snapshot(habla_dir), env.read_text()
    assert (models / v2 / CT2_SUBDIR / "model.bin").stat().st_size > 2**18
    prelude = """
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**18, 2**18))
        """
    result = _run_delivery(models, v2, habla_dir, env, prelude)
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip().startswith(f"{v2}: copy to {habla_dir} failed (disk full); nothing delivered")
    assert _snapshot(habla_dir) == snapshot and env.read_text() == env_text  # no .incoming-* left either


# Where the delivery of v2 over v1 is killed: before the n-th file write of the copy, or before the n-th
# rename (1: the copy into place, 2: delivery.json, 3: whisper_model.env, 4: Habla's .env).
KILL_POINTS = [("copy", 1), ("copy", 3), ("replace", 1), ("replace", 2), ("replace", 3), ("replace", 4)]


@pytest.mark.parametrize(("what", "nth"), KILL_POINTS)
def test_kill_9_at_any_point_leaves_a_complete_delivery_and_a_rerun_finishes(registry, tmp_path, what, nth) -> None:
    models, (v1, v2, _v3) = registry
    habla_dir, env = tmp_path / "habla-models", tmp_path / ".env"
    deliver(models, v1, habla_dir, env_file=env)
    # A kill -9 cannot be timed from outside without racing: the process kills itself at the chosen step.
    target = "training.deliver._copy_file" if what == "copy" else "os.replace"
    prelude = f"""
        import os, signal, training.deliver as d
        module, name = {target!r}.rsplit(".", 1)
        owner = d if module == "training.deliver" else os
        real, calls = getattr(owner, name), []
        def dying(*args, **kwargs):
            calls.append(1)
            if len(calls) == {nth}:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        setattr(owner, name, dying)
        """
    result = _run_delivery(models, v2, habla_dir, env, prelude)
    assert result.returncode == -signal.SIGKILL, (result.stdout, result.stderr)

    state = read_state(habla_dir)
    assert state.current in (v1, v2)
    for line_file in (env, habla_dir / ENV_FILE):  # whatever Habla would load is a complete version
        delivered = Path(read_env_line(line_file))
        assert delivered.name in (v1, v2)
        assert _sha(delivered / "model.bin") == _sha(models / delivered.name / CT2_SUBDIR / "model.bin")
    assert (habla_dir / state.current / "model.bin").is_file()
    for copy in habla_dir.glob("tiny-v*"):  # no half copy under a version's name
        assert _snapshot(copy) == _snapshot(models / copy.name / CT2_SUBDIR), copy

    done = deliver(models, v2, habla_dir, env_file=env)
    assert done.previous == v1 and read_env_line(env) == str((habla_dir / v2).resolve())
    assert not list(habla_dir.glob(".incoming-*"))
    assert _sha(habla_dir / v2 / "model.bin") == _sha(models / v2 / CT2_SUBDIR / "model.bin")


def test_env_line_edits_keep_everything_else() -> None:
    text = "A=1\r\n  export WHISPER_MODEL = small  # size\r\n#WHISPER_MODEL=tiny\r\nWHISPER_MODEL=base"
    assert set_env_line(text, "/m/v2") == "A=1\r\n  export WHISPER_MODEL=/m/v2\r\n#WHISPER_MODEL=tiny\r\nWHISPER_MODEL=/m/v2"
    assert set_env_line("A=1", "/m") == "A=1\nWHISPER_MODEL=/m\n"
    assert set_env_line("", "/m") == "WHISPER_MODEL=/m\n"
    for path in ("/srv/habla models/tiny-v2", "C:\\Habla\\it's\\tiny-v2", "/plain/tiny-v2"):
        assert read_env_line_from(f"X=1\nWHISPER_MODEL={env_value(path)}\n") == path
    assert read_env_line_from('WHISPER_MODEL="C:/a b/v1"  # quoted\nWHISPER_MODEL=small # later wins\n') == "small"


def read_env_line_from(text: str) -> str | None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".env", delete=False) as fh:
        fh.write(text)
    try:
        return read_env_line(Path(fh.name))
    finally:
        os.unlink(fh.name)


def test_models_export_cli_delivers_redelivers_and_rolls_back(registry, tmp_path) -> None:
    models, (v1, v2, _v3) = registry
    home, habla_dir, env = models.parent, tmp_path / "habla-models", tmp_path / ".env"
    env.write_text("HF_TOKEN=x\nWHISPER_MODEL=small\n")
    runner = CliRunner()

    def run(*args: str, **env_vars: str):
        return runner.invoke(cli, ["--home", str(home), "models", "export", *args], env=env_vars)

    # The setting is the default dir; the version's existing export is delivered without converting again.
    first = run(v1, "--habla-env", str(env), HABLA_LS_HABLA_MODEL_DIR=str(habla_dir))
    assert first.exit_code == 0, first.output
    assert "(existing export)" in first.output and f"delivered {v1} to {habla_dir / v1}" in first.output
    assert f"WHISPER_MODEL={(habla_dir / v1).resolve()}" in first.output
    second = run(v2, "--habla-dir", str(habla_dir), "--habla-env", str(env), "--habla-path", "C:/Habla/models")
    assert second.exit_code == 0, second.output
    assert f"({v1} kept" in second.output and read_env_line(env) == f"C:/Habla/models/{v2}"
    again = run(v2, "--habla-dir", str(habla_dir), "--habla-env", str(env), "--habla-path", "C:/Habla/models")
    assert again.exit_code == 0 and "already delivered" in again.output
    back = run("--rollback", "--habla-dir", str(habla_dir), "--habla-env", str(env))
    assert back.exit_code == 0 and f"rolled back: {v2} -> {v1}" in back.output
    assert read_env_line(env) == str((habla_dir / v1).resolve())

    missing = run("tiny-v9", "--habla-dir", str(habla_dir))
    assert missing.exit_code != 0 and "no model version 'tiny-v9'" in missing.output
    assert run("--rollback", v1, "--habla-dir", str(habla_dir)).exit_code == 2
