"""The training-speed benchmark on a tiny Whisper shape: real steps through training's frozen-encoder paths.

No timings are asserted; the rows must show the freezing took effect (fewer trainable parameters as more
encoder layers are frozen, a cache cost only where states are cached) and the baseline the ratios name.
"""

from __future__ import annotations

import json

import pytest

from tests.bench_scripts import bench_script

TINY = dict(
    vocab_size=51865, num_mel_bins=80, max_source_positions=1500, max_target_positions=448, decoder_start_token_id=50258,
    pad_token_id=50257, eos_token_id=50257, bos_token_id=50257, d_model=32, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
)


@pytest.fixture(scope="module")
def bench():
    with bench_script("train_speed.py", "bench_train_speed") as module:
        module.SHAPES["tiny"] = TINY
        yield module


def test_rows_for_each_method_and_frozen_depth_against_the_unfrozen_baseline(bench, tmp_path):
    out = tmp_path / "rows.json"
    # 0 is left out on purpose: the baseline is measured anyway.
    assert bench.main([
        "--shape", "tiny", "--devices", "cpu", "--frozen-encoder-layers", "1", "2", "--steps", "1", "--warmup", "0",
        "--batch-size", "2", "--cache-clips", "3", "--json", str(out),
    ]) == 0
    rows = json.loads(out.read_text())
    assert [(r["method"], r["frozen_encoder_layers"]) for r in rows] == [
        ("lora r16 q,v", 0), ("lora r16 q,v", 1), ("lora r16 q,v", 2), ("full", 0), ("full", 1), ("full", 2),
    ]
    for method in ("lora r16 q,v", "full"):
        k0, k1, k2 = (r for r in rows if r["method"] == method)
        assert k0["speedup_steps"] == 1.0 and k0["speedup_first_epoch"] == 1.0
        assert k0["cache_seconds_per_clip"] == 0 and k0["first_epoch_seconds"] == k0["epoch_seconds"]
        for r in (k1, k2):
            assert r["baseline"] == "frozen_encoder_layers=0"
            assert r["cache_seconds_per_clip"] > 0 and r["cache_clips_timed"] == 3
            assert r["first_epoch_seconds"] > r["epoch_seconds"]
            assert r["speedup_steps"] == pytest.approx(k0["seconds_per_step"] / r["seconds_per_step"], rel=0.02)
        assert k0["trainable_params"] > k1["trainable_params"] > k2["trainable_params"] > 0
        assert all(r["load_average"] and len(r["load_average"]) == 3 for r in (k0, k1, k2))


def test_frozen_layers_beyond_the_encoder_are_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--shape", "tiny", "--frozen-encoder-layers", "3"])
    assert "2 encoder layers" in capsys.readouterr().err


def test_default_depths_are_the_baseline_two_thirds_and_all(bench):
    assert bench.default_frozen_layers(bench.WHISPER_BASE) == [0, 4, 6]
    assert bench.default_frozen_layers(bench.WHISPER_SMALL) == [0, 8, 12]
