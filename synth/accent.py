"""Andalusian accent as rewrite rules, on espeak-ng IPA and as Spanish respellings.

A synthetic voice that reads IPA (Kokoro) can be given an accent the principled way: take the
standard Castilian phonemes espeak-ng produces (``espeak-ng -q -v es --ipa``) and apply the
phonological processes of Andalusian Spanish to them, while the reference transcript keeps the
standard spelling. A voice that reads text (espeak-ng itself) gets the nearest respelling instead
("los niños" -> "loh niño", "cansado" -> "cansao", "cielo" -> "sielo").

Each rule is a small function ``(string, rng, probability) -> string`` that rewrites every place
where the process can apply, each with the given probability, drawing from its own seeded
random generator: the same seed and intensity always give the same output, and adding or removing
one rule does not change what the others do. Rules compose in :data:`RULES` order, which matters:
seseo comes before /s/ aspiration so that the *z* of *lápiz* is aspirated like any /s/, and vowel
opening looks at the final /s/ before aspiration removes it.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

RuleFunction = Callable[[str, random.Random, float], str]

# --- IPA side -------------------------------------------------------------------------------------

# espeak-ng's Spanish vowels (plus the open ones this module introduces).
IPA_VOWELS = "aeiouɛɔæɐəɪʊɑ"
_V = f"[{IPA_VOWELS}]"
_STRESS = "ˈˌ"
# What ends a word: a space, the punctuation Kokoro phonemes keep, or the end of the string.
_WORD_END = r"(?=$|[\s.,;:?!…])"
_PAUSE_AHEAD = r"(?=$|[.,;:?!…])"


def _each(pattern: str | re.Pattern[str], replacement: Callable[[re.Match[str]], str] | str) -> RuleFunction:
    """A rule that applies ``replacement`` at every match of ``pattern``, each with probability p."""
    compiled = re.compile(pattern)

    def rule(text: str, rng: random.Random, probability: float) -> str:
        if probability <= 0.0:
            return text

        def maybe(match: re.Match[str]) -> str:
            # Draw for every site, even when p == 1, so the draws line up for any p.
            if rng.random() < probability:
                return replacement(match) if callable(replacement) else replacement
            return match.group(0)

        return compiled.sub(maybe, text)

    return rule


# Seseo: /θ/ merges with /s/ (cielo, azul, hacer).
ipa_seseo = _each("θ", "s")

# Yeísmo: /ʎ/ merges with /ʝ/ (calle, llegar).
ipa_yeismo = _each("ʎ", "ʝ")

# Lost /d/: between vowels (cansado -> cansao, todo -> to-o) and at the end of a word after a vowel
# (verdad -> verdá, usted -> usté). espeak writes intervocalic /d/ as [ð], a final one as [ð] or [d].
_ipa_intervocalic_d = _each(rf"(?<={_V})ð(?=[{_STRESS}]?{_V})", "")
_ipa_final_d = _each(rf"(?<={_V})[ðd]{_WORD_END}", "")


def ipa_d_elision(ipa: str, rng: random.Random, probability: float) -> str:
    return _ipa_final_d(_ipa_intervocalic_d(ipa, rng, probability), rng, probability)


# Eastern Andalusian opens a vowel whose final /s/ is lost (los niños -> [lɔ ˈniɲɔ]); this marks the
# plural that the lost /s/ no longer does.
_OPEN = {"e": "ɛ", "o": "ɔ", "a": "æ"}
ipa_vowel_opening = _each(rf"[eoa](?=s{_WORD_END})", lambda m: _OPEN[m.group(0)])

# /s/ in the coda: dropped before a pause (niños. -> niño.), else aspirated [h] (estás -> [ehˈta],
# los amigos -> [loh aˈmiɣo]). A /s/ is in the onset only when a vowel or glide follows (stress aside).
_ipa_s_before_pause = _each(rf"s{_PAUSE_AHEAD}", "")
_ipa_s_coda = _each(rf"s(?![{_STRESS}]?[{IPA_VOWELS}jw])", "h")


def ipa_s_aspiration(ipa: str, rng: random.Random, probability: float) -> str:
    return _ipa_s_coda(_ipa_s_before_pause(ipa, rng, probability), rng, probability)


# Western Andalusian softens /x/ to [h] (jamón -> [haˈmon]).
ipa_x_aspiration = _each("x", "h")

# A final /r/ is lost, mostly in infinitives (comer -> comé, hablar -> hablá).
ipa_final_r_loss = _each(rf"(?<={_V})[ɾr]{_WORD_END}", "")

# /l/ and /r/ merge in the coda, towards [ɾ] (el tren -> er tren, alto -> arto).
ipa_coda_l_to_r = _each(rf"l(?=\s?[{_STRESS}]?[^\s{IPA_VOWELS}jw{_STRESS}.,;:?!…])", "ɾ")


# --- text (respelling) side -----------------------------------------------------------------------

_TEXT_VOWELS = "aeiouáéíóúü"
_LETTER = r"[^\W\d_]"


def _same_case(template: str, replacement: str) -> str:
    return replacement.upper() if template.isupper() and replacement else replacement


def _text_rule(pattern: str, replacement: Callable[[re.Match[str]], str] | str) -> RuleFunction:
    return _each(re.compile(pattern, re.IGNORECASE), replacement)


text_seseo_c = _text_rule(r"c(?=[eiéí])", lambda m: _same_case(m.group(0), "s"))
text_seseo_z = _text_rule(r"z", lambda m: _same_case(m.group(0), "s"))


def text_seseo(text: str, rng: random.Random, probability: float) -> str:
    return text_seseo_z(text_seseo_c(text, rng, probability), rng, probability)


text_yeismo = _text_rule(r"ll", lambda m: _same_case(m.group(0)[0], "y"))



def _participle(match: re.Match[str]) -> str:
    vowel, ending = match.group(1), match.group(2)
    if vowel.lower() == "a" and ending[0].lower() == "a":
        return "á" + ending[1:]  # cansada -> cansá: the two a's merge
    # -ido -> -ío: the written accent keeps the stress on the i once the d is gone.
    return ("í" if vowel.lower() == "i" else vowel) + ending


# Participles and the like (at least two letters before, so nada, lado, todo stay): -ado -> -ao,
# -ada -> -á, -ido -> -ío, -ida -> -ía.
_text_participle = _text_rule(rf"(?<={_LETTER}{{2}})([ai])d([oa]s?)\b", _participle)


def _drop_final_d(match: re.Match[str]) -> str:
    word = match.group(1)
    if any(ch in word.lower() for ch in "áéíóú"):
        return word
    # A word ending in -d is stressed on its last syllable; without the d it needs a written accent.
    last = word[-1]
    accented = unicodedata.normalize("NFC", last + "\u0301")
    return word[:-1] + accented


_text_final_d = _text_rule(rf"\b({_LETTER}*[{_TEXT_VOWELS}])d\b", _drop_final_d)


def text_d_elision(text: str, rng: random.Random, probability: float) -> str:
    return _text_final_d(_text_participle(text, rng, probability), rng, probability)


# espeak-ng reads Spanish "h" as silent, so "h" in a respelling is heard as a dropped /s/; it still
# tells a human reader that the speaker aspirates.
_text_s_before_pause = _text_rule(r"s(?=[.,;:?!…]|\s*$)", "")
_text_s_coda = _text_rule(rf"s(?=\s+{_LETTER}|[^\W\d_{_TEXT_VOWELS}])", lambda m: _same_case(m.group(0), "h"))


def text_s_aspiration(text: str, rng: random.Random, probability: float) -> str:
    return _text_s_coda(_text_s_before_pause(text, rng, probability), rng, probability)


def _drop_final_r(match: re.Match[str]) -> str:
    stem, vowel = match.group(1), match.group(2)
    return stem + unicodedata.normalize("NFC", vowel + "\u0301")


# Infinitives only (-ar, -er, -ir, not already accented words): hablar -> hablá.
text_final_r_loss = _text_rule(rf"\b({_LETTER}+)([aei])r\b", _drop_final_r)

text_coda_l_to_r = _text_rule(rf"l(?=\s+[^\W\d_{_TEXT_VOWELS}h]|[^\W\d_{_TEXT_VOWELS}l])", lambda m: _same_case(m.group(0), "r"))


# --- the rule set ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccentRule:
    name: str
    description: str
    on_ipa: RuleFunction
    on_text: RuleFunction | None  # None: no sensible respelling (the rule is skipped for text)


RULES: dict[str, AccentRule] = {
    rule.name: rule
    for rule in (
        AccentRule("seseo", "θ -> s (cielo -> sielo)", ipa_seseo, text_seseo),
        AccentRule("yeismo", "ʎ -> ʝ (calle -> caye)", ipa_yeismo, text_yeismo),
        AccentRule("d_elision", "intervocalic and final /d/ lost (cansado -> cansao, verdad -> verdá)",
                   ipa_d_elision, text_d_elision),
        AccentRule("x_aspiration", "x -> h (jamón -> [haˈmon])", ipa_x_aspiration, None),
        AccentRule("final_r_loss", "final /r/ lost (comer -> comé)", ipa_final_r_loss, text_final_r_loss),
        AccentRule("coda_l_to_r", "coda /l/ -> [ɾ] (el tren -> er tren)", ipa_coda_l_to_r, text_coda_l_to_r),
        AccentRule("vowel_opening", "vowel before a lost final /s/ opens (niños -> [ˈniɲɔ])", ipa_vowel_opening, None),
        AccentRule("s_aspiration", "coda /s/ aspirated, dropped before a pause (los niños -> loh niño)",
                   ipa_s_aspiration, text_s_aspiration),
    )
}

# The traits every Andalusian speaker in the benchmark has.
ANDALUSIAN: tuple[str, ...] = ("seseo", "yeismo", "d_elision", "vowel_opening", "s_aspiration")
# A broader, more rural profile with the western and coda-liquid traits as well.
ANDALUSIAN_BROAD: tuple[str, ...] = (
    "seseo", "yeismo", "d_elision", "x_aspiration", "final_r_loss", "coda_l_to_r", "vowel_opening", "s_aspiration",
)
PROFILES: dict[str, tuple[str, ...]] = {"andalusian": ANDALUSIAN, "andalusian-broad": ANDALUSIAN_BROAD}


@dataclass(frozen=True)
class Accented:
    text: str
    applied: tuple[str, ...]  # names of the rules that changed something, in order

    @property
    def notes(self) -> str:
        return "accent: " + (", ".join(self.applied) if self.applied else "none")


def resolve_rules(rules: str | Iterable[str]) -> tuple[str, ...]:
    """A profile name or rule names -> rule names in :data:`RULES` order; unknown names are an error."""
    names = PROFILES[rules] if isinstance(rules, str) and rules in PROFILES else (
        (rules,) if isinstance(rules, str) else tuple(rules)
    )
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise ValueError(f"unknown accent rule(s) {', '.join(unknown)}; known: {', '.join(RULES)} "
                         f"or a profile: {', '.join(PROFILES)}")
    return tuple(name for name in RULES if name in names)


def _apply(
    text: str,
    side: str,
    rules: str | Iterable[str],
    intensity: float | Mapping[str, float],
    seed: int | str,
) -> Accented:
    applied = []
    for name in resolve_rules(rules):
        function = getattr(RULES[name], side)
        if function is None:
            continue
        probability = intensity.get(name, 0.0) if isinstance(intensity, Mapping) else float(intensity)
        # Each rule draws from its own generator: adding a rule does not reshuffle the others.
        rewritten = function(text, random.Random(f"{seed}:{name}"), probability)
        if rewritten != text:
            applied.append(name)
        text = rewritten
    return Accented(text, tuple(applied))


def accent_ipa(
    ipa: str,
    rules: str | Iterable[str] = ANDALUSIAN,
    *,
    intensity: float | Mapping[str, float] = 1.0,
    seed: int | str = 0,
) -> Accented:
    """Apply the rules to espeak-ng IPA; ``intensity`` is the chance each eligible site changes
    (one number for all rules, or per rule name)."""
    return _apply(ipa, "on_ipa", rules, intensity, seed)


def respell(
    text: str,
    rules: str | Iterable[str] = ANDALUSIAN,
    *,
    intensity: float | Mapping[str, float] = 1.0,
    seed: int | str = 0,
) -> Accented:
    """Respell standard Spanish so that a text-reading synthesiser (espeak-ng) speaks with the accent.
    Rules with no spelling (vowel opening, x aspiration) are skipped."""
    return _apply(text, "on_text", rules, intensity, seed)


def respell_text(text: str, *, intensity: float = 1.0, seed: int | str = 0) -> str:
    """``respell`` with the default Andalusian profile, as a plain ``str -> str`` rewrite."""
    return respell(text, ANDALUSIAN, intensity=intensity, seed=seed).text


def spelt_as_heard(text: str) -> str:
    """``respell_text`` seeded by the sentence itself: a sentence is respelt the same way every time it is
    said, so the audio of a recording and the transcript written beside it agree (the sample recordings'
    ``text_rewrite``)."""
    return respell_text(text, seed=text)
