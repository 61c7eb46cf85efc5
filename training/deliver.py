"""Delivery to Habla: a version's CTranslate2 dir copied where Habla loads it, and its ``WHISPER_MODEL`` line.

Habla reads ``WHISPER_MODEL`` once at start (``habla/server/config.py``, from the process environment or
``habla/.env`` through python-dotenv) and passes it to ``whisperx.load_model``, which hands a local dir to
faster-whisper's ``WhisperModel``: ``model.bin``, ``config.json`` and ``vocabulary.*`` for CTranslate2, plus
``tokenizer.json`` (without it faster-whisper downloads a tokenizer) and ``preprocessor_config.json`` (the
number of mel bins). A delivered dir holds all of them.

Layout of the delivery dir (``--habla-dir``, setting ``habla_model_dir``)::

    <dir>/<version>/          complete copies, one per delivered version (the current and the previous one)
    <dir>/delivery.json       {"current": ..., "previous": ...}: THE switch, replaced by one rename
    <dir>/whisper_model.env   WHISPER_MODEL=<dir>/<current>   (also written into Habla's .env when given)
    <dir>/.incoming-<version>-<pid>/   a copy being made; swept when its process is gone

Crash safety: a copy is made in ``.incoming-*`` and renamed to ``<version>`` only when complete;
``delivery.json`` and each env file are replaced by renaming a fully written temp file; older copies are
removed only after the switch and never while an env line names them. Killed at any point, the dir holds
the old delivery or the new one, both complete, and a new call repairs a line left behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ml_backend.registry import CT2_SUBDIR, VERSION_RE, RegistryError, weights_dir
from training.registry import process_alive

STATE_FILE = "delivery.json"
ENV_FILE = "whisper_model.env"
ENV_VAR = "WHISPER_MODEL"
LOCK_FILE = ".deliver.lock"
INCOMING_PREFIX = ".incoming-"
# What faster-whisper reads from a local model dir (vocabulary.json or vocabulary.txt also needed).
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json")
SPACE_MARGIN = 16 * 1024 * 1024
_ENV_LINE = re.compile(rf"^(\s*)(export\s+)?{ENV_VAR}\s*=")


class DeliveryError(RuntimeError):
    """Delivery refused or failed; ``str()`` is one line naming the version or dir. The dir is unchanged."""


@dataclass(frozen=True)
class Delivery:
    version: str
    path: Path  # the delivered CTranslate2 dir
    whisper_model: str  # the value of the WHISPER_MODEL line (``path`` as Habla sees it)
    env_files: tuple[Path, ...]  # files that hold the line
    previous: str | None  # kept for rollback
    changed: bool  # False: this version was already delivered and every line was right
    removed: tuple[str, ...] = ()  # older copies deleted


@dataclass(frozen=True)
class DeliveryState:
    current: str | None
    previous: str | None


def ct2_subdir(quantization: str) -> str:
    """Where a quantization lives in a version: ``ct2/`` is the served (int8) one."""
    return CT2_SUBDIR if quantization == "int8" else f"{CT2_SUBDIR}-{quantization}"


def read_state(habla_dir: Path) -> DeliveryState:
    """What is delivered in ``habla_dir`` (both ``None`` if nothing yet)."""
    try:
        data = json.loads((Path(habla_dir) / STATE_FILE).read_text())
    except FileNotFoundError:
        return DeliveryState(None, None)
    except (OSError, ValueError) as exc:
        raise DeliveryError(f"{Path(habla_dir) / STATE_FILE}: unreadable ({exc}); delete it to start over") from exc
    return DeliveryState(data.get("current"), data.get("previous"))


def deliver(
    models_dir: Path,
    version: str,
    habla_dir: Path,
    *,
    env_file: Path | None = None,
    habla_path: str | None = None,
    quantization: str = "int8",
) -> Delivery:
    """Deliver ``version``'s CTranslate2 export (``ct2/`` for int8) to ``habla_dir`` and point the
    ``WHISPER_MODEL`` line at it; the version delivered before is kept for :func:`rollback`.

    ``env_file``: Habla's ``.env``, whose ``WHISPER_MODEL`` line is replaced (other lines kept byte for byte)
    or appended. ``habla_path``: ``habla_dir`` as Habla sees it when that differs (another machine, a
    container mount, a Windows drive), used in the line. Redelivering the delivered version writes nothing.
    """
    models_dir, habla_dir = Path(models_dir), Path(habla_dir)
    source = delivery_source(models_dir, version, quantization)
    with _locked(habla_dir):
        _sweep_incoming(habla_dir)
        state = read_state(habla_dir)
        target = habla_dir / version
        copied = False
        if not _same_files(source, target):
            _copy_in(source, target, version)
            copied = True
        previous = state.previous if state.current == version else state.current
        if previous is not None and not _is_delivered(habla_dir / previous):
            previous = None
        switched = state != DeliveryState(version, previous)
        if switched:
            _write_state(habla_dir, version, previous)
        line_value, env_files, rewritten = _write_lines(habla_dir, version, env_file, habla_path)
        removed = _prune(habla_dir, keep={version, previous}, env_files=env_files)
    return Delivery(version, target, line_value, env_files, previous, copied or switched or rewritten, removed)


def rollback(habla_dir: Path, *, env_file: Path | None = None, habla_path: str | None = None) -> Delivery:
    """Swap the current and the previous delivery (a second rollback undoes the first)."""
    habla_dir = Path(habla_dir)
    with _locked(habla_dir):
        state = read_state(habla_dir)
        if state.current is None or state.previous is None or not _is_delivered(habla_dir / state.previous):
            raise DeliveryError(f"{habla_dir}: nothing to roll back to (delivered: {state.current or 'nothing'}, "
                                f"previous: {state.previous or 'none'})")
        _write_state(habla_dir, state.previous, state.current)
        line_value, env_files, _ = _write_lines(habla_dir, state.previous, env_file, habla_path)
    return Delivery(state.previous, habla_dir / state.previous, line_value, env_files, state.current, True)


# ------------------------------------------------------------------------------------------ internals


def delivery_source(models_dir: Path, version: str, quantization: str = "int8") -> Path:
    """The version's CTranslate2 export dir, checked to hold what faster-whisper reads."""
    try:
        if Path(version).name != version or version.startswith("."):
            raise RegistryError(f"{version!r} is not a version name (<name>-vN)")  # it names a dir in DIR
        vdir = weights_dir(models_dir, version)
    except RegistryError as exc:
        raise DeliveryError(f"{version}: {exc}") from exc
    source = vdir / ct2_subdir(quantization)
    missing = [name for name in REQUIRED_FILES if not (source / name).is_file()]
    if not missing and not any(source.glob("vocabulary.*")):
        missing = ["vocabulary.json"]
    if missing:
        what = "no CTranslate2 export" if not (source / "model.bin").is_file() else f"missing {', '.join(missing)}"
        raise DeliveryError(f"{version}: {what} in {source}; run `habla-ls models export {version}` first")
    return source


