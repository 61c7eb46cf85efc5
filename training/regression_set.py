"""The standard-Spanish regression set: catches a model that learns the accent and forgets the language.

A LoRA tuned on accent-only data once learnt to add a final "s" everywhere and made standard Spanish
worse (DESIGN.md), so every evaluation also scores a fixed set of standard speech. By default it is
generated on first use with espeak-ng from the sentences below, into
``<home>/datasets/regression/`` with its own ``manifest.jsonl``; any other manifest (e.g. natural
recordings of standard Spanish) can be named instead.

The sentences are everyday classroom and general Spanish, chosen to cover the sounds an Andalusian
accent changes (final and preconsonantal /s/, θ/s, ʎ/ʝ, intervocalic /d/), so a model that
over-corrects towards the accent shows it here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import soundfile as sf

from ml_backend.audio import SAMPLE_RATE, AudioError, decode, encode_wav

REGRESSION_SUBDIR = "regression"
MANIFEST_NAME = "manifest.jsonl"

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

# (espeak-ng voice, words per minute, pitch): a little variety, still plainly standard Spanish
VOICES = (("es", 165, 50), ("es+f3", 150, 60), ("es+m3", 175, 40))


class RegressionSetError(RuntimeError):
    pass


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


def generate(destination: Path, sentences: tuple[str, ...] = STANDARD_SENTENCES) -> Path:
    """Write the clips and manifest into ``destination`` (built beside it and renamed when complete)."""
    destination = Path(destination)
    building = destination.with_name(f".{destination.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        rows = []
        for index, sentence in enumerate(sentences):
            voice, speed, pitch = VOICES[index % len(VOICES)]
            samples = decode(espeak(sentence, voice=voice, speed=speed, pitch=pitch))
            name = f"standard_{index:03d}.wav"
            (building / name).write_bytes(encode_wav(samples))
            rows.append(
                {
                    "audio_path": str((destination / name).resolve()),
                    "transcript": sentence,
                    "duration": round(len(samples) / SAMPLE_RATE, 3),
                    "speaker": f"espeak-{voice}",
                    "session": REGRESSION_SUBDIR,
                    "notes": "standard Spanish regression set (espeak-ng)",
                    "segment_key": f"{REGRESSION_SUBDIR}/{name}",
                }
            )
        (building / MANIFEST_NAME).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        shutil.rmtree(destination, ignore_errors=True)
        os.replace(building, destination)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return destination / MANIFEST_NAME


def ensure_regression_set(datasets_dir: Path, manifest: str | os.PathLike[str] | None = None) -> Path:
    """The regression manifest: ``manifest`` if given, else the generated default (made on first use)."""
    if manifest is not None:
        path = Path(manifest)
        if not path.is_file():
            raise RegressionSetError(f"{path}: regression manifest not found")
        return path
    path = default_regression_dir(datasets_dir) / MANIFEST_NAME
    if path.is_file() and _complete(path):
        return path
    return generate(default_regression_dir(datasets_dir))


def _complete(manifest: Path) -> bool:
    """Every clip the manifest names still exists and reads (someone may have pruned the dir)."""
    try:
        for line in manifest.read_text().splitlines():
            if line.strip():
                sf.info(json.loads(line)["audio_path"])
    except (OSError, ValueError, KeyError, AudioError, sf.LibsndfileError):
        return False
    return True
