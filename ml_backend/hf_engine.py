"""The transformers runtime: :class:`TransformersEngine`, for full Whisper weights (``config.json``) or a
LoRA adapter (``adapter_config.json``), merged over its base at load time."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_backend.decoding import DecodeOptions
from ml_backend.engine import Engine, EngineError, Transcription, make_transcription
from ml_backend.features import SAMPLE_RATE, log_mel_features
from ml_backend.lora import merge_adapter
from ml_backend.registry import CARD_FILE, HF_SUBDIR


def _adapter_base(adapter_dir: Path, base_ref: str) -> Path | str:
    """Where an adapter's base lives: an absolute path, a path relative to the adapter, or a registry version."""
    candidate = Path(base_ref)
    if candidate.is_absolute() and candidate.exists():
        return candidate
    relative = (adapter_dir / base_ref).resolve()
    if relative.exists():
        return relative
    # models/<version>/hf/adapter_config.json naming a sibling version: models/<base_ref>/
    for models_dir in (adapter_dir.parent.parent, adapter_dir.parent):
        if (models_dir / base_ref / CARD_FILE).is_file():
            return serving_hf_dir(models_dir / base_ref)
    return base_ref  # a hub id or cached name; loading fails with a clear message when offline


def serving_hf_dir(version_path: Path) -> Path:
    """A version's transformers weights: its ``hf/`` dir, else the version dir itself."""
    hf = version_path / HF_SUBDIR
    return hf if hf.is_dir() else version_path


@dataclass
class TransformersEngine(Engine):
    backend: str = "transformers"

    def __post_init__(self) -> None:
        super().__post_init__()
        import json

        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        path = self.model_path
        torch_device = "cuda" if self.device == "cuda" else "cpu"
        dtype = torch.float16 if self.compute_type == "float16" and torch_device == "cuda" else torch.float32
        try:
            if (path / "adapter_config.json").is_file():
                base_ref = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
                if not base_ref:
                    raise EngineError(f"{path}/adapter_config.json: no base_model_name_or_path")
                base = _adapter_base(path, base_ref)
                model = WhisperForConditionalGeneration.from_pretrained(str(base), dtype=dtype)
                # Merged once at load: serving then costs the same as a plain model.
                model = merge_adapter(model, path)
                processor_dir = path if (path / "tokenizer.json").is_file() else Path(str(base))
            else:
                model = WhisperForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
                processor_dir = path
            self._processor = WhisperProcessor.from_pretrained(str(processor_dir))
        except (OSError, ValueError) as exc:
            raise EngineError(f"{path}: cannot load with transformers ({exc})") from exc
        self._model = model.to(torch_device).eval()
        self._torch_device = torch_device
        self._dtype = dtype
        tokenizer = self._processor.tokenizer
        self._eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self._no_speech_id = tokenizer.convert_tokens_to_ids("<|nospeech|>")
        if self._no_speech_id in (None, tokenizer.unk_token_id):
            self._no_speech_id = tokenizer.convert_tokens_to_ids("<|nocaptions|>")

    def _transcribe(
        self, clips: list[np.ndarray], beam_size: int, options: DecodeOptions, words: bool = False
    ) -> list[Transcription]:
        # No word timings here: versions are served from their CTranslate2 export (``words`` is ignored).
        import torch

        started = time.perf_counter()
        # faster-whisper's features, not WhisperFeatureExtractor's: a transformers dir and its CTranslate2
        # export then see the same input, so evaluating either gives the same words (see log_mel_features).
        features = torch.from_numpy(log_mel_features(clips, self._model.config.num_mel_bins)).to(
            self._torch_device, self._dtype
        )
        limit = self._model.config.max_target_positions - 4  # room for the SOT/language/task/notimestamps prompt
        max_new = min(options.max_new_tokens or limit, limit)
        with torch.inference_mode():
            generated = self._model.generate(
                features,
                language=self.language,
                task="transcribe",
                num_beams=max(beam_size, 1),
                do_sample=False,
                max_new_tokens=max_new,
                return_timestamps=False,
            )
            sequences = generated if isinstance(generated, torch.Tensor) else generated["sequences"]
            avg_logprobs, no_speech = self._score(features, sequences)
        texts = self._processor.batch_decode(sequences, skip_special_tokens=True)
        elapsed = (time.perf_counter() - started) / len(clips)
        return [
            make_transcription(text, avg, ns, len(clip) / SAMPLE_RATE, elapsed, options)
            for text, avg, ns, clip in zip(texts, avg_logprobs, no_speech, clips, strict=True)
        ]

    @property
    def n_mels(self) -> int:
        return int(self._model.config.num_mel_bins)

    def _encoder_states(self, features: np.ndarray, frames: int) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(features).to(self._torch_device, self._dtype)
            return self._model.get_encoder()(tensor).last_hidden_state[0, :frames].float().cpu().numpy()

    def _prompt(self) -> list[int]:
        tokenizer = self._processor.tokenizer
        return [
            tokenizer.convert_tokens_to_ids(t)
            for t in ("<|startoftranscript|>", f"<|{self.language}|>", "<|transcribe|>", "<|notimestamps|>")
        ]

    def _score(self, features, sequences) -> tuple[list[float], list[float]]:
        """Teacher-forced log-probabilities of the emitted tokens, and P(no speech) after the SOT token.

        ``generate`` scores are not comparable across beam search and greedy; one forward pass over the
        chosen tokens gives the same quantity faster-whisper reports, whatever the search was.
        """
        import torch

        prompt = self._prompt()
        rows = []
        for seq in sequences.tolist():
            # transformers 5 returns generated tokens only; older versions prefix the prompt.
            tokens = [t for t in seq if t not in prompt]
            text_tokens = []
            for t in tokens:
                text_tokens.append(t)
                if t == self._eot:
                    break
            if not text_tokens or text_tokens[-1] != self._eot:
                text_tokens.append(self._eot)
            rows.append(text_tokens)
        width = max(len(r) for r in rows)
        decoder_input = torch.full((len(rows), len(prompt) + width), self._eot, dtype=torch.long)
        for i, row in enumerate(rows):
            decoder_input[i, : len(prompt) + len(row)] = torch.tensor(prompt + row)
        decoder_input = decoder_input.to(self._torch_device)
        logits = self._model(input_features=features, decoder_input_ids=decoder_input).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        no_speech = torch.softmax(logits[:, 0, :], dim=-1)[:, self._no_speech_id].tolist()
        averages = []
        for i, row in enumerate(rows):
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(row), device=logprobs.device)
            chosen = logprobs[i, positions, torch.tensor(row, device=logprobs.device)]
            averages.append(float(chosen.mean()))
        return averages, no_speech

