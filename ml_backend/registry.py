"""Reading the model registry (written by ``training.registry``).

Layout (DESIGN.md)::

    models/<name>-vN/model_card.json   version, parent, base model, created, WERs, ...
    models/<name>-vN/hf/               transformers weights (or a LoRA adapter + base reference)
    models/<name>-vN/ct2/              CTranslate2 export (what the backend serves when present)
    models/CURRENT                     one line: the served version; replaced by atomic rename

Dirs starting with ``.`` are versions being written and are never listed or served.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CURRENT_FILE = "CURRENT"
CARD_FILE = "model_card.json"
HF_SUBDIR = "hf"
CT2_SUBDIR = "ct2"
PRUNED_FIELD = "pruned"  # in a card: its weights were removed (training.pruning); the card stays
VERSION_RE = re.compile(r"^(?P<name>.+)-v(?P<number>\d+)$")


class RegistryError(LookupError):
    pass


def parse_version(version: str) -> tuple[str, int]:
    match = VERSION_RE.match(version)
    if not match:
        raise RegistryError(f"{version!r} is not a version name (<name>-vN)")
    return match["name"], int(match["number"])


def read_current(models_dir: Path) -> str | None:
    path = Path(models_dir) / CURRENT_FILE
    try:
        version = path.read_text().strip()
    except FileNotFoundError:
        return None
    return version or None


def version_dir(models_dir: Path, version: str) -> Path:
    parse_version(version)
    path = Path(models_dir) / version
    if not (path / CARD_FILE).is_file():
        raise RegistryError(f"no model version {version!r} in {models_dir}")
    return path


def read_card(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / CARD_FILE).read_text())


def list_versions(models_dir: Path) -> list[str]:
    """Finished versions, oldest first within each name."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(".") or not (child / CARD_FILE).is_file() or not VERSION_RE.match(child.name):
            continue
        found.append(child.name)
    return sorted(found, key=lambda v: (parse_version(v)[0], parse_version(v)[1]))


def is_ct2_dir(path: Path) -> bool:
    return (Path(path) / "model.bin").is_file()


def is_hf_dir(path: Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def serving_dir(path: Path) -> Path:
    """The directory to load for a version dir (ct2/ preferred, else hf/), or ``path`` itself if it is a model."""
    path = Path(path)
    if is_ct2_dir(path) or is_hf_dir(path):
        return path
    for sub in (CT2_SUBDIR, HF_SUBDIR):
        if is_ct2_dir(path / sub) or is_hf_dir(path / sub):
            return path / sub
    raise RegistryError(f"{path}: neither a CTranslate2 nor a transformers model dir")


def resolve(models_dir: Path, version: str | None = None) -> tuple[str, Path]:
    """(version, dir to load) for ``version``, or for CURRENT when ``version`` is None."""
    version = version or read_current(models_dir)
    if version is None:
        raise RegistryError(
            f"no current model in {models_dir}: run `habla-ls models bootstrap` or `habla-ls models import-ct2`"
        )
    return version, serving_dir(weights_dir(models_dir, version))


def weights_dir(models_dir: Path, version: str) -> Path:
    """A version's dir for whatever needs its weights (serving, evaluating, exporting, training from it,
    delivering, promoting): :func:`version_dir`, and a clear error for a version whose weights `habla-ls
    models prune` removed. Reading or updating a card needs only :func:`version_dir`."""
    path = version_dir(models_dir, version)
    pruned = read_card(path).get(PRUNED_FIELD)
    if pruned:
        when = pruned.get("at", "?") if isinstance(pruned, dict) else "?"
        raise RegistryError(f"model version {version}: its weights were removed by `habla-ls models prune` ({when}); "
                            "only its card is left")
    return path
