"""LoRA merge and CTranslate2 export round-trips on the tiny Whisper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from ml_backend.audio import decode
from tests.training_data import spoken
from training.export import ExportError, export_model, merge_lora

TEXTS = ("hola a todos", "abrid el libro", "buenos días")


@pytest.fixture(scope="module")
def adapter_dir(tiny_whisper_dir: Path, tmp_path_factory) -> Path:
    """A LoRA adapter with non-zero deltas (peft initialises B to zero, which would make merging trivial)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    torch.manual_seed(7)
    base = WhisperForConditionalGeneration.from_pretrained(str(tiny_whisper_dir))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False)
    model = get_peft_model(base, config)
    path = tmp_path_factory.mktemp("adapter") / "lora"
    model.save_pretrained(str(path))
    processor = WhisperProcessor.from_pretrained(str(tiny_whisper_dir))
    processor.save_pretrained(str(path))
    processor.feature_extractor.to_json_file(str(path / "preprocessor_config.json"))
    return path


def test_merged_model_outputs_equal_adapter_outputs(adapter_dir: Path, tiny_whisper_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    merged = merge_lora(adapter_dir).eval()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    adapter = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(str(tiny_whisper_dir)), str(adapter_dir)).eval()
    plain = WhisperForConditionalGeneration.from_pretrained(str(tiny_whisper_dir)).eval()
    torch.manual_seed(0)
    features = torch.randn(1, 80, 3000)
    decoder_ids = torch.tensor([[50258, 50262, 50359, 50363, 400, 500]])
    with torch.no_grad():
        merged_logits = merged(input_features=features, decoder_input_ids=decoder_ids).logits
        adapter_logits = adapter(input_features=features, decoder_input_ids=decoder_ids).logits
        plain_logits = plain(input_features=features, decoder_input_ids=decoder_ids).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, plain_logits, atol=1e-3)  # the adapter changes something


def test_ct2_export_round_trips_the_merged_weights(adapter_dir: Path, tmp_path: Path) -> None:
    """The LoRA-changed weights arrive in model.bin exactly (float32) or within quantization error."""
    from ml_backend.whisper_files import read_ct2_model

    merged = merge_lora(adapter_dir).state_dict()
    result = export_model(adapter_dir, tmp_path / "export", quantizations=("float32", "int8", "float16"))
    for path in result.outputs.values():
        for name in ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"):
            assert (path / name).is_file(), f"{path}/{name}"
    assert result.outputs["int8"].name == "ct2" and result.outputs["float16"].name == "ct2-float16"

    q = merged["model.decoder.layers.0.self_attn.q_proj.weight"].numpy()  # changed by the adapter
    fc1 = merged["model.encoder.layers.1.fc1.weight"].numpy()
    exact = read_ct2_model(result.outputs["float32"] / "model.bin")
    assert np.array_equal(exact.get("decoder/layer_0/self_attention/linear_0/weight")[: q.shape[0]], q)
    assert np.array_equal(exact.get("encoder/layer_1/ffn/linear_0/weight"), fc1)
    half = read_ct2_model(result.outputs["float16"] / "model.bin")
    assert np.allclose(half.get("encoder/layer_1/ffn/linear_0/weight").astype(np.float32), fc1, atol=1e-3)
    int8 = read_ct2_model(result.outputs["int8"] / "model.bin")
    weights = int8.get("encoder/layer_1/ffn/linear_0/weight").astype(np.float32)
    scale = int8.get("encoder/layer_1/ffn/linear_0/weight_scale").astype(np.float32)
    assert np.abs(weights / scale[:, None] - fc1).max() < np.abs(fc1).max() / 100


def test_export_check_transcribes_with_both_runtimes(adapter_dir: Path, tmp_path: Path) -> None:
    clips = [decode(spoken(t)) for t in TEXTS]
    # A random model emits near-ties, so only the machinery is asserted here; the WER agreement of real
    # models is what `habla-ls models export` enforces with its default 1-point tolerance.
    result = export_model(
        adapter_dir, tmp_path / "export", quantizations=("int8", "float16"),
        check_clips=clips, check_references=list(TEXTS), max_new_tokens=6, tolerance=100.0,
    )
    check = result.check
    assert check is not None and check.passed and check.clips == 3
    assert len(check.transcripts_transformers) == 3
    assert set(check.transcripts_ct2) == {"int8", "float16"}
    assert all(len(texts) == 3 and all(texts) for texts in check.transcripts_ct2.values())
    assert check.wer_transformers > 0


def test_failed_check_discards_the_export_and_keeps_the_earlier_one(adapter_dir: Path, tmp_path: Path) -> None:
    earlier = tmp_path / "x" / "ct2"
    earlier.mkdir(parents=True)
    (earlier / "model.bin").write_bytes(b"earlier export")
    clips = [decode(spoken(t)) for t in TEXTS[:2]]
    # a negative tolerance cannot be met: the export must be refused and removed
    with pytest.raises(ExportError, match="export discarded"):
        export_model(adapter_dir, tmp_path / "x", quantizations=("int8",), check_clips=clips,
                     check_references=list(TEXTS[:2]), tolerance=-1.0, max_new_tokens=4)
    assert (earlier / "model.bin").read_bytes() == b"earlier export"
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["ct2"]  # no half-built dirs left


def test_models_export_cli_writes_both_quantizations(tmp_path: Path, tiny_registry) -> None:
    import ctranslate2

    home = tmp_path / "home"
    version = tiny_registry(home / "models")
    result = CliRunner().invoke(cli, ["--home", str(home), "models", "export", version, "--no-check"])
    assert result.exit_code == 0, result.output
    assert "WHISPER_MODEL=" in result.output
    for sub in ("ct2", "ct2-float16"):
        model = ctranslate2.models.Whisper(str(home / "models" / version / sub), device="cpu")
        assert model.is_multilingual
    missing = CliRunner().invoke(cli, ["--home", str(home), "models", "export", "nope-v3"])
    assert missing.exit_code != 0 and "no model version" in missing.output
