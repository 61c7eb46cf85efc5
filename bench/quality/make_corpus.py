"""Make the synthetic accent benchmark's corpora (Kokoro voices, Andalusian rules on the phonemes).

Writes three manifests in the dataset-manifest format under --out:

  train/          accented clips of the classroom sentences (set A), training voices    -> fine-tune on these
  test_accent/    accented clips of the everyday sentences (set B), held-out voices     -> accent WER
  test_standard/  the same set-B sentences and voices, standard Spanish                 -> regression WER

--test-set regression (or household) speaks the two test sets with the 40 regression (household) sentences
instead of set B: a second held-out set with other words again, for a choice that set B alone would make
on its own noise.

Set B has other vocabulary than set A, and the test sets are spoken by the voices that no training audio
uses (synth/voices.py: a model learns the voices it trains on), so a model can pass neither test
by memorising words or voices. References are always in standard spelling. Clips already made with the
same settings are reused.

    .venv/bin/python bench/quality/make_corpus.py                 # the full benchmark corpus
    .venv/bin/python bench/quality/make_corpus.py --check-wer     # + whisper-base WER per set
    .venv/bin/python bench/quality/make_corpus.py --train-clips 0 --test-sentences 20 --check-wer
    .venv/bin/python bench/quality/make_corpus.py --train-clips 0 --test-set regression --test-voices-per-sentence 2 \
        --out bench/results/quality-corpus-regression
    make kokoro-voices && .venv/bin/python bench/quality/make_corpus.py --more-voices --out bench/results/quality-corpus-more
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from synth.accent import PROFILES, RULES  # noqa: E402
from synth.sentences import CLASSROOM, EVERYDAY, HOUSEHOLD, REGRESSION  # noqa: E402
from synth.voices import (  # noqa: E402
    KOKORO,
    MORE_TRAINING_VOICES,
    check_training_voices,
    held_out_voices,
    training_voices,
)
from training.corpus import AccentSettings, CorpusResult, build_corpus, make_backend, plan_clips  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "quality-corpus"
# None of these shares a sentence with the classroom set that training speaks, nor with another (tests/test_corpus.py).
TEST_SETS = {"everyday": EVERYDAY, "regression": REGRESSION, "household": HOUSEHOLD}


def default_voices(backend: str) -> dict[str, tuple[str, ...]]:
    """The voices each split speaks with unless told otherwise: training voices train, held-out ones test."""
    return {"train": training_voices(backend), "test": held_out_voices(backend)}


def _voice_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _rules(value: str) -> tuple[str, ...] | str:
    return value if value in PROFILES else tuple(v.strip() for v in value.split(",") if v.strip())


def score_with_whisper_base(results: dict[str, CorpusResult], beam_size: int) -> dict[str, float]:
    """Transcribe every set with the packaged whisper-base (faster-whisper, language es) and score it.

    Each set's hypotheses go to ``whisper_base_check.jsonl`` beside its manifest, to see what went wrong.
    """
    import json

    import jiwer
    from faster_whisper import WhisperModel

    from ml_backend.audio import decode
    from ml_backend.whisper_files import assemble_packaged_whisper_base
    from training.normalize import normalise

    model = WhisperModel(str(assemble_packaged_whisper_base()), device="cpu", compute_type="int8")
    scores = {}
    for name, result in results.items():
        if not result.rows:
            continue
        references, hypotheses = [], []
        started = time.perf_counter()
        for row in result.rows:
            segments, _info = model.transcribe(decode(row.audio_path), language="es", beam_size=beam_size)
            hypotheses.append(normalise(" ".join(s.text for s in segments)))
            references.append(normalise(row.transcript))
        scores[name] = jiwer.wer(references, hypotheses)
        with open(result.manifest_path.with_name("whisper_base_check.jsonl"), "w", encoding="utf-8") as fh:
            for row, reference, hypothesis in zip(result.rows, references, hypotheses, strict=True):
                record = {"audio_path": row.audio_path, "reference": reference, "hypothesis": hypothesis,
                          "wer": jiwer.wer(reference, hypothesis)}
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        click.echo(f"  {name}: WER {scores[name]:.3f} on {len(result.rows)} clips ({time.perf_counter() - started:.0f} s)")
    return scores


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Where the three corpora go (one sub-dir each).")
@click.option("--backend", type=click.Choice(["kokoro", "espeak"]), default="kokoro", show_default=True,
              help="kokoro: natural voices, accent on the phonemes. espeak: robotic, accent as respelling.")
@click.option("--train-voices", default="", help="Comma-separated voices of the training set (default: the "
              "backend's training voices; Kokoro blends such as jf_alpha+jf_tebukuro are voices too). "
              "Held-out voices are refused.")
@click.option("--test-voices", default="", help="Comma-separated voices of the two test sets (default: the "
              "backend's held-out voices, which no training audio uses).")
@click.option("--more-voices", is_flag=True,
              help="Train on the twelve voices of MORE_TRAINING_VOICES (synth/voices.py), half of them male; "
              "needs the Kokoro v1.0 voice packs (make kokoro-voices).")
@click.option("--train-clips", type=int, default=300, show_default=True,
              help="At most this many training clips (0: no training set).")
@click.option("--train-voice-mix", is_flag=True,
              help="Every training clip spoken by a Kokoro voice of its own: a random blend of the training voices "
              "(weights from a flat Dirichlet draw, fixed per sentence), hundreds of speakers instead of a handful.")
@click.option("--train-voices-per-sentence", type=int, default=1, show_default=True,
              help="1: every training clip a different sentence, as a teacher's own recordings are (the classroom set has 307).")
@click.option("--test-set", type=click.Choice(sorted(TEST_SETS)), default="everyday", show_default=True,
              help="The sentences the two test sets speak: everyday (set B, 92), regression (40 news and office "
              "sentences) or household (40 of home and town life, harder words).")
@click.option("--test-sentences", type=int, default=None,
              help="How many of those sentences the two test sets use (default: all; 0: no test sets).")
@click.option("--test-voices-per-sentence", type=int, default=1, show_default=True)
@click.option("--rules", default="andalusian", show_default=True,
              help=f"Accent profile ({', '.join(PROFILES)}) or comma-separated rules ({', '.join(RULES)}).")
@click.option("--intensity", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Chance that each place a rule can apply is rewritten.")
@click.option("--seed", default="0", show_default=True, help="Seed of the accent rules' random choices.")
@click.option("--check-wer", is_flag=True, help="Transcribe every set with the packaged whisper-base and print WER.")
@click.option("--beam-size", type=int, default=5, show_default=True, help="Beam size for --check-wer.")
def main(out: Path, backend: str, train_voices: str, test_voices: str, more_voices: bool, train_clips: int,
         train_voice_mix: bool,
         train_voices_per_sentence: int,
         test_set: str, test_sentences: int | None, test_voices_per_sentence: int, rules: str, intensity: float, seed: str,
         check_wer: bool, beam_size: int) -> None:
    """Make the train / test_accent / test_standard corpora of the accent benchmark."""
    if more_voices and (backend != KOKORO or train_voices):
        raise click.BadParameter("goes with the kokoro backend and without --train-voices", param_hint="--more-voices")
    speaker = make_backend(backend)
    defaults = default_voices(backend)
    if more_voices:
        defaults["train"] = MORE_TRAINING_VOICES[KOKORO]
    chosen_train = _voice_list(train_voices) or defaults["train"]
    chosen_test = _voice_list(test_voices) or defaults["test"]
    train_option = "--more-voices" if more_voices else "--train-voices"
    for option, chosen in ((train_option, chosen_train), ("--test-voices", chosen_test)):
        unknown = [v for v in chosen if not speaker.has_voice(v)]
        if unknown:
            blends = (" and blends of them (jf_alpha+jf_tebukuro, jf_alpha*0.7+jf_tebukuro*0.3); "
                      "the other voices of Kokoro v1.0 come with its voice packs: make kokoro-voices") if backend == "kokoro" else ""
            raise click.BadParameter(f"unknown voice(s) {', '.join(unknown)}; available: {', '.join(speaker.voices)}{blends}",
                                     param_hint=option)
    try:
        check_training_voices(backend, chosen_train)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--train-voices") from None
    heard = sorted(set(chosen_test) & set(chosen_train))
    if heard and train_clips:
        click.echo(f"warning: the test sets use voices the training set also uses ({', '.join(heard)}): "
                   "the test no longer measures unheard voices", err=True)
    if train_voice_mix and backend != "kokoro":
        raise click.BadParameter("only Kokoro voices can be blended", param_hint="--train-voice-mix")
    try:
        accent = AccentSettings(_rules(rules), intensity)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rules") from None

    test_sentences_chosen = TEST_SETS[test_set][:test_sentences]
    plans = {
        "train": plan_clips(CLASSROOM, chosen_train, accented=True, name="train",
                            voices_per_sentence=min(train_voices_per_sentence, len(chosen_train)), limit=train_clips,
                            mix=train_voice_mix),
        # Both test sets: the same sentences with the same voices, so they differ only by the accent.
        "test_accent": plan_clips(test_sentences_chosen, chosen_test, accented=True, name="test_accent",
                                  voices_per_sentence=min(test_voices_per_sentence, len(chosen_test))),
        "test_standard": plan_clips(test_sentences_chosen, chosen_test, accented=False, name="test_standard",
                                    voices_per_sentence=min(test_voices_per_sentence, len(chosen_test))),
    }
    mixed = " (a random blend of them for every clip)" if train_voice_mix else ""
    click.echo(f"backend {backend}, training voices {', '.join(chosen_train)}{mixed}, test voices {', '.join(chosen_test)}, "
               f"accent {accent.describe()}, test sentences {test_set}, out {out}")
    results: dict[str, CorpusResult] = {}
    for name, clip_plans in plans.items():
        if clip_plans:
            results[name] = build_corpus(out / name, clip_plans, speaker, accent=accent, seed=seed, description=name)

    click.echo("")
    click.echo(f"{'set':<14} {'clips':>6} {'sentences':>9} {'voices':>6} {'hours':>7} {'made':>5} {'reused':>6} "
               f"{'failed':>6} {'x real time':>11}")
    for name, result in results.items():
        sentences = len({row.transcript for row in result.rows})
        speakers = len({row.speaker for row in result.rows})
        speed = f"{result.realtime_factor:.2f}" if result.synthesised else "-"
        click.echo(f"{name:<14} {len(result.rows):>6} {sentences:>9} {speakers:>6} {result.audio_seconds / 3600:>7.3f} "
                   f"{result.synthesised:>5} {result.reused:>6} {len(result.failed):>6} {speed:>11}")
    for name, result in results.items():
        click.echo(f"{name}: {result.manifest_path}")
    if check_wer:
        click.echo(f"\nwhisper-base (faster-whisper int8, language es, beam {beam_size}), normalised WER:")
        scores = score_with_whisper_base(results, beam_size)
        if "test_accent" in scores and "test_standard" in scores:
            gap = scores["test_accent"] - scores["test_standard"]
            click.echo(f"  accent - standard: {gap:+.3f}")
    if any(result.failed for result in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
