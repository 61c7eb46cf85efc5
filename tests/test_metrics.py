"""WER/CER from one alignment per corpus, checked against hand-counted edits."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.audio import rms_dbfs
from training.metrics import Utterance, corpus_wer, score_corpus

# Hand-counted at the normalised level:
#   a: "el niño come pan" vs "el nino come"          -> 1 sub (niño/nino), 1 del (pan)   / 4 words
#   b: "¿Dónde está?"   vs "donde esta la casa"      -> 2 subs (accents), 2 ins         / 2 words
#   c: "Buenos días."   vs "buenos días"             -> 0                                / 2 words
# total: 3 subs + 1 del + 2 ins = 6 errors over 8 reference words = 0.75
# accent-insensitive: a: niño/nino still differ (ñ kept) -> 2; b: donde/esta equal -> 2 ins; c: 0 => 4/8
# raw (case and punctuation count): a 2; b "¿Dónde"/"donde" "está?"/"esta" 2 subs + 2 ins = 4; c "Buenos"
#   vs "buenos" and "días." vs "días" 2 subs => 8/8
UTTERANCES = [
    Utterance("s1/a.wav", "el niño come pan", "el nino come", session="s1", speaker="ana", loudness_dbfs=-20.0),
    Utterance("s1/b.wav", "¿Dónde está?", "donde esta la casa", session="s1", speaker="luis", loudness_dbfs=-40.0),
    Utterance("s2/c.wav", "Buenos días.", "buenos días", session="s2", speaker="ana", loudness_dbfs=-18.0),
]


def test_corpus_wer_matches_hand_count_at_each_level() -> None:
    report = score_corpus(UTTERANCES)
    assert report.levels["normalised"].wer == pytest.approx(6 / 8)
    assert report.levels["accent_insensitive"].wer == pytest.approx(4 / 8)
    assert report.levels["raw"].wer == pytest.approx(8 / 8)
    words = report.levels["normalised"].words
    assert (words.substitutions, words.deletions, words.insertions, words.hits) == (3, 1, 2, 4)
    assert report.wer == report.levels["normalised"].wer
    assert corpus_wer([u.reference for u in UTTERANCES], [u.hypothesis for u in UTTERANCES]) == pytest.approx(0.75)


def test_breakdowns_are_sums_of_the_same_alignment() -> None:
    report = score_corpus(UTTERANCES)
    assert report.by_session["s1"].wer == pytest.approx(6 / 6)
    assert report.by_session["s2"].wer == pytest.approx(0.0)
    assert report.by_speaker["ana"].wer == pytest.approx(2 / 6)
    assert report.by_speaker["luis"].wer == pytest.approx(4 / 2)
    assert report.by_loudness["quiet"].utterances == 1
    assert report.by_loudness["normal"].wer == pytest.approx(2 / 6)
    total_errors = sum(g.words.errors for g in report.by_session.values())
    assert total_errors == report.levels["normalised"].words.errors


def test_cer_counts_characters_of_normalised_text() -> None:
    # "el niño come pan" (16 chars) vs "el nino come" : ñ->n sub, " pan" deleted (4) = 5 edits
    report = score_corpus(UTTERANCES[:1])
    assert report.cer == pytest.approx(5 / 16)


def test_worst_utterances_ranked_by_errors_with_texts() -> None:
    report = score_corpus(UTTERANCES, worst_n=2)
    assert [w.key for w in report.worst] == ["s1/b.wav", "s1/a.wav"]
    assert report.worst[0].reference == "¿Dónde está?"
    assert report.worst[0].hypothesis == "donde esta la casa"
    data = report.to_dict()
    assert data["wer"]["normalised"] == pytest.approx(0.75)
    assert len(data["per_utterance"]) == 3


def test_empty_reference_and_hypothesis_score_zero() -> None:
    report = score_corpus([Utterance("x", "¿?", ""), Utterance("y", "hola", "hola")])
    assert report.wer == 0.0
    with pytest.raises(ValueError):
        score_corpus([])


def test_rms_dbfs_measures_the_voice_not_the_silence() -> None:
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
    padded = np.concatenate([np.zeros(16000), tone, np.zeros(16000)])
    assert rms_dbfs(tone) == pytest.approx(20 * np.log10(0.1 / np.sqrt(2)), abs=0.2)
    # a third of the clip is voice: the louder-half rule still lands within 2 dB of the voice level
    assert abs(rms_dbfs(padded) - rms_dbfs(tone)) < 2.0
    assert rms_dbfs(np.zeros(100)) == -np.inf


def test_each_utterance_keeps_its_counts_and_slice_keys() -> None:
    # what the promotion gate re-sums per resample: normalised-level S/D/I and reference words per utterance
    kumo = Utterance("r/k.wav", "hola clase", "hola", session="regression-kokoro-quiet", speaker="kokoro:jm_kumo", loudness_dbfs=-35.0)
    report = score_corpus([*UTTERANCES, kumo])
    records = {r["key"]: r for r in report.to_dict()["per_utterance"]}
    counts = {k: (r["substitutions"], r["deletions"], r["insertions"], r["reference_words"]) for k, r in records.items()}
    assert counts == {"s1/a.wav": (1, 1, 0, 4), "s1/b.wav": (2, 0, 2, 2), "s2/c.wav": (0, 0, 0, 2), "r/k.wav": (0, 1, 0, 2)}
    assert {k: r["family"] for k, r in records.items()} == {
        "s1/a.wav": "recorded", "s1/b.wav": "recorded", "s2/c.wav": "recorded", "r/k.wav": "kokoro",
    }
    assert {k: r["loudness"] for k, r in records.items()} == {
        "s1/a.wav": "normal", "s1/b.wav": "quiet", "s2/c.wav": "normal", "r/k.wav": "quiet",
    }
    assert report.by_family["kokoro"].wer == pytest.approx(1 / 2)
    assert report.by_family["recorded"].utterances == 3
