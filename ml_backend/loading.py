"""Loading a model into an engine, once per process: ``load_engine(path)`` picks the runtime from what the
path holds, and keeps the engines it loaded in a small per-process cache (reloading a version costs nothing).

- a CTranslate2 dir (``model.bin``) runs on faster-whisper (int8 on CPU, float16 on GPU);
- a transformers dir (``config.json`` + weights) or a LoRA adapter dir (``adapter_config.json``, merged
  over its base at load time) runs on transformers;
- a registry ``models/`` dir means its CURRENT version, and a version dir means that version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ml_backend.ct2_engine import FasterWhisperEngine
from ml_backend.decoding import DecodeOptions, decode_options_from_env
from ml_backend.engine import Engine, EngineError
from ml_backend.hf_engine import TransformersEngine
from ml_backend.registry import (
    CARD_FILE,
    CURRENT_FILE,
    RegistryError,
    is_ct2_dir,
    list_versions,
    read_card,
    resolve,
    serving_dir,
)

log = logging.getLogger(__name__)

ENGINE_CACHE_SIZE = 2  # the served version and the one before it (in-flight requests during a swap)

_cache: OrderedDict[tuple, Engine] = OrderedDict()
_cache_lock = threading.Lock()
_loading: dict[tuple, threading.Lock] = {}


def pick_device(device: str = "auto") -> str:
    """``device``, or for "auto" cuda when CTranslate2 sees a GPU, else cpu."""
    if device != "auto":
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # noqa: BLE001 - any failure to probe a GPU means "use the CPU"
        return "cpu"


def default_compute_type(backend: str, device: str) -> str:
    """float16 on a GPU; on the CPU int8 for CTranslate2 and float32 for transformers."""
    if device == "cuda":
        return "float16"
    return "int8" if backend == "faster-whisper" else "float32"


def locate_model(model: str | Path) -> tuple[str, Path]:
    """(version label, dir to load) for a registry dir, a version dir, or a model dir."""
    path = Path(model).expanduser()
    if not path.exists():
        raise EngineError(f"{path}: no such model dir")
    if (path / CURRENT_FILE).is_file() or (not (path / CARD_FILE).exists() and list_versions(path)):
        try:
            version, load_dir = resolve(path)
        except RegistryError as exc:
            raise EngineError(str(exc)) from exc
        return version, load_dir.resolve()
    if (path / CARD_FILE).is_file():
        version = str(read_card(path).get("version") or path.name)
        try:
            return version, serving_dir(path).resolve()
        except RegistryError as exc:
            raise EngineError(str(exc)) from exc
    try:
        load_dir = serving_dir(path)
    except RegistryError as exc:
        raise EngineError(str(exc)) from exc
    # A ct2/ or hf/ dir inside a version: label it with the version.
    parent = load_dir.parent if load_dir == path else path
    if (parent / CARD_FILE).is_file():
        return str(read_card(parent).get("version") or parent.name), load_dir.resolve()
    return load_dir.name, load_dir.resolve()


def load_engine(
    model: str | Path,
    *,
    device: str = "auto",
    compute_type: str | None = None,
    language: str = "es",
    options: DecodeOptions | None = None,
) -> Engine:
    """The engine for ``model`` (registry dir → CURRENT), loaded once per process and reused."""
    version, load_dir = locate_model(model)
    device = pick_device(device)
    backend = "faster-whisper" if is_ct2_dir(load_dir) else "transformers"
    compute_type = compute_type or default_compute_type(backend, device)
    options = options or decode_options_from_env(pack_default=backend == "faster-whisper")
    weights = load_dir / ("model.bin" if backend == "faster-whisper" else "config.json")
    if not weights.exists():
        weights = load_dir / "adapter_config.json"
    # The weights' mtime is in the key so that a re-exported dir with the same name is reloaded.
    key = (str(load_dir), weights.stat().st_mtime_ns if weights.exists() else 0, version, device, compute_type, language, options)
    with _cache_lock:
        engine = _cache.get(key)
        if engine is not None:
            _cache.move_to_end(key)
            return engine
        loading = _loading.setdefault(key, threading.Lock())
    with loading:  # concurrent first requests for one model load it once
        with _cache_lock:
            engine = _cache.get(key)
        if engine is None:
            engine = _load(key, version, load_dir, backend, device, compute_type, language, options)
    with _cache_lock:
        _loading.pop(key, None)
    return engine


def _load(
    key: tuple, version: str, load_dir: Path, backend: str, device: str, compute_type: str, language: str,
    options: DecodeOptions,
) -> Engine:
    cls = FasterWhisperEngine if backend == "faster-whisper" else TransformersEngine
    started = time.perf_counter()
    engine = cls(
        version=version, model_path=load_dir, language=language, device=device, compute_type=compute_type, options=options
    )
    log.info("loaded %s (%s, %s %s) in %.1f s", version, backend, device, compute_type, time.perf_counter() - started)
    with _cache_lock:
        _cache[key] = engine
        while len(_cache) > ENGINE_CACHE_SIZE:
            _cache.popitem(last=False)  # still usable by requests that hold it
    return engine


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
