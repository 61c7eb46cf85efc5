"""The standard-Spanish regression set: catches a model that learns the accent and forgets the language.

A model learns the voice family it trains on: fine-tuned on espeak-ng clips and judged on espeak-ng
clips it looked better on standard Spanish while getting worse on natural voices (DESIGN.md). So the
default set is spoken by more than one voice family, and only by the voices that habla-ls never uses
for training audio (:data:`synth.voices.HELD_OUT_VOICES`): two Kokoro voices (natural; the
``synth`` extra) and two espeak-ng voices, at a normal level and, for a quarter of each voice's clips,
20 dB quieter (a quiet student); :mod:`training.regression_clips` plans the clips. Its sentences are
:data:`synth.sentences.REGRESSION`, neutral news and office Spanish that no training source of the
project shares (``tests/test_regression_set.py`` checks it). Without Kokoro the set is espeak-ng only, and the generator logs one line saying so
(:data:`ESPEAK_ONLY_NOTE`; reports say it first, :func:`training.paired_sets.espeak_only`).

Manifest rows (the dataset manifest format): ``speaker`` is ``"<family>:<voice>"``, ``session`` is
``"regression-<family>-<level>"``, so the gate can slice by family, by voice and by loudness.

Synthesis (~2.5x real time for Kokoro on the CPU) happens once per machine: the clips are built into
the habla-ls cache (``$HABLA_LS_CACHE`` or ``~/.cache/habla-ls``) under a content id (sentences, voices,
levels, synthesiser versions), then copied into ``<home>/datasets/regression/`` on first use. Both are
built beside their final place and renamed, so a crash never leaves half a set.

A user's own standard-Spanish manifest (other speakers' recordings, a public corpus) replaces the
generated set (``manifest=``) or joins it (``include_default=True``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ml_backend.audio import SAMPLE_RATE, AudioError, encode_wav
from ml_backend.whisper_files import file_lock
from training.regression_clips import (
    GENERATOR_VERSION,
    NORMAL,
    QUIET,
    QUIET_GAIN_DB,
    RegressionClip,
    RegressionSetError,
    content_id,
    plan_regression_set,
)

log = logging.getLogger(__name__)

REGRESSION_SUBDIR = "regression"
JOINED_SUBDIR = "regression-joined"
MANIFEST_NAME = "manifest.jsonl"
INFO_NAME = "regression_set.json"
CLIPS_NAME = "clips.jsonl"  # the machine cache's rows, with paths relative to its dir
ESPEAK_ONLY_NOTE = (
    "only espeak-ng voices judged standard Spanish: Kokoro (the synth extra) is not installed, "
    "so the regression set has no natural voices"
)

# The first regression set (espeak-ng only). No longer the default: several of its lines are near-copies
# of training sentences. Kept because test helpers speak a few of them as short standard-Spanish clips.
STANDARD_SENTENCES = (
    "Los estudiantes abrieron sus libros en la página treinta.",
    "Mañana tenemos examen de ciencias naturales a las nueve.",
    "¿Has terminado ya los deberes de matemáticas?",
    "La ciudad de Sevilla está junto al río Guadalquivir.",
    "Necesito que escribáis vuestros nombres en la hoja.",
    "El cielo estaba nublado y empezó a llover por la tarde.",
    "Mis hermanos juegan al fútbol todos los sábados.",
    "¿Cuántos días tiene el mes de febrero este año?",
    "La profesora explicó la lección con mucha paciencia.",
    "Después del recreo vamos a leer un cuento corto.",
    "Las llaves están encima de la mesa del comedor.",
    "El pescado fresco se vende en el mercado central.",
    "Cerrad las ventanas, que hace mucho frío hoy.",
    "Ese edificio tan alto es el nuevo hospital.",
    "Me gustaría visitar los museos de Madrid este verano.",
    "Los números pares se pueden dividir entre dos.",
    "Hemos cantado una canción muy bonita en clase.",
    "Tu hermana ha llamado por teléfono hace un rato.",
    "La luz del sol entra por la ventana de la cocina.",
    "Vosotros tenéis que traer el cuaderno azul mañana.",
    "El tren sale de la estación a las cinco y media.",
    "Quiero un vaso de agua y dos galletas, por favor.",
    "Ayer cenamos en casa de mis abuelos.",
    "Esta pregunta es difícil, pensadlo con calma.",
)


def espeak(text: str, *, voice: str = "es", speed: int = 165, pitch: int = 50) -> bytes:
    """espeak-ng's WAV for ``text`` (its own rate; decode resamples)."""
    try:
        done = subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except FileNotFoundError as exc:
        raise RegressionSetError("espeak-ng is not installed (apt-get install espeak-ng)") from exc
    except subprocess.CalledProcessError as exc:
        raise RegressionSetError(f"espeak-ng failed: {exc.stderr.decode(errors='replace').strip()[:200]}") from exc
    return done.stdout


