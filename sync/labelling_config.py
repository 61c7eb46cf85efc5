"""The Label Studio labelling interface for correcting a transcript, and the names results refer to.

Everything that reads or writes Label Studio results (push predictions, pull, the ML backend, the
active-learning round) uses these names, so the XML and the code cannot drift apart.
"""

from __future__ import annotations

from typing import Any

AUDIO_NAME = "audio"  # object tag; also the task data key holding the audio URL
TRANSCRIPTION_NAME = "transcription"  # TextArea with the transcript
FLAGS_NAME = "flags"  # Choices marking a clip that must not become training data

NOISE = "noise"
UNINTELLIGIBLE = "unintelligible"
WRONG_LANGUAGE = "wrong language"
FLAG_CHOICES = (NOISE, UNINTELLIGIBLE, WRONG_LANGUAGE)

LABEL_CONFIG = f"""<View>
  <Header value="$ext_id" size="6"/>
  <Audio name="{AUDIO_NAME}" value="$audio" hotkey="space"/>
  <Header value="Correct the transcript to exactly what was said (standard Spanish spelling)." size="6"/>
  <TextArea name="{TRANSCRIPTION_NAME}" toName="{AUDIO_NAME}" rows="3" editable="true" maxSubmissions="1"
            transcription="true" placeholder="Transcript"/>
  <Header value="Or mark a clip that should not be used for training:" size="6"/>
  <Choices name="{FLAGS_NAME}" toName="{AUDIO_NAME}" choice="multiple" showInline="true">
    <Choice value="{NOISE}" hint="no speech, only noise"/>
    <Choice value="{UNINTELLIGIBLE}" hint="speech that cannot be made out"/>
    <Choice value="{WRONG_LANGUAGE}" hint="not Spanish"/>
  </Choices>
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
