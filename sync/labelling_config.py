"""The Label Studio labelling page for correcting a transcript, and every name it shares with the code.

Everything that reads or writes Label Studio results or task data (push, pull, the ML backend, the
active-learning round, the browser test) uses these names, so the XML and the code cannot drift apart.

What the annotator sees, top to bottom: where the clip comes from (session, speaker, recording time,
segment file); the waveform (of a loudness-normalised copy for a quiet clip, with a line saying by how
much it was amplified: :mod:`sync.listening`); Habla's English translation when Habla has one
(read-only context: it tells what the speaker meant when the audio is hard to make out); how many words
are likely wrong, calibrated on the corrections so far; the prefilled transcript with the words to check
marked, and under it one row per marked stretch whose play button plays it (:mod:`sync.page_checks`);
the transcript to correct, prefilled; the flags; a line of hotkeys.

The page only shows task data; it never shows a literal ``$name``: every context line is a whole
``$key`` value (an absent key shows as nothing, a partial ``"text $key"`` would show "undefined"), and
its label comes from CSS, so a line whose value is empty disappears with its label. That is also why
tasks pushed before a key existed still render cleanly. The two object tags of the word checks
(HyperText, Paragraphs) are different: Label Studio refuses to import a task without their keys, so every
task carries them from its push (empty until a round fills them; :data:`EMPTY_CHECKS`), and a push that
upgrades an older project's page adds them to its tasks. Paragraphs also never gets an empty list
(:data:`NO_CHECK_ROWS`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

# -- control and object names (results refer to them) ------------------------------------------------
AUDIO_NAME = "audio"  # object tag; also the task data key holding the audio URL
TRANSCRIPTION_NAME = "transcription"  # TextArea with the transcript
FLAGS_NAME = "flags"  # Choices marking a clip that must not become training data

NOISE = "noise"
UNINTELLIGIBLE = "unintelligible"
WRONG_LANGUAGE = "wrong language"
FLAG_CHOICES = (NOISE, UNINTELLIGIBLE, WRONG_LANGUAGE)
# Hotkeys. Label Studio 1.23 runs its hotkeys only while no text field has the focus (a digit typed in
# the transcript stays a digit), except play/pause, which works everywhere; a task opens with the focus
# in the text box, so the page says to click beside it first (measured in Chromium, tests/test_browser.py).
FLAG_HOTKEYS = {NOISE: "1", UNINTELLIGIBLE: "2", WRONG_LANGUAGE: "3"}
# Label Studio's own defaults (its keymap; Settings > Hotkeys): shown on the page, not set by the config.
SUBMIT_HOTKEY = "Ctrl+Enter"
SKIP_HOTKEY = "Ctrl+Space"
PLAY_HOTKEY = "Ctrl+P"

# -- task data keys (task["data"][...]) --------------------------------------------------------------
# Written by `sync push`:
DATA_AUDIO = AUDIO_NAME
DATA_EXT_ID = "ext_id"  # the segment key, "<session dir>/<segment file>" (filterable: data.ext_id)
DATA_SESSION = "session"
DATA_SEGMENT = "segment"
DATA_SPEAKER = "speaker"
DATA_DURATION = "duration"  # seconds (number)
DATA_SHA256 = "sha256"
DATA_RECORDED_AT = "recorded_at"  # "YYYY-MM-DD HH:MM:SS" (local time, as Habla wrote it)
DATA_TRANSLATION = "translation"  # Habla's translation, "" when it has none
# Written by `habla-ls round` (see round_task_data()):
DATA_PRIORITY = "priority"  # 1 = correct this first (number)
DATA_USEFULNESS = "usefulness"  # expected word errors per second of audio (number)
DATA_CONFIDENCE = "confidence"  # how many words are likely wrong, as shown on the page; "" before a round
# The word checks of the version that prefills the page (:mod:`sync.page_checks`), written by the round and
# after every change of the prefill:
DATA_CHECK_TEXT = "check_text"  # HTML: the prefilled transcript with the words to check marked; "" for none
DATA_CHECK_WORDS = "check_words"  # [{"author", "text", "start", "end"}]: one playable row per marked stretch
# Label Studio 1.23's Paragraphs cannot show an empty list: the whole labelling view stays blank ("Cannot use
# 'in' operator to search for 'author' in undefined"). One empty row stands for none; the page's CSS hides it.
NO_CHECK_ROWS: tuple[dict[str, Any], ...] = ({"author": "", "text": "", "start": 0.0, "end": 0.0},)
EMPTY_CHECKS: dict[str, Any] = {DATA_CHECK_TEXT: "", DATA_CHECK_WORDS: list(NO_CHECK_ROWS)}
# Written by `sync push` (:mod:`sync.listening`):
DATA_LOUDNESS = "loudness"  # "played 18 dB louder ..." when the page plays an amplified copy, else ""
CHECK_TEXT_NAME = DATA_CHECK_TEXT  # object names of the word checks
CHECK_WORDS_NAME = DATA_CHECK_WORDS

# -- the label stream ----------------------------------------------------------------------------------
# Label Studio 1.23's "Label All Tasks" (nothing selected) sends the server nothing about the open tab:
# its frontend drops the tab's filters and ordering, so the project's sampling alone picks the next task
# (projects/functions/next_task.py, get_task_from_qs_with_sampling). Sequential goes by task id (import
# order, i.e. oldest recording first): right until a round has ranked the tasks. Uncertainty sampling
# opens the task whose prediction of the project's model_version (the prefill) has the lowest score:
# the round writes label_order_score() there and switches the project to it. (With several annotators
# Label Studio picks at random among the first few, to keep them apart.)
SAMPLING_SEQUENTIAL = "Sequential sampling"
SAMPLING_ROUND_ORDER = "Uncertainty sampling"

# Label Studio escapes ">" inside <Style>, so the CSS uses descendant selectors only. The rows of the word
# checks are Paragraphs, whose "Show all authors" filter means nothing here: it is hidden by its class, and
# so is a row without a name (NO_CHECK_ROWS).
_STYLE = """
  .hl-context { display: flex; flex-wrap: wrap; gap: 0 28px; margin: 0 0 6px; }
  .hl-context div:has(:empty), .hl-note:has(:empty) { display: none; }
  .hl-context h4 { margin: 0 !important; font-size: 15px !important; line-height: 22px !important;
                   font-weight: 600 !important; }
  .hl-context h4::before { color: #6b7280; font-weight: 400; margin-right: 6px; }
  .hl-session h4::before { content: "Session"; }
  .hl-speaker h4::before { content: "Speaker"; }
  .hl-recorded h4::before { content: "Recorded"; }
  .hl-segment h4::before { content: "Segment"; }
  .hl-note h4 { margin: 10px 0 0 !important; font-size: 15px !important; line-height: 22px !important;
                font-weight: 400 !important; }
  .hl-translation h4 { padding: 6px 12px; border-left: 4px solid #93c5fd; background: #eff6ff; font-style: italic; }
  .hl-translation h4::before { content: "English (Habla):"; font-style: normal; font-weight: 600; margin-right: 8px; }
  .hl-confidence h4::before { content: "Likely wrong:"; font-weight: 600; margin-right: 8px; }
  .hl-loudness h4 { color: #92400e; }
  .hl-loudness h4::before { content: "Quiet recording:"; font-weight: 600; margin-right: 8px; color: #111827; }
  .hl-checks { margin: 10px 0 0; font-size: 16px; line-height: 26px; }
  .hl-checks mark { background: #fde68a; padding: 0 2px; border-radius: 3px; }
  [class^="authorFilter--"] { display: none; }
  [class^="phraseContainer--"]:has([class^="dialoguename--"]:empty) { display: none; }
  .hl-instruction h4 { margin: 14px 0 6px !important; font-size: 16px !important; }
  .hl-hotkeys h4 { margin: 14px 0 0 !important; font-size: 13px !important; font-weight: 400 !important;
                   color: #6b7280; }
"""


def _shown(css_class: str, key: str) -> str:
    """One line of task data; its label comes from the CSS class, and it disappears when empty."""
    return f'<View className="{css_class}"><Header value="${key}" size="5"/></View>'


def _choice(flag: str, hint: str) -> str:
    return f'<Choice value="{flag}" hotkey="{FLAG_HOTKEYS[flag]}" hint="{hint}"/>'


LABEL_CONFIG = f"""<View>
  <Style>{_STYLE}</Style>
  <View className="hl-context">
    {_shown("hl-session", DATA_SESSION)}
    {_shown("hl-speaker", DATA_SPEAKER)}
    {_shown("hl-recorded", DATA_RECORDED_AT)}
    {_shown("hl-segment", DATA_SEGMENT)}
  </View>
  <Audio name="{AUDIO_NAME}" value="${DATA_AUDIO}" sync="{CHECK_WORDS_NAME}"/>
  {_shown("hl-note hl-loudness", DATA_LOUDNESS)}
  {_shown("hl-note hl-translation", DATA_TRANSLATION)}
  {_shown("hl-note hl-confidence", DATA_CONFIDENCE)}
  <View className="hl-checks">
    <HyperText name="{CHECK_TEXT_NAME}" value="${DATA_CHECK_TEXT}" inline="true" saveTextResult="no"/>
  </View>
  <Paragraphs name="{CHECK_WORDS_NAME}" value="${DATA_CHECK_WORDS}" audioUrl="${DATA_AUDIO}" sync="{AUDIO_NAME}"
              layout="dialogue" textKey="text" nameKey="author" saveTextResult="no"/>
  <View className="hl-instruction">
    <Header value="Transcript: correct it to exactly what was said (standard Spanish spelling)" size="5"/>
  </View>
  <TextArea name="{TRANSCRIPTION_NAME}" toName="{AUDIO_NAME}" rows="3" editable="true" maxSubmissions="1"
            transcription="true" placeholder="What was said, in Spanish"/>
  <View className="hl-instruction">
    <Header value="Or mark a clip that must not be used for training:" size="5"/>
  </View>
  <Choices name="{FLAGS_NAME}" toName="{AUDIO_NAME}" choice="multiple" showInline="true">
    {_choice(NOISE, "no speech, only noise")}
    {_choice(UNINTELLIGIBLE, "speech that cannot be made out")}
    {_choice(WRONG_LANGUAGE, "not Spanish")}
  </Choices>
  <View className="hl-hotkeys">
    <Header value="Hotkeys: {PLAY_HOTKEY} play/pause. With the focus outside the text box (click beside it): {SUBMIT_HOTKEY} submit · {SKIP_HOTKEY} skip · {" ".join(FLAG_HOTKEYS.values())} flags" size="5"/>
  </View>
</View>
"""


def transcription_result(text: str) -> list[dict[str, Any]]:
    """A result list holding one transcript (the shape of a prediction or an annotation)."""
    return [
        {
            "from_name": TRANSCRIPTION_NAME,
            "to_name": AUDIO_NAME,
            "type": "textarea",
            "value": {"text": [text]},
        }
    ]


def flags_result(*flags: str) -> list[dict[str, Any]]:
    unknown = set(flags) - set(FLAG_CHOICES)
    if unknown:
        raise ValueError(f"unknown flag(s) {sorted(unknown)}; known: {FLAG_CHOICES}")
    return [{"from_name": FLAGS_NAME, "to_name": AUDIO_NAME, "type": "choices", "value": {"choices": list(flags)}}]


def read_result(result: list[dict[str, Any]]) -> tuple[str, tuple[str, ...]]:
    """(transcript, flags) from an annotation's result; a TextArea may hold several lines: joined by a space."""
    texts: list[str] = []
    flags: list[str] = []
    for item in result or []:
        value = item.get("value") or {}
        if item.get("from_name") == TRANSCRIPTION_NAME or item.get("type") == "textarea":
            texts.extend(str(t) for t in value.get("text", []) if t is not None)
        elif item.get("from_name") == FLAGS_NAME or item.get("type") == "choices":
            flags.extend(str(c) for c in value.get("choices", []))
    text = " ".join(t.strip() for t in texts if t.strip())
    return text, tuple(sorted(set(flags)))


def recorded_at_text(when: datetime | None, *, exact: bool = True) -> str:
    """How the page shows a recording time; the session's start when the segment's own is unknown."""
    if when is None:
        return ""
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    return text if exact else f"{text} (session start)"


def round_task_data(*, priority: int, usefulness: float) -> dict[str, Any]:
    """What a round merges into a task's data: its place in the order (the page's checks come after)."""
    return {DATA_PRIORITY: int(priority), DATA_USEFULNESS: round(float(usefulness), 4)}


def label_order_score(priority: int, ranked: int) -> float:
    """The prediction score that makes Label Studio's uncertainty sampling follow the round's order.

    Uncertainty sampling opens the task whose prefill prediction has the lowest score first, so the
    score rises with the priority (1 = first), strictly, inside (0, 1).
    """
    return round(priority / (ranked + 1), 6)
