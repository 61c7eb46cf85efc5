"""Average the full weights of several fine-tunes of the same base (a "soup") and score it as `run.py` scores.

A probe of whether two training seeds averaged make a better or steadier version than either: the
versions' merged transformers weights (``<version>/hf``, every fine-tune of whisper-base, so the average is
the mean of their changes to it) are averaged tensor by tensor, converted to CTranslate2 int8 as the
product exports, and scored on the term's held-out Kokoro sets (accent and standard; each clip alone, beam 5).

    .venv/bin/python bench/term/soup.py --out /work/soup/s040 \\
        /work/term-work3/root-uncertainty-1/models/habla-v2 /work/replay-exp/r012-s2/models/habla-v1

Prints the held-out WERs as JSON and keeps them in ``--out``/held-out-scores.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.term.run import make_test_sets, score_version  # noqa: E402

VERSION = "habla-v1"
WEIGHTS = "model.safetensors"


def average_versions(versions: list[Path], destination: Path) -> Path:
    """``destination``/hf: the mean of the versions' hf weights (side files and model card from the first)."""
    from safetensors.torch import load_file, save_file

    if len(versions) < 2:
        raise SystemExit("a soup needs at least two versions")
    loaded = [load_file(str(v / "hf" / WEIGHTS)) for v in versions]
    names = set(loaded[0])
    for version, tensors in zip(versions[1:], loaded[1:], strict=True):
        if set(tensors) != names or any(tensors[k].shape != loaded[0][k].shape for k in names):
            raise SystemExit(f"{version}: not the same architecture as {versions[0]}")
    hf = destination / "hf"
    hf.mkdir(parents=True)
    for side in (versions[0] / "hf").iterdir():
        if side.name != WEIGHTS:
            shutil.copy2(side, hf / side.name)
    mean = {k: (sum(t[k].float() for t in loaded) / len(loaded)).to(loaded[0][k].dtype).contiguous() for k in names}
    save_file(mean, str(hf / WEIGHTS), metadata={"format": "pt"})
    card = json.loads((versions[0] / "model_card.json").read_text())
    card["soup_of"] = [str(v) for v in versions]
    (destination / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return hf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new home for the averaged version")
    parser.add_argument("--tests", type=Path, default=Path("/work/term-work3/test"), help="the term's held-out sets' root")
    parser.add_argument("versions", type=Path, nargs="+", help="model version dirs (each with hf/ and model_card.json)")
    args = parser.parse_args(argv)
    vdir = args.out / "models" / VERSION
    if not (vdir / "ct2").is_dir():
        from training.ct2_convert import convert_to_ct2

        shutil.rmtree(vdir, ignore_errors=True)
        convert_to_ct2(average_versions(args.versions, vdir), vdir / "ct2", "int8")
    sets = {name: path for name, path in make_test_sets(args.tests).items() if name in ("accent", "standard")}
    print(json.dumps(score_version(args.out, VERSION, sets, args.out / "held-out-scores.json")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
