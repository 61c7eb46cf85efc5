"""The Andalusian rules do what they say, on known espeak-ng IPA and on text, and deterministically."""

from __future__ import annotations

import pytest

from synth.accent import (
    ANDALUSIAN,
    ANDALUSIAN_BROAD,
    RULES,
    accent_ipa,
    resolve_rules,
    respell,
    respell_text,
    spelt_as_heard,
)

# espeak-ng -q -v es --ipa output (clause punctuation put back, as kokoro.phonemize does).
NINOS = "los nˈiɲos estˈan kansˈaðos."


def ipa(text: str, rule: str) -> str:
    return accent_ipa(text, (rule,)).text


@pytest.mark.parametrize(
    ("rule", "before", "after"),
    [
        ("seseo", "el θjˈelo aθˈul.", "el sjˈelo asˈul."),
        ("yeismo", "la kˈaʎe ʎˈena.", "la kˈaʝe ʝˈena."),
        # intervocalic [ð] goes; after a consonant it stays (verdad keeps its first d)
        ("d_elision", "kansˈaðo, terminˈaðo.", "kansˈao, terminˈao."),
        ("d_elision", "la beɾðˈað.", "la beɾðˈa."),
        ("d_elision", "ustˈed tjˈene.", "ustˈe tjˈene."),
        ("d_elision", "ˈanda, ˈalðea.", "ˈanda, ˈalðea."),
        # coda /s/: aspirated before a consonant or another word, dropped before a pause
        ("s_aspiration", NINOS, "loh nˈiɲoh ehtˈan kansˈaðo."),
        ("s_aspiration", "los ˈamigos.", "loh ˈamigo."),
        # onset /s/ (before a vowel, a stress mark and a vowel, or a glide) is untouched
        ("s_aspiration", "la kˈasa, asjˈento, kansˈaðo.", "la kˈasa, asjˈento, kansˈaðo."),
        ("vowel_opening", NINOS, "lɔs nˈiɲɔs estˈan kansˈaðɔs."),
        ("vowel_opening", "lˈas kˈasas.", "lˈæs kˈasæs."),
        ("x_aspiration", "xamˈon.", "hamˈon."),
        ("final_r_loss", "komˈeɾ i aβlˈaɾ.", "komˈe i aβlˈa."),
        ("coda_l_to_r", "el tɾˈen ˈalto, el ˈaɣwa.", "eɾ tɾˈen ˈaɾto, el ˈaɣwa."),
    ],
)
def test_each_ipa_rule(rule: str, before: str, after: str) -> None:
    assert ipa(before, rule) == after


def test_rules_compose_in_a_fixed_order() -> None:
    # d_elision before vowel_opening before s_aspiration: cansados. -> kansˈaos -> kansˈaɔs -> kansˈaɔ
    result = accent_ipa(NINOS + " el θjˈelo.", ANDALUSIAN)
    assert result.text == "lɔh nˈiɲɔh ehtˈan kansˈaɔ. el sjˈelo."
    assert result.applied == ("seseo", "d_elision", "vowel_opening", "s_aspiration")
    # the order the caller names them in does not matter
    reversed_order = accent_ipa(NINOS + " el θjˈelo.", tuple(reversed(ANDALUSIAN)))
    assert reversed_order.text == result.text


def test_seseo_runs_before_aspiration_so_final_z_is_aspirated_too() -> None:
    assert accent_ipa("el lˈapiθ.", ("seseo", "s_aspiration")).text == "el lˈapi."
    assert accent_ipa("el lˈapiθ.", ("s_aspiration",)).text == "el lˈapiθ."


def test_notes_name_only_the_rules_that_changed_something() -> None:
    result = accent_ipa("la kˈasa.", ANDALUSIAN)
    assert result.text == "la kˈasa."
    assert result.applied == ()
    assert result.notes == "accent: none"
    assert accent_ipa("la kˈaʎe.", ANDALUSIAN).notes == "accent: yeismo"


def test_intensity_zero_changes_nothing_and_one_changes_every_site() -> None:
    text = "los θjˈelos ðe lˈas kˈaʎes. " * 5
    assert accent_ipa(text, ANDALUSIAN_BROAD, intensity=0.0).text == text
    full = accent_ipa(text, ANDALUSIAN_BROAD, intensity=1.0, seed=1).text
    assert full == accent_ipa(text, ANDALUSIAN_BROAD, intensity=1.0, seed=99).text
    assert full.strip() == " ".join(["lɔh sjˈelɔh ðe lˈæh kˈaʝɛ."] * 5)