def default_regression_dir(datasets_dir: Path) -> Path:
    return Path(datasets_dir) / REGRESSION_SUBDIR


@dataclass
class RegressionBuild:
    manifest: Path
    content_id: str
    clips: int
    from_cache: bool  # copied from the machine cache, nothing synthesised
    synthesised: int = 0
    seconds: float = 0.0  # wall time of this call
    audio_seconds: float = 0.0
    missing: list[str] = field(default_factory=list)  # clips that could not be made (one line each)


def machine_cache_dir() -> Path:
    from ml_backend.whisper_files import cache_dir

    return cache_dir() / "regression-sets"


class _Speakers:
    """Loads each synthesiser on first use (Kokoro takes a few seconds; not needed when cached)."""

    def __init__(self) -> None:
        self._kokoro = None

    def speak(self, clip: RegressionClip) -> np.ndarray:
        from synth.voices import ESPEAK, KOKORO

        if clip.family == KOKORO:
            if self._kokoro is None:
                from synth.kokoro import load_kokoro

                self._kokoro = load_kokoro()
            audio = self._kokoro.speak(clip.text, clip.voice).audio
        elif clip.family == ESPEAK:
            from synth.espeak import VOICES, synthesize

            voice = next((v for v in VOICES if v.voice == clip.voice), None)
            if voice is None:
                raise RegressionSetError(f"unknown espeak-ng voice {clip.voice!r}")
            audio = synthesize(clip.text, voice)
        else:
            raise RegressionSetError(f"unknown voice family {clip.family!r}")
        if audio.size == 0 or float(np.max(np.abs(audio))) < 1e-4:
            raise AudioError("the synthesiser returned silence")
        return np.clip(audio * np.float32(10 ** (clip.gain_db / 20)), -1.0, 1.0).astype(np.float32)


