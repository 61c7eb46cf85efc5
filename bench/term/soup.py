"""Average the weights of two fine-tunes of the same base (a "soup") and score it as `run.py` scores.

A probe of whether two training seeds averaged make a better or steadier version than either: the
versions' merged transformers weights (``<version>/hf``, both fine-tunes of whisper-base, so the average is
the mean of their changes to it) are mixed half and half by the interpolation the product already has
(:class:`training.interpolate.FullMixer` at λ = 0.5), converted to CTranslate2 int8 as the product exports,
and scored on the term's held-out Kokoro sets (accent and standard; each clip alone, beam 5).

    .venv/bin/python bench/term/soup.py --out /work/soup/s040 --tests /work/term-work3/test \\
        /work/term-work3/root-uncertainty-1/models/habla-v2 /work/replay-exp/r012-s2/models/habla-v1

``--second-weight W`` moves the first version W of the way to the second instead of half way; with
whisper-base's own dir as the second (``<run>/models/whisper-base-v1``) that is an interpolation of a
fine-tune back towards the base, as the ``interpolation`` recipe does with λ = 1 − W:

    .venv/bin/python bench/term/soup.py --out /work/interp/u1v2-w0.3 --tests /work/term-work3/test \\
        --second-weight 0.3 /work/term-work3/root-uncertainty-1/models/habla-v2 \\
        /work/term-work3/root-uncertainty-1/models/whisper-base-v1

Prints the held-out WERs as JSON and keeps them in ``--out``/held-out-scores.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.term.run import score_kokoro  # noqa: E402

VERSION = "habla-v1"
WEIGHTS = "model.safetensors"


def average_versions(first: Path, second: Path, destination: Path, second_weight: float = 0.5) -> Path:
    """``destination``/hf: ``first``'s hf weights moved ``second_weight`` of the way to ``second``'s (0.5: their
    mean; side files and model card from ``first``)."""
    from transformers import WhisperForConditionalGeneration

    from training.interpolate import FullMixer

    start = WhisperForConditionalGeneration.from_pretrained(str(first / "hf"))
    mixed = WhisperForConditionalGeneration.from_pretrained(str(second / "hf"))
    try:
        FullMixer(mixed, start).set(second_weight)  # lerp(first, second, second_weight), held in `mixed`
    except ValueError as exc:
        raise SystemExit(f"{second}: {exc} (against {first})") from None
    hf = destination / "hf"
    hf.mkdir(parents=True)
    for side in (first / "hf").iterdir():
        if side.name != WEIGHTS:
            shutil.copy2(side, hf / side.name)
    mixed.save_pretrained(str(hf))
    card = json.loads((first / "model_card.json").read_text())
    card["soup_of"] = [str(first), str(second)]
    card["soup_second_weight"] = second_weight
    (destination / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return hf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new home for the averaged version")
    parser.add_argument("--tests", type=Path, required=True, help="the term's held-out sets' root (<work>/test)")
    parser.add_argument("first", type=Path, help="a model version dir (hf/ and model_card.json)")
    parser.add_argument("second", type=Path, help="another version of the same base")
    parser.add_argument("--second-weight", type=float, default=0.5,
                        help="how far towards the second version (0.5: the mean; with whisper-base's own dir as the "
                             "second, an interpolation back towards the base)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.second_weight <= 1.0:
        parser.error(f"--second-weight must be in [0, 1], not {args.second_weight}")
    vdir = args.out / "models" / VERSION
    if not (vdir / "ct2").is_dir():
        from training.ct2_convert import convert_to_ct2

        shutil.rmtree(vdir, ignore_errors=True)
        convert_to_ct2(average_versions(args.first, args.second, vdir, args.second_weight), vdir / "ct2", "int8")
    print(json.dumps(score_kokoro(args.out, VERSION, args.tests)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