def _is_delivered(path: Path) -> bool:
    return all((path / name).is_file() for name in REQUIRED_FILES)


def _same_files(source: Path, target: Path) -> bool:
    """A delivered copy is only ever renamed in complete, so equal names and sizes mean it is this export."""
    if not target.is_dir():
        return False
    try:
        theirs = {p.name: p.stat().st_size for p in target.iterdir()}
    except OSError:
        return False
    return theirs == {p.name: p.stat().st_size for p in source.iterdir() if p.is_file()}


@contextlib.contextmanager
def _locked(habla_dir: Path) -> Iterator[None]:
    """One delivery at a time per dir (``watch`` and a person may both deliver)."""
    from ml_backend.whisper_files import file_lock

    lock = contextlib.ExitStack()
    try:
        habla_dir.mkdir(parents=True, exist_ok=True)
        # root passes every permission check, so a read-only dir shows up at the first write instead.
        if not os.access(habla_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied", str(habla_dir))
        lock.enter_context(file_lock(habla_dir / LOCK_FILE))
    except OSError as exc:
        raise DeliveryError(f"{habla_dir}: not writable ({_why(exc)}); nothing delivered") from exc
    with lock:
        yield


def _why(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "disk full"
    return exc.strerror or str(exc)


def _sweep_incoming(habla_dir: Path) -> None:
    """Remove copies left by a process that died mid-copy (the lock makes them stale, but a pid check is cheap)."""
    for child in habla_dir.glob(f"{INCOMING_PREFIX}*"):
        pid = child.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid))):
            shutil.rmtree(child, ignore_errors=True)


