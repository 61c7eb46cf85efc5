"""Weight-space interpolation between the base model and its fine-tuned version, and the choice of weight.

``W(λ) = W_base + λ (W_tuned − W_base)``: λ = 1 is the fine-tuned model, λ = 0 the base. Fine-tuning on
one narrow kind of speech moves the weights away from what the base knew about everything else; walking
part of the way back keeps most of the gain on that speech and recovers much of the rest (weight-space
ensembling, as in WiSE-FT). For LoRA the delta is the adapter's: its B matrices are scaled by λ, so the
merged weights are ``W_base + λ·B·A·s`` and the saved adapter stays consistent with them.

λ is chosen on validation data, never on the regression set (the gate's judge): the candidate with the
lowest WER on the validation split (the user's own speech, the accent) among those whose WER on the
standard-speech validation set (the replay set's held-out sentences) is not worse than the base's by
more than ``limit`` (relative). Decoding there is transformers' greedy ``generate``, the same decoding as
the Trainer's validation WER: it ranks λ values consistently and is several times faster on CPU than
beam search, while the gate later scores the registered version with the serving engine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.hf_quiet import transformers_errors_only
from training.metrics import corpus_wer

log = logging.getLogger(__name__)

OFF = "off"
AUTO = "auto"
DEFAULT_GRID = (0.25, 0.5, 0.75, 1.0)
DEFAULT_LIMIT = 0.02  # relative worsening of standard-speech validation WER allowed (the target)
ACCENT_SET = "validation"
STANDARD_SET = "standard_validation"
DECODING = "transformers generate, greedy"


def parse_interpolation(value: Any) -> str | float:
    """``"off"``, ``"auto"`` or a fixed λ in [0, 1] (numbers may come as strings from the CLI or TOML)."""
    if value is None or value is False:
        return OFF
    if isinstance(value, str):
        text = value.strip().lower()
        if text in (OFF, "none", "no", ""):
            return OFF
        if text == AUTO:
            return AUTO
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"interpolation must be 'off', 'auto' or a weight between 0 and 1, not {value!r}") from None
    number = float(value)
    if not 0.0 <= number <= 1.0 or math.isnan(number):
        raise ValueError(f"interpolation weight must be between 0 and 1, not {number:g}")
    return number


def parse_grid(value: Any) -> tuple[float, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    grid = tuple(sorted({float(v) for v in items if str(v).strip()}))
    if not grid or any(not 0.0 < g <= 1.0 for g in grid):
        raise ValueError(f"interpolation grid must hold weights in (0, 1], not {value!r}")
    return grid


# ---------------------------------------------------------------------------------------------- weights


class FullMixer:
    """Sets a model's parameters to ``lerp(base, tuned, λ)``; the tuned values are those it holds now."""

    def __init__(self, model: Any, base_model: Any):
        import torch

        self.model = model
        base_params = dict(base_model.named_parameters())
        self._pairs: list[tuple[Any, Any, Any]] = []
        with torch.no_grad():
            for name, param in model.named_parameters():
                if not param.is_floating_point():
                    continue
                if name not in base_params:
                    raise ValueError(f"base model has no parameter {name}: not the same architecture")
                base = base_params[name].detach().to(device=param.device, dtype=param.dtype)
                if base.shape != param.shape:
                    raise ValueError(f"parameter {name}: shape {tuple(param.shape)} vs base {tuple(base.shape)}")
                if torch.equal(base, param):
                    continue  # untouched by fine-tuning: every λ gives the same value
                self._pairs.append((param, base.clone(), param.detach().clone()))

    def set(self, lam: float) -> None:
        import torch

        with torch.no_grad():
            for param, base, tuned in self._pairs:
                # The ends are copied, not computed, so λ = 0 and 1 give the two models bit for bit.
                if lam == 0.0:
                    param.copy_(base)
                elif lam == 1.0:
                    param.copy_(tuned)
                else:
                    param.copy_(torch.lerp(base, tuned, float(lam)))


class LoraMixer:
    """Scales every LoRA B matrix by λ: the adapter's delta becomes ``λ·B·A·s``."""

    def __init__(self, model: Any):
        self.model = model
        self._pairs = [
            (param, param.detach().clone())
            for name, param in model.named_parameters()
            if ".lora_B." in name or ".lora_embedding_B." in name
        ]
        if not self._pairs:
            raise ValueError("no LoRA B matrices in this model")

    def set(self, lam: float) -> None:
        import torch

        with torch.no_grad():
            for param, tuned in self._pairs:
                param.copy_(tuned * float(lam))


def mixer_for(model: Any, base_path: Path | None = None, base_model: Any = None) -> FullMixer | LoraMixer:
    """A LoRA model scales its adapter; a full model interpolates towards ``base_model`` (loaded from ``base_path``)."""
    if hasattr(model, "peft_config"):
        return LoraMixer(model)
    if base_model is None:
        if base_path is None:
            raise ValueError("a fully fine-tuned model needs the base weights to interpolate towards")
        from transformers import WhisperForConditionalGeneration

        base_model = WhisperForConditionalGeneration.from_pretrained(str(base_path))
    return FullMixer(model, base_model)


# ---------------------------------------------------------------------------------------------- choice


@dataclass(frozen=True)
class LambdaScore:
    lam: float
    accent_wer: float | None  # validation split (None when there is none)
    standard_wer: float | None  # standard-speech validation set (None when there is none)