def _synthesise_into(directory: Path, plans: Sequence[RegressionClip], wanted: str) -> tuple[int, float, list[str]]:
    """Speak every clip into ``directory`` with ``clips.jsonl`` and the info file; a clip that fails is
    reported in one line and left out."""
    from tqdm import tqdm

    speakers = _Speakers()
    rows, missing = [], []
    audio_seconds = 0.0
    for clip in tqdm(plans, desc="regression set", unit="clip", disable=None):
        try:
            audio = speakers.speak(clip)
        except Exception as exc:  # noqa: BLE001 - one bad clip must not stop the set
            message = f"regression clip {clip.filename}: skipped: {exc}"
            log.warning("%s", message)
            missing.append(message)
            continue
        data = encode_wav(audio, SAMPLE_RATE)
        (directory / clip.filename).write_bytes(data)
        duration = round(len(audio) / SAMPLE_RATE, 3)
        audio_seconds += duration
        level = "" if clip.level == NORMAL else f", {clip.gain_db:+g} dB"
        rows.append(
            {
                "file": clip.filename,
                "transcript": clip.text,
                "duration": duration,
                "speaker": clip.speaker,
                "session": clip.session,
                "notes": f"standard Spanish regression set; {clip.family} voice {clip.voice} (held out of training){level}",
                "segment_key": clip.segment_key,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    if not rows:
        raise RegressionSetError("no regression clip could be made: " + (missing[0] if missing else "nothing planned"))
    (directory / CLIPS_NAME).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    _write_info(directory, wanted, plans, rows, missing)
    return len(rows), audio_seconds, missing


def _write_info(directory: Path, wanted: str, plans: Sequence[RegressionClip], rows: list[dict], missing: list[str]) -> None:
    from synth.voices import ESPEAK

    voices: dict[str, list[str]] = {}
    for clip in plans:
        voices.setdefault(clip.family, [])
        if clip.voice not in voices[clip.family]:
            voices[clip.family].append(clip.voice)
    info = {
        "content_id": wanted,
        "generator": GENERATOR_VERSION,
        "clips": len(rows),
        "audio_seconds": round(sum(r["duration"] for r in rows), 1),
        "voices": voices,
        "levels": {NORMAL: 0.0, QUIET: QUIET_GAIN_DB},
        "note": ESPEAK_ONLY_NOTE if set(voices) == {ESPEAK} else "",
        "missing": missing,
    }
    (directory / INFO_NAME).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_info(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / INFO_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _replace_dir(source: Path, destination: Path) -> None:
    """Put ``source`` in ``destination``'s place with renames only (same filesystem)."""
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(destination, old)
        os.replace(source, destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, destination)


def _cached_clips(plans: Sequence[RegressionClip], wanted: str) -> tuple[Path, bool, int, float, list[str]]:
    """(dir holding the clips, whether it came from the cache, clips made, seconds of audio made, missing).

    Under a lock, so parallel runs synthesise once. A set with missing clips is not cached (the next run
    tries again); its dir is then a private one the caller removes after copying.
    """
    cache = machine_cache_dir()
    target = cache / wanted
    with file_lock(cache / f".{wanted}.lock"):
        if _is_cached(wanted):
            return target, True, 0, 0.0, []
        building = cache / f".{wanted}.building-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        try:
            made, audio_seconds, missing = _synthesise_into(building, plans, wanted)
            if missing:
                return building, False, made, audio_seconds, missing
            os.replace(building, target)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return target, False, made, audio_seconds, []


def _install(source: Path, destination: Path) -> int:
    """Copy the cached clips into ``destination`` with a manifest of absolute paths; returns the clip count."""
    destination = destination.resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    building = destination.with_name(f".{destination.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    try:
        lines = []
        for line in (source / CLIPS_NAME).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            name = row.pop("file")
            shutil.copyfile(source / name, building / name)
            lines.append(json.dumps({"audio_path": str(destination / name), **row}, ensure_ascii=False) + "\n")
        (building / MANIFEST_NAME).write_text("".join(lines), encoding="utf-8")
        shutil.copyfile(source / INFO_NAME, building / INFO_NAME)
        _replace_dir(building, destination)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return len(lines)


def _is_cached(wanted: str) -> bool:
    return (machine_cache_dir() / wanted / CLIPS_NAME).is_file()


def _kokoro_loads() -> bool:
    """Installed is not enough: a broken model would fail every Kokoro clip one by one."""
    from synth.kokoro import KokoroUnavailable, load_kokoro

    try:
        load_kokoro()
    except KokoroUnavailable as exc:
        log.warning("Kokoro does not load (%s): the regression set is spoken by espeak-ng only", exc)
        return False
    return True


_noted_espeak_only = False


def build_regression_set(datasets_dir: Path, plans: Sequence[RegressionClip] | None = None) -> RegressionBuild:
    """The generated set in ``<datasets_dir>/regression/``: kept if current, else copied from the machine
    cache, else synthesised (into the cache first). ``plans`` defaults to :func:`plan_regression_set`."""
    global _noted_espeak_only
    from synth.voices import KOKORO

    started = time.perf_counter()
    destination = default_regression_dir(datasets_dir)
    manifest = destination / MANIFEST_NAME
    given = plans is not None
    plans = list(plans) if plans is not None else plan_regression_set()
    try:
        wanted = content_id(plans)
    except RegressionSetError:
        # No espeak-ng here: a complete set made earlier still judges as well as it did.
        if _complete(manifest):
            info = _read_info(destination)
            return RegressionBuild(manifest, str(info.get("content_id", "")), int(info.get("clips", 0)), True)
        raise
    if (any(p.family == KOKORO for p in plans) and not _up_to_date(destination, wanted)
            and not _is_cached(wanted) and not _kokoro_loads()):
        families = [f for f in dict.fromkeys(p.family for p in plans) if f != KOKORO]
        if not families:
            raise RegressionSetError("Kokoro does not load and the regression set has no other voice family")
        plans = [p for p in plans if p.family != KOKORO] if given else plan_regression_set(families)
        wanted = content_id(plans)
    if not any(p.family == KOKORO for p in plans) and not _noted_espeak_only:
        _noted_espeak_only = True
        log.warning("%s", ESPEAK_ONLY_NOTE)

    # One process installs at a time; the others then find the set current.
    with file_lock(Path(datasets_dir) / f".{REGRESSION_SUBDIR}.lock"):
        if _up_to_date(destination, wanted):
            clips = int(_read_info(destination).get("clips", 0))
            return RegressionBuild(manifest, wanted, clips, True, seconds=time.perf_counter() - started)
        source, from_cache, made, audio_seconds, missing = _cached_clips(plans, wanted)
        try:
            clips = _install(source, destination)
        finally:
            if missing:
                shutil.rmtree(source, ignore_errors=True)
    seconds = time.perf_counter() - started
    if from_cache:
        log.info("regression set: %d clips copied from the machine cache into %s", clips, destination)
    else:
        log.info("regression set: %d clips (%.0f s of speech) made in %.0f s into %s", clips, audio_seconds,
                 seconds, destination)
    return RegressionBuild(manifest, wanted, clips, from_cache, made, seconds, audio_seconds, missing)


def _up_to_date(destination: Path, wanted: str) -> bool:
    info = _read_info(destination)
    return info.get("content_id") == wanted and not info.get("missing") and _complete(destination / MANIFEST_NAME)


def ensure_regression_set(
    datasets_dir: Path,
    manifest: str | os.PathLike[str] | None = None,
    *,
    include_default: bool = False,
) -> Path:
    """The regression manifest to judge standard Spanish with.

    ``manifest`` None: the generated default set (made on first use). ``manifest`` given: that manifest
    alone, or with ``include_default`` the generated set and its rows together, written to
    ``<datasets_dir>/regression-joined/manifest.jsonl`` (rows whose speaker names no synthetic family
    form the family "recorded").
    """
    if manifest is None:
        return build_regression_set(datasets_dir).manifest
    path = Path(manifest)
    if not path.is_file():
        raise RegressionSetError(f"{path}: regression manifest not found")
    if not include_default:
        return path
    return join_manifests(Path(datasets_dir) / JOINED_SUBDIR, build_regression_set(datasets_dir).manifest, path)


def join_manifests(directory: Path, default: Path, user: Path) -> Path:
    """``default``'s rows then ``user``'s (relative audio paths resolved, bad rows reported) in one manifest."""
    from training.manifest import read_manifest

    rows = [json.loads(line) for line in default.read_text(encoding="utf-8").splitlines() if line.strip()]
    user_rows, problems = read_manifest(user)
    for line in problems:
        log.warning("%s", line)
    if not user_rows:
        raise RegressionSetError(f"{user}: no usable rows to join to the regression set")
    content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows + user_rows)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST_NAME
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == content:
            return path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _complete(manifest: Path) -> bool:
    """Every clip the manifest names still exists and reads (someone may have pruned the dir)."""
    try:
        for line in manifest.read_text().splitlines():
            if line.strip():
                sf.info(json.loads(line)["audio_path"])
    except (OSError, ValueError, KeyError, AudioError, sf.LibsndfileError):
        return False
    return True

