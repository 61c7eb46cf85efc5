"""A term of active-learning rounds on whisper-base: which corrections to ask for, how to train round after round.

Every term runs through the product's own path (:func:`habla_ls.term.run_term`): Habla sessions pushed
into a real Label Studio, ``round`` ranking with a strategy, a scripted annotator correcting the top
tasks (the references are known: this is a simulation) until the corrections reach the schedule
(default 20, 40, 80, 160), and the finish (pull, train, evaluate, gate, export, promote, prefill) as
``watch`` runs it. After every round the served version is scored on held-out audio no training clip
shares a voice or a sentence with:

    accent          everyday sentences (set B) with the Andalusian rules, Kokoro's held-out jf_nezumi and
                    jm_kumo (make_corpus.py's test_accent); jm_kumo, the only male voice, also alone
    standard        the same sentences in standard Spanish, same voices (test_standard), per voice family:
                    kokoro and espeak-ng (es-419, es+m3), and jm_kumo alone

Each clip is decoded alone by the serving engine (CTranslate2 int8, beam 5), as Habla transcribes a
segment. The pool: classroom sessions (set A, the classroom sentences, some of them repeated across
sessions as a teacher repeats routines) in training voices only: a teacher (half the segments) and three
quiet students (-20 dB), Kokoro with the Andalusian rules on the phonemes.

A run is ``<start>:<strategy>:<seed>``: ``start`` is the training's ``start_from`` (``root``: every round
fine-tunes whisper-base on all corrections so far; ``served``: every round fine-tunes the served version on
all of them), ``strategy`` one of uncertainty, diverse, random. Each run has its own work home and Label
Studio project; one Label Studio serves all. Resumable: a finished round is in the run's
``reports/term.jsonl`` and is not run again; an interrupted finish resumes from its journal.

    .venv/bin/python bench/term/run.py                                   # the default grid (many hours on 2 cores)
    .venv/bin/python bench/term/run.py --runs root:diverse:1,root:random:1 --schedule 20,40
    .venv/bin/python bench/term/run.py --report-only                     # the tables from what has run

Writes ``--out``/term.{json,md} and term.png: per run and round the corrections, promoted or not,
held-out WERs and the finish's time; per strategy the mean over seeds, and the labels each strategy
needs to reach random selection's WER at the last round (interpolated between rounds; 0 corrections =
whisper-base).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.term.term_report import summarise, write_outputs  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEFAULT_WORK = RESULTS / "term-run"
DEFAULT_OUT = RESULTS / "term"
DEFAULT_RUNS = (
    "root:random:1", "root:uncertainty:1", "root:diverse:1",
    "root:random:2", "root:uncertainty:2", "root:diverse:2",
    "served:diverse:1", "served:diverse:2",
)
TEACHER, STUDENTS = "profesora", ("alumno1", "alumna2", "alumno3")
VOICES = {"profesora": "jf_alpha", "alumno1": "jf_gongitsune", "alumna2": "jf_tebukuro", "alumno3": "jf_alpha+jf_tebukuro"}
SESSIONS, SEGMENTS = 12, 31  # 372 segments: the 307 classroom sentences and 65 repeats of 13 routines
ROUTINES, REPEATS = 13, 5

log = logging.getLogger("bench.term")


# ---------------------------------------------------------------------------------------------- data


def make_pool(root: Path) -> dict[str, str]:
    """The Habla recordings of the term (made once) and their references (segment key -> transcript)."""
    references_path = root / "references.json"
    if references_path.is_file():
        return json.loads(references_path.read_text())
    from habla_ls.sample_recordings import kokoro_synthesizer, write_sample_recordings
    from synth.accent import spelt_as_heard
    from synth.sentences import CLASSROOM

    sentences = [s.text for s in CLASSROOM]
    order = random.Random(7)
    routines = order.sample(sentences, ROUTINES)
    spoken = sentences + [s for s in routines for _ in range(REPEATS)]
    order.shuffle(spoken)
    assert len(spoken) == SESSIONS * SEGMENTS, len(spoken)
    # The teacher speaks every other segment; the students take turns, quietly.
    speakers = tuple(x for student in STUDENTS for x in (TEACHER, student))
    synthesize = kokoro_synthesizer(speakers, STUDENTS, voices=VOICES)
    recordings = root / "recordings"
    samples = write_sample_recordings(
        recordings, sentences=spoken, sessions=SESSIONS, segments_per_session=SEGMENTS, speakers=speakers,
        quiet_speakers=STUDENTS, synthesize=synthesize, speak_reference=True, live_session=False, progress=True,
        # Habla's own transcript as the demo writes it: the accent spelt as heard, not the reference, which
        # would make every prefill decision pick Habla's text from the first corrections on.
        text_rewrite=spelt_as_heard,
    )
    references_path.write_text(json.dumps(samples.references, ensure_ascii=False, indent=1) + "\n")
    return samples.references


def test_set_paths(root: Path) -> dict[str, Path]:
    """Where :func:`make_test_sets` puts each held-out manifest (nothing is made here)."""
    return {
        "accent": root / "kokoro" / "test_accent" / "manifest.jsonl",
        "standard": root / "kokoro" / "test_standard" / "manifest.jsonl",
        "standard-espeak": root / "espeak" / "test_standard" / "manifest.jsonl",
    }


def make_test_sets(root: Path) -> dict[str, Path]:
    """Held-out manifests (make_corpus.py, no training clips): Kokoro accent and standard, espeak-ng standard."""
    script = Path(__file__).resolve().parents[1] / "quality" / "make_corpus.py"
    sets = test_set_paths(root)
    for backend in ("kokoro", "espeak"):
        if not (root / backend / "test_standard" / "manifest.jsonl").is_file():
            subprocess.run([sys.executable, str(script), "--backend", backend, "--train-clips", "0", "--out", str(root / backend)],
                           check=True)
    return sets


# ---------------------------------------------------------------------------------------------- scoring


def evaluate_alone(model: Path, sets: dict[str, Sequence[Path]], *, label: str, progress: bool = False) -> Any:
    """How every bench/term script scores a version: each clip decoded alone by the serving engine
    (CTranslate2 int8, beam 5), as Habla transcribes a segment. A set may join several manifests.
    Returns a :class:`training.evaluation.ModelEvaluation`."""
    from ml_backend.decoding import DecodeOptions
    from training.evaluate import EvalSet, evaluate_model
    from training.manifest import read_manifest

    eval_sets = []
    for name, manifests in sets.items():
        rows: list[dict[str, Any]] = []
        for manifest in manifests:
            found, problems = read_manifest(manifest)
            for line in problems:
                log.warning("%s", line)
            rows += found
        eval_sets.append(EvalSet(name, rows, name, "+".join(map(str, manifests))))
    return evaluate_model(model, eval_sets, label=label, decode_options=DecodeOptions(pack=False), progress=progress)


def score_version(home: Path, version: str, sets: dict[str, Path], cache: Path) -> dict[str, Any]:
    """Held-out WERs of one version (:func:`evaluate_alone`), cached by version in ``cache``."""
    scores = json.loads(cache.read_text()) if cache.is_file() else {}
    if version in scores:
        return scores[version]
    started = time.perf_counter()
    evaluation = evaluate_alone(home / "models" / version, {name: [path] for name, path in sets.items()}, label=version)
    figures: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 1)}
    for name, report in evaluation.reports.items():
        figures[name] = report.wer
        for speaker, group in report.by_speaker.items():
            figures[f"{name}:{speaker}"] = group.wer
    scores[version] = figures
    cache.write_text(json.dumps(scores, indent=1) + "\n")
    return figures


# ---------------------------------------------------------------------------------------------- one run


def score_kokoro(home: Path, version: str, tests: Path) -> dict[str, Any]:
    """:func:`score_version` on the Kokoro held-out sets only (espeak-ng's standard set would double the
    time): how the probes beside the term (retrain.py, soup.py) score a version, cached in
    ``home``/held-out-scores.json."""
    sets = {name: path for name, path in make_test_sets(tests).items() if name in ("accent", "standard")}
    return score_version(home, version, sets, home / "held-out-scores.json")


def run_one(run: str, args: argparse.Namespace, server: Any, references: dict[str, str], sets: dict[str, Path]) -> None:
    from habla_ls.config import load_settings
    from habla_ls.term import TermOptions, run_term
    from training.ct2_import import ensure_packaged_base

    start, strategy, seed = run.split(":")
    home = args.work / run.replace(":", "-")
    home.mkdir(parents=True, exist_ok=True)
    base = ensure_packaged_base(home / "models")
    train_config = home / "train.toml"
    train_config.write_text(
        f'start_from = "{start}"\nseed = {int(seed)}\n' + "".join(f"{line}\n" for line in args.train_option)
    )
    settings = load_settings(
        environ={}, label_studio_url=server.url, label_studio_api_key=server.token, home=str(home),
        label_studio_document_root=str(args.work), project_title=f"term {run}", recordings=str(args.work / "pool" / "recordings"),
    )
    cache = home / "held-out-scores.json"
    # whisper-base is the same model in every run's home: scored once, for all of them.
    shared = args.work / "base-held-out-scores.json"
    if shared.is_file() and not cache.is_file():
        cache.write_text(json.dumps({base: json.loads(shared.read_text())}, indent=1) + "\n")
    shared.write_text(json.dumps(score_version(home, base, sets, cache), indent=1) + "\n")

    def on_round(record: Any) -> None:
        version = record.served_after or base
        record.extra["held_out"] = score_version(home, version, sets, cache)
        record.extra["held_out_version"] = version
        if record.candidate and record.candidate != version:
            # A refused candidate too: did the gate keep out a better model, or a worse one?
            record.extra["candidate_held_out"] = score_version(home, record.candidate, sets, cache)
        print(f"{run} round {record.round}: {record.corrections} corrections, {record.outcome}, served {version}: "
              f"accent {record.extra['held_out']['accent']:.3f}, standard {record.extra['held_out']['standard']:.3f}",
              flush=True)

    options = TermOptions(schedule=tuple(args.schedule), strategy=strategy, seed=int(seed), train_config=train_config)
    run_term(settings, references, options, on_round=on_round, echo=lambda line: print(f"[{run}] {line}", flush=True))


# ---------------------------------------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="pool, test sets, Label Studio and one home per run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where term.{json,md,png} go")
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="comma-separated <start>:<strategy>:<seed>, run in order")
    parser.add_argument("--schedule", type=_ints, default=[20, 40, 80, 160], help="corrections in all after each round")
    parser.add_argument("--train-option", action="append", default=[],
                        help="a line of the finish's train.toml, e.g. 'epochs = 3' (repeatable; the product's defaults otherwise)")
    parser.add_argument("--report-only", action="store_true", help="write the tables from the runs so far; run nothing")
    args = parser.parse_args(argv)
    for run in args.runs.split(","):
        parts = run.split(":")
        if len(parts) != 3 or parts[0] not in ("root", "served") or parts[1] not in ("uncertainty", "diverse", "random") \
                or not parts[2].isdigit():
            parser.error(f"--runs: {run!r} is not <root|served>:<uncertainty|diverse|random>:<seed>")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args.work = args.work.resolve()
    runs = [r for r in args.runs.split(",") if r]
    if not args.report_only:
        from sync.ls_server import free_port, open_persistent_server

        args.work.mkdir(parents=True, exist_ok=True)
        references = make_pool(args.work / "pool")
        sets = make_test_sets(args.work / "test")
        with open_persistent_server(args.work / "label-studio", args.work, port=free_port()).start() as server:
            for run in runs:
                print(f"\n=== {run} ===", flush=True)
                run_one(run, args, server, references, sets)
                write_outputs(summarise(args.work, runs, args.schedule), args.out)
    summary = summarise(args.work, runs, args.schedule)
    text = write_outputs(summary, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
