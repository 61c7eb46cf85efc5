"""The Whisper model a run trains: loaded from the base, with LoRA adapters or its lower encoder layers frozen."""

from __future__ import annotations

from typing import Any

from ml_backend.lora import peft_deprecations_silenced
from training.base_model import BaseModel
from training.options import TrainError, TrainOptions


def build_model(base: BaseModel, options: TrainOptions) -> Any:
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(str(base.path))
    model.generation_config.language = options.language
    model.generation_config.task = "transcribe"
    model.generation_config.forced_decoder_ids = None
    if options.spec_augment:
        # Time and frequency masking of the log-mel input while training (Whisper's own SpecAugment path).
        model.config.apply_spec_augment = True
        model.config.mask_time_prob = max(model.config.mask_time_prob, 0.05)
        model.config.mask_feature_prob = max(model.config.mask_feature_prob, 0.05)
    if options.gradient_checkpointing:
        model.config.use_cache = False
    return adapt_model(model, options)


def adapt_model(model: Any, options: TrainOptions) -> Any:
    """LoRA adapters on a loaded model, or, for a full fine-tune, its lower encoder layers frozen, as ``options`` say."""
    if options.method == "lora":
        from peft import LoraConfig, get_peft_model

        from training.encoder_cache import trainable_targets

        targets = list(options.lora_target_modules)
        if options.frozen_encoder_layers or options.lora_scope != "encoder+decoder":
            targets = trainable_targets(model, targets, options.frozen_encoder_layers)
            if options.lora_scope != "encoder+decoder":
                # The decoder is also the language model: adapting only the encoder leaves it as it was.
                targets = [name for name in targets if f".{options.lora_scope}." in f".{name}"]
            if not targets:
                raise TrainError(f"no LoRA target left: lora_scope {options.lora_scope} with {options.frozen_encoder_layers} frozen encoder layers")
        config = LoraConfig(
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=targets,
            bias="none",
        )
        with peft_deprecations_silenced():
            model = get_peft_model(model, config)
    elif options.frozen_encoder_layers:
        from training.encoder_cache import freeze_lower_encoder

        freeze_lower_encoder(model, options.frozen_encoder_layers)
    return model
