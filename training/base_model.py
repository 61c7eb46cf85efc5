"""The model a fine-tune starts from: a registry version (CURRENT, or the root of its lineage) or a model dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_backend.registry import (
    HF_SUBDIR,
    RegistryError,
    is_hf_dir,
    read_card,
    read_current,
    version_dir,
    weights_dir,
)
from training.features import prepare_processor
from training.options import TrainError


@dataclass(frozen=True)
class BaseModel:
    path: Path  # a transformers Whisper dir
    parent: str | None  # registry version it came from
    base_model: str  # the root model (through the registry's lineage)


def lineage_root(models_dir: Path, version: str) -> str:
    """The first version of ``version``'s line of parents that is still in the registry (itself if it has no parent)."""
    seen = {version}
    while True:
        parent = read_card(version_dir(models_dir, version)).get("parent")
        if not parent or parent in seen or not (Path(models_dir) / str(parent)).is_dir():
            return version
        seen.add(parent)
        version = str(parent)


def resolve_base(base: str | None, models_dir: Path, start_from: str = "served") -> BaseModel:
    """The transformers dir to start from: a registry version or a model dir; without one, CURRENT, or with
    ``start_from="root"`` the root of CURRENT's lineage."""
    if base is not None and Path(base).is_dir() and is_hf_dir(Path(base)):
        return BaseModel(Path(base), None, str(Path(base).resolve()))
    version = base or read_current(models_dir)
    if base is None and version is not None and start_from == "root":
        try:
            version = lineage_root(models_dir, version)
        except RegistryError as exc:
            raise TrainError(f"start_from root: {exc}") from exc
    if version is None:
        raise TrainError(
            f"no base model: {models_dir} has no CURRENT version; run `habla-ls models bootstrap` or pass --base DIR"
        )
    try:
        vdir = weights_dir(models_dir, version)
    except RegistryError as exc:
        raise TrainError(f"--base {version}: {exc}") from exc
    hf = vdir / HF_SUBDIR
    if not (hf / "config.json").is_file():
        raise TrainError(f"{version} has no transformers weights in {hf} (needed to fine-tune)")
    card = read_card(vdir)
    return BaseModel(hf, version, str(card.get("base_model") or version))


def load_processor(model_dir: Path, language: str) -> Any:
    from transformers import WhisperProcessor

    return prepare_processor(WhisperProcessor.from_pretrained(str(model_dir)), language)
