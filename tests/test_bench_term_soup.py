"""bench/term/soup.py: the averaged version is the mean of the fine-tunes' weights, with the first one's side files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.bench_scripts import bench_script


def _version(tiny_whisper_dir: Path, root: Path, name: str, shift: float, card: dict) -> Path:
    version = root / name
    shutil.copytree(tiny_whisper_dir, version / "hf")
    tensors = load_file(str(version / "hf" / "model.safetensors"))
    key = next(k for k in sorted(tensors) if k.endswith("q_proj.weight"))
    tensors[key] = tensors[key] + shift
    save_file(tensors, str(version / "hf" / "model.safetensors"), metadata={"format": "pt"})
    (version / "model_card.json").write_text(json.dumps(card))
    return version


def test_soup_is_the_mean_of_the_versions_weights(tiny_whisper_dir: Path, tmp_path: Path) -> None:
    first = _version(tiny_whisper_dir, tmp_path, "v1", +0.5, {"version": "habla-v2", "seed": 1})
    second = _version(tiny_whisper_dir, tmp_path, "v2", -0.25, {"version": "habla-v1", "seed": 2})
    with bench_script("term/soup.py", "bench_term_soup") as soup:
        hf = soup.average_versions(first, second, tmp_path / "soup")
    original = load_file(str(tiny_whisper_dir / "model.safetensors"))
    averaged = load_file(str(hf / "model.safetensors"))
    assert set(averaged) == set(original)
    shifted = next(k for k in sorted(original) if k.endswith("q_proj.weight"))
    assert torch.allclose(averaged[shifted], original[shifted] + 0.125, atol=1e-6)
    assert all(torch.equal(averaged[k], original[k]) for k in original if k != shifted)
    assert (hf / "tokenizer.json").read_bytes() == (tiny_whisper_dir / "tokenizer.json").read_bytes()
    card = json.loads((tmp_path / "soup" / "model_card.json").read_text())
    assert (card["seed"], card["soup_of"]) == (1, [str(first), str(second)])


def test_a_second_weight_moves_that_share_of_the_way(tiny_whisper_dir: Path, tmp_path: Path) -> None:
    """With whisper-base's own dir as the second version, the weight interpolates a fine-tune back towards it."""
    tuned = _version(tiny_whisper_dir, tmp_path, "tuned", +0.5, {"version": "habla-v2"})
    base = _version(tiny_whisper_dir, tmp_path, "base", 0.0, {})
    with bench_script("term/soup.py", "bench_term_soup") as soup:
        hf = soup.average_versions(tuned, base, tmp_path / "towards-base", second_weight=0.25)
        with pytest.raises(SystemExit):  # argparse: outside [0, 1]
            soup.main(["--out", str(tmp_path / "far"), "--tests", str(tmp_path / "tests"), "--second-weight", "1.5",
                       str(tuned), str(base)])
    original = load_file(str(tiny_whisper_dir / "model.safetensors"))
    mixed = load_file(str(hf / "model.safetensors"))
    shifted = next(k for k in sorted(original) if k.endswith("q_proj.weight"))
    assert torch.allclose(mixed[shifted], original[shifted] + 0.375, atol=1e-6)
    assert json.loads((tmp_path / "towards-base" / "model_card.json").read_text())["soup_second_weight"] == 0.25
    assert not (tmp_path / "far").exists()


def test_soup_refuses_one_version_and_other_architectures(tiny_whisper_dir: Path, tmp_path: Path) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    first = _version(tiny_whisper_dir, tmp_path, "v1", 0.0, {})
    other = _version(tiny_whisper_dir, tmp_path, "v2", 0.0, {})
    config = WhisperConfig.from_pretrained(str(other / "hf"))
    config.decoder_layers += 1  # a layer the first version has no weights for
    WhisperForConditionalGeneration(config).save_pretrained(str(other / "hf"))
    with bench_script("term/soup.py", "bench_term_soup") as soup:
        with pytest.raises(SystemExit):  # argparse: a soup takes two versions
            soup.main(["--out", str(tmp_path / "one"), "--tests", str(tmp_path / "tests"), str(first)])
        with pytest.raises(SystemExit, match="not the same architecture"):
            soup.average_versions(first, other, tmp_path / "mixed")
    assert not (tmp_path / "one").exists() and not (tmp_path / "mixed").exists()