def _copy_in(source: Path, target: Path, version: str) -> None:
    habla_dir = target.parent
    files = [p for p in source.iterdir() if p.is_file()]
    need = sum(p.stat().st_size for p in files)
    free = shutil.disk_usage(habla_dir).free
    if free < need + SPACE_MARGIN:
        raise DeliveryError(f"{version}: disk full in {habla_dir} (needs {need / 2**20:.0f} MiB, "
                            f"{free / 2**20:.0f} MiB free); nothing delivered")
    incoming = habla_dir / f"{INCOMING_PREFIX}{version}-{os.getpid()}"
    try:
        incoming.mkdir()
        for path in files:
            _copy_file(path, incoming / path.name)
        _fsync_dir(incoming)
        if target.exists():
            # A copy that differs from the export (damaged by hand): set aside, never half-replaced.
            aside = habla_dir / f"{INCOMING_PREFIX}{version}-replaced-{os.getpid()}"
            os.replace(target, aside)
            os.replace(incoming, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(incoming, target)
        _fsync_dir(habla_dir)
    except OSError as exc:
        shutil.rmtree(incoming, ignore_errors=True)
        raise DeliveryError(f"{version}: copy to {habla_dir} failed ({_why(exc)}); nothing delivered") from exc


def _copy_file(source: Path, destination: Path) -> None:
    with open(source, "rb") as src, open(destination, "wb") as dst:
        shutil.copyfileobj(src, dst, 4 * 2**20)
        dst.flush()
        os.fsync(dst.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a dir be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` by renaming a synced temp file, keeping the file's permissions."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        mode = path.stat().st_mode & 0o7777 if path.exists() else None
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_state(habla_dir: Path, current: str, previous: str | None) -> None:
    state = {"current": current, "previous": previous,
             "switched_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    try:
        _replace_text(habla_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")
    except OSError as exc:
        raise DeliveryError(f"{habla_dir / STATE_FILE}: not written ({_why(exc)}); delivery unchanged") from exc


def env_value(path: str) -> str:
    """A dotenv value: bare when plain, else single-quoted (python-dotenv keeps those literal)."""
    if re.fullmatch(r"[\w./:\\@+,=-]+", path):
        return path
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def set_env_line(text: str, value: str) -> str:
    """``text`` with every active ``WHISPER_MODEL=`` line set to ``value`` (or one appended); comments,
    other lines and their line endings untouched."""
    lines = text.splitlines(keepends=True)
    found = False
    for i, line in enumerate(lines):
        match = _ENV_LINE.match(line)
        if match:
            ending = line[len(line.rstrip("\r\n")):]
            lines[i] = f"{match[1]}{match[2] or ''}{ENV_VAR}={value}{ending}"
            found = True
    if not found:
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += "\r\n" if "\r\n" in text else "\n"
        lines.append(f"{ENV_VAR}={value}" + ("\r\n" if "\r\n" in text else "\n"))
    return "".join(lines)


_DOUBLE_QUOTE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f", "n": "\n",
                         "r": "\r", "t": "\t", "v": "\v"}


def _dotenv_value(raw: str) -> str:
    """A value as python-dotenv reads it (what Habla uses): quoted, with its escapes, or bare up to a comment."""
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        quote, out, i = raw[0], [], 1
        while i < len(raw) and raw[i] != quote:
            if raw[i] == "\\" and i + 1 < len(raw):
                nxt = raw[i + 1]
                if quote == "'" and nxt in ("\\", "'"):
                    out.append(nxt)
                    i += 2
                    continue
                if quote == '"' and nxt in _DOUBLE_QUOTE_ESCAPES:
                    out.append(_DOUBLE_QUOTE_ESCAPES[nxt])
                    i += 2
                    continue
            out.append(raw[i])
            i += 1
        return "".join(out)
    return re.split(r"\s+#", raw, maxsplit=1)[0].rstrip()


def read_env_line(path: Path) -> str | None:
    """The ``WHISPER_MODEL`` value a dotenv file sets (the last active line wins, as in python-dotenv)."""
    path = Path(path)
    if not path.is_file():
        return None
    value = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _ENV_LINE.match(line)
        if match:
            value = _dotenv_value(line[match.end():])
    return value


def _read_exact(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as fh:  # newline="": CRLF lines stay CRLF
        return fh.read()


def _write_lines(habla_dir: Path, version: str, env_file: Path | None,
                 habla_path: str | None) -> tuple[str, tuple[Path, ...], bool]:
    # Forward slashes work on Windows too (Habla's own docs write C:/Projects/...).
    value = f"{habla_path.rstrip('/')}/{version}" if habla_path else str((habla_dir / version).resolve())
    paths: list[Path] = [habla_dir / ENV_FILE]
    if env_file is not None:
        paths.append(Path(env_file))
    rewritten = False
    for path in paths:
        try:
            old = _read_exact(path) if path.exists() else ""
            new = set_env_line(old, env_value(value))
            if new != old:
                _replace_text(path, new)
                rewritten = True
        except (OSError, UnicodeDecodeError) as exc:
            why = _why(exc) if isinstance(exc, OSError) else "not a text file"
            raise DeliveryError(f"{path}: {ENV_VAR} line not written ({why}); {version} is delivered in "
                                f"{habla_dir}, rerun to finish") from exc
    return value, tuple(paths), rewritten


def _named_by(env_files: Sequence[Path], habla_dir: Path) -> set[str]:
    """Versions in ``habla_dir`` that an env line still names (a hand edit, a line not rewritten yet)."""
    named = set()
    for path in env_files:
        with contextlib.suppress(OSError, ValueError):
            value = read_env_line(path)
            if value:
                named.add(Path(value.replace("\\", "/")).name)
    return named


def _prune(habla_dir: Path, *, keep: set[str | None], env_files: Sequence[Path]) -> tuple[str, ...]:
    """Delete copies other than the current and the previous one (only dirs named like a version)."""
    keep = keep | _named_by(env_files, habla_dir)
    removed = []
    for child in sorted(habla_dir.iterdir()):
        if child.name in keep or not child.is_dir() or not VERSION_RE.match(child.name) or child.name.startswith("."):
            continue
        if not (child / "model.bin").is_file():
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child.name)
    return tuple(removed)
