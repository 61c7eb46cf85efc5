"""The active-learning ranking: usefulness per second of audio, disagreement, diversity."""

from sync.active_learning import Candidate, disagreement, rank, top, usefulness


def cand(key, *, confidence=0.9, session="s1", speaker="t", duration=3.0, text="uno dos tres cuatro cinco seis", ref=None):
    return Candidate(key, hash(key) % 1000, session, speaker, duration, text, confidence, ref)


def test_disagreement_is_wer_between_transcripts_ignoring_case_and_punctuation():
    assert disagreement("Hola, ¿qué tal?", "hola qué tal") == 0.0
    assert disagreement("hola que tal", "hola qué tal") == 1 / 3
    assert disagreement("", "hola") == 1.0
    assert disagreement("", "") == 0.0


def test_low_confidence_ranks_first():
    ranked = rank([cand("sure", confidence=0.95), cand("unsure", confidence=0.3, session="s2", speaker="u")])
    assert [r.candidate.key for r in ranked] == ["unsure", "sure"]
    assert [r.priority for r in ranked] == [1, 2]


def test_usefulness_is_per_second_of_audio():
    words = "uno dos tres cuatro cinco seis"
    short, _ = usefulness(cand("short", confidence=0.5, duration=3.0, text=words))
    long, _ = usefulness(cand("long", confidence=0.5, duration=12.0, text=words))
    # Same expected errors, four times the listening time: a quarter of the value per second
    # (the long clip's 0.5 words/s is clamped to the 1 word/s floor, so the ratio is 2 here).
    assert short > long
    assert short / long == 2.0


def test_an_empty_transcript_counts_as_every_spoken_word_missed():
    # The demo's quiet student: the no-speech rule blanks the clip with confidence 0. It must rank with
    # the worst clips (every word wrong), not below a half-right one as a 1-word/s floor would put it.
    blank = cand("blank", confidence=0.0, text="", session="s2", speaker="student")
    garbled = cand("garbled", confidence=0.4, text="uno dos tres cuatro cinco seis siete", session="s3")
    assert [r.candidate.key for r in rank([garbled, blank])] == ["blank", "garbled"]
    assert usefulness(blank)[0] == 2.5  # a typical speaking rate, all words expected wrong
    # With a reference model that heard words, those words give the count.
    heard = cand("heard", confidence=0.0, text="", ref="uno dos tres cuatro cinco seis siete ocho nueve", duration=3.0)
    assert usefulness(heard)[0] == 3.0  # (0.5 * 1 + 0.5 * 1) * 9 words / 3 s


def test_disagreement_with_reference_model_raises_usefulness():
    agree, dis_a = usefulness(cand("a", confidence=0.8, text="hola qué tal", ref="hola qué tal"))
    differ, dis_d = usefulness(cand("b", confidence=0.8, text="hola qué tal", ref="ola ke tal"))
    assert dis_a == 0.0 and dis_d == 2 / 3
    assert differ > agree


def test_diversity_spreads_the_budget_over_sessions():
    # Session A is slightly worse overall, but without the rule it would take the whole budget of 4.
    a = [cand(f"a{i}", confidence=0.40 + i * 0.01, session="A", speaker="ta") for i in range(6)]
    b = [cand(f"b{i}", confidence=0.45 + i * 0.01, session="B", speaker="tb") for i in range(6)]
    chosen = top(rank(a + b), 4)
    sessions = [r.candidate.session for r in chosen]
    assert sessions.count("A") == 2 and sessions.count("B") == 2
    without_rule = top(rank(a + b, repeat_decay=1.0), 4)
    assert [r.candidate.session for r in without_rule] == ["A"] * 4


def test_rank_is_a_permutation_with_consecutive_priorities():
    items = [cand(f"k{i}", confidence=(i * 37 % 100) / 100, session=f"s{i % 3}", speaker=f"p{i % 2}") for i in range(50)]
    ranked = rank(items)
    assert sorted(r.candidate.key for r in ranked) == sorted(c.key for c in items)
    assert [r.priority for r in ranked] == list(range(1, 51))


def test_diverse_ranking_takes_one_of_many_near_copies_then_moves_away():
    import numpy as np

    from sync.active_learning import rank_diverse

    # Three near-copies of the most doubtful clip, and two less doubtful clips elsewhere in the encoder space.
    copies = [cand(f"copy{i}", confidence=0.30 + 0.01 * i) for i in range(3)]
    others = [cand("other1", confidence=0.45), cand("other2", confidence=0.5)]
    vectors = {f"copy{i}": np.array([1.0, 0.0, 0.01 * i]) for i in range(3)}
    vectors |= {"other1": np.array([-1.0, 0.2, 0.0]), "other2": np.array([0.0, -1.0, 0.3])}

    by_uncertainty = [r.candidate.key for r in rank(copies + others)]
    diverse = rank_diverse(copies + others, vectors)
    order = [r.candidate.key for r in diverse]

    assert by_uncertainty[:3] == ["copy0", "copy1", "copy2"]
    assert order[0] == "copy0" and set(order[1:3]) == {"other1", "other2"}
    assert [r.priority for r in diverse] == [1, 2, 3, 4, 5]
    # What a human corrected already counts: next to a corrected copy, the copies come last.
    covered = rank_diverse(copies + others, vectors, [np.array([1.0, 0.0, 0.005])])
    assert [r.candidate.key for r in covered][:2] in (["other1", "other2"], ["other2", "other1"])


def test_random_ranking_is_a_seeded_shuffle_of_every_candidate():
    from sync.active_learning import rank_random

    pool = [cand(f"k{i}") for i in range(20)]
    first = [r.candidate.key for r in rank_random(pool, seed=3)]
    assert first == [r.candidate.key for r in rank_random(list(reversed(pool)), seed=3)]
    assert first != [r.candidate.key for r in rank_random(pool, seed=4)]
    assert sorted(first) == sorted(c.key for c in pool)