def test_same_seed_same_output_and_partial_intensity_is_partial() -> None:
    text = " ".join(["lˈas kˈasas ðe los θjˈelos."] * 20)
    first = accent_ipa(text, ANDALUSIAN, intensity=0.5, seed=7).text
    assert first == accent_ipa(text, ANDALUSIAN, intensity=0.5, seed=7).text
    # about half of the 40 θ are now s: some changed, some not
    assert 5 < first.count("θ") < 35
    others = {accent_ipa(text, ANDALUSIAN, intensity=0.5, seed=seed).text for seed in range(5)}
    assert len(others) > 1


def test_intensity_per_rule() -> None:
    result = accent_ipa("el θjˈelo ðe lˈas kˈaʎes.", ANDALUSIAN, intensity={"yeismo": 1.0})
    assert result.text == "el θjˈelo ðe lˈas kˈaʝes."
    assert result.applied == ("yeismo",)


def test_adding_a_rule_does_not_reshuffle_the_others() -> None:
    text = " ".join(["lˈas kˈaʎes ðe los θjˈelos."] * 10)
    alone = accent_ipa(text, ("s_aspiration",), intensity=0.5, seed=3).text
    with_yeismo = accent_ipa(text, ("yeismo", "s_aspiration"), intensity={"yeismo": 1.0, "s_aspiration": 0.5}, seed=3)
    assert with_yeismo.text == alone.replace("ʎ", "ʝ")


def test_unknown_rule_or_profile_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown accent rule.*ceceo"):
        accent_ipa("la kˈasa.", ("ceceo",))
    assert resolve_rules("andalusian") == ANDALUSIAN
    assert resolve_rules("seseo") == ("seseo",)
    assert set(ANDALUSIAN_BROAD) == set(RULES)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("los niños", "loh niño"),  # the respelling the demo speaks
        ("cansado", "cansao"),
        ("cielo", "sielo"),
        ("Cielo azul", "Sielo asul"),
        ("la calle", "la caye"),
        ("Llegamos", "Yegamo"),
        ("la verdad", "la verdá"),
        ("usted", "uhté"),
        ("Madrid", "Madrí"),
        ("perdido", "perdío"),
        ("cansada", "cansá"),
        ("¿Habéis terminado los ejercicios?", "¿Habéih terminao loh ejersisio?"),
        ("el lápiz.", "el lápi."),
        ("Estás cansada, ¿verdad?", "Ehtáh cansá, ¿verdá?"),
        # no rule applies: words too short for the participle rule, onset s, no c/z/ll
        ("nada, todo, lado, casa", "nada, todo, lado, casa"),
    ],
)
def test_text_respelling(before: str, after: str) -> None:
    assert respell(before).text == after


def test_broad_respelling_adds_final_r_and_coda_l() -> None:
    assert respell("el tren va a salir.", ANDALUSIAN_BROAD).text == "er tren va a salí."


def test_respelling_skips_rules_with_no_spelling() -> None:
    result = respell("los niños están cansados.", ("vowel_opening", "x_aspiration"))
    assert result.text == "los niños están cansados."
    assert result.applied == ()
    assert respell("los niños están cansados.").applied == ("d_elision", "s_aspiration")


def test_respelling_is_deterministic_for_a_seed() -> None:
    text = "Los niños están cansados después de la clase de ciencias. " * 4
    assert respell(text, intensity=0.5, seed=11).text == respell(text, intensity=0.5, seed=11).text
    assert respell(text, intensity=0.0).text == text


def test_plain_text_rewrite_for_the_demo() -> None:
    assert respell_text("Los niños están cansados.") == "Loh niñoh ehtán cansao."
    assert respell_text("Los niños están cansados.", intensity=0.0) == "Los niños están cansados."


def test_a_sentence_is_spelt_as_heard_the_same_way_every_time_it_is_said() -> None:
    sentence = "Los niños de la segunda fila están muy cansados después de la clase."
    once = spelt_as_heard(sentence)
    assert once == spelt_as_heard(sentence) == respell_text(sentence, seed=sentence)
    assert once != sentence