@dataclass
class LambdaChoice:
    lam: float
    mode: str  # "auto" or "fixed"
    scores: list[LambdaScore] = field(default_factory=list)
    limit: float | None = None
    base_standard_wer: float | None = None
    allowed_standard_wer: float | None = None
    within_limit: bool = True
    reason: str = ""
    decoding: str = DECODING
    clips: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lambda"] = data.pop("lam")
        data["scores"] = [{"lambda": s.lam, "accent_wer": s.accent_wer, "standard_wer": s.standard_wer} for s in self.scores]
        return data


def choose_lambda(scores: Sequence[LambdaScore], limit: float = DEFAULT_LIMIT) -> LambdaChoice:
    """The largest accent gain whose standard-speech WER stays within ``limit`` of the base's (λ = 0).

    Ties on accent WER go to the lower standard WER, then to the larger λ. Without an accent
    validation set the largest λ within the limit wins; without a standard one, the best accent WER.
    When no λ > 0 stays within the limit, the smallest one is taken (and ``within_limit`` says so):
    the promotion gate will judge it.
    """
    candidates = [s for s in scores if s.lam > 0]
    if not candidates:
        raise ValueError("no interpolation weight above 0 was scored")
    base = next((s for s in scores if s.lam == 0), None)
    base_std = base.standard_wer if base is not None else None
    allowed = None if base_std is None else base_std * (1.0 + limit)
    eligible = [s for s in candidates if allowed is None or s.standard_wer is None or s.standard_wer <= allowed + 1e-12]
    choice = LambdaChoice(lam=1.0, mode=AUTO, scores=list(scores), limit=limit, base_standard_wer=base_std,
                          allowed_standard_wer=allowed)
    if not eligible:
        pick = min(candidates, key=lambda s: s.lam)
        choice.lam, choice.within_limit = pick.lam, False
        choice.reason = (f"no weight kept standard-speech WER within {limit:.0%} of the base's {base_std:.4f}; "
                         f"took the smallest, {pick.lam:g} ({pick.standard_wer:.4f})")
        return choice
    if all(s.accent_wer is None for s in eligible):
        pick = max(eligible, key=lambda s: s.lam)
        choice.reason = f"largest weight within the standard-speech limit (no validation split to measure the accent on): {pick.lam:g}"
    else:
        pick = min(eligible, key=lambda s: (math.inf if s.accent_wer is None else s.accent_wer,
                                             s.standard_wer if s.standard_wer is not None else 0.0, -s.lam))
        std = "" if allowed is None else f", standard WER {pick.standard_wer:.4f} <= {allowed:.4f}"
        choice.reason = f"lowest validation WER within the standard-speech limit: {pick.lam:g} ({pick.accent_wer:.4f}{std})"
    choice.lam = pick.lam
    return choice


# ---------------------------------------------------------------------------------------------- decoding


def greedy_transcribe(
    model: Any, data: Any, tokenizer: Any, *, language: str, batch_size: int = 8, max_length: int = 128
) -> list[str]:
    """Transcripts of a featurized set (``input_features`` column), greedy, in order."""
    import torch

    features = data.with_format("numpy", columns=["input_features"])
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    texts: list[str] = []
    was_training = model.training
    model.eval()
    try:
        # "attention mask not set" on every batch is noise here
        with torch.no_grad(), transformers_errors_only():
            for start in range(0, len(features), batch_size):
                batch = np.asarray(features[start : start + batch_size]["input_features"])
                tokens = model.generate(
                    input_features=torch.tensor(batch, device=device, dtype=dtype),
                    language=language, task="transcribe", num_beams=1, do_sample=False, max_length=max_length,
                )
                texts.extend(tokenizer.batch_decode(tokens, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return texts


def score_weights(
    mixer: FullMixer | LoraMixer,
    sets: Mapping[str, Any],
    weights: Sequence[float],
    transcribe: Callable[[Any], list[str]],
) -> list[LambdaScore]:
    """WER on the accent and standard validation sets at each weight (the model is left at the last)."""
    scores = []
    for lam in weights:
        mixer.set(lam)
        wers: dict[str, float | None] = {}
        for name in (ACCENT_SET, STANDARD_SET):
            data = sets.get(name)
            wers[name] = corpus_wer(list(data["transcript"]), transcribe(data)) if data is not None and len(data) else None
        scores.append(LambdaScore(lam, wers[ACCENT_SET], wers[STANDARD_SET]))
        log.info("interpolation %.2f: validation WER %s, standard WER %s", lam, wers[ACCENT_SET], wers[STANDARD_SET])
    return scores


def search_lambda(
    mixer: FullMixer | LoraMixer,
    sets: Mapping[str, Any],
    transcribe: Callable[[Any], list[str]],
    *,
    grid: Sequence[float] = DEFAULT_GRID,
    limit: float = DEFAULT_LIMIT,
    progress: bool = True,
) -> LambdaChoice:
    """Score λ = 0 and every grid weight, choose, and leave the model at the chosen weight."""
    from tqdm import tqdm

    weights = [0.0, *sorted(set(grid) - {0.0})]
    scores = []
    for lam in tqdm(weights, desc="choosing the interpolation weight", unit="weight", disable=not progress):
        scores.extend(score_weights(mixer, sets, [lam], transcribe))
    choice = choose_lambda(scores, limit)
    choice.clips = {name: len(sets[name]) for name in (ACCENT_SET, STANDARD_SET) if sets.get(name) is not None}
    mixer.set(choice.lam)
    return choice
