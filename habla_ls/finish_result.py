"""What a finish is asked (:class:`FinishOptions`) and what it answers: the outcome of each step
(:class:`StepRecord`) and of the whole job (:class:`FinishResult`, whose lines tell a refusal, an answer,
from a failing step), and an error told in one line (:func:`one_line`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

# Outcomes of a step (StepRecord.outcome) and of a whole finish (FinishResult.outcome).
STARTED, OK, SKIPPED, REFUSED, FAILED, STOPPED = "started", "ok", "skipped", "refused", "failed", "stopped"
PROMOTED, UP_TO_DATE, BUSY = "promoted", "up-to-date", "busy"


@dataclass(frozen=True)
class StepRecord:
    step: str
    outcome: str
    detail: str = ""
    duration: float = 0.0


@dataclass(frozen=True)
class FinishOptions:
    train_config: Path | None = None  # training options file, as `habla-ls train --config`
    wait_for_lock: bool = True
    force: bool = False  # promote even if the gate refuses (recorded in the card and history); no export check
    export_check: bool = True
    progress: bool = True


@dataclass
class FinishResult:
    outcome: str  # promoted | refused | up-to-date | failed | stopped | busy
    served_before: str | None = None
    served: str | None = None
    candidate: str | None = None
    failed_step: str | None = None
    detail: str = ""
    reasons: list[str] = field(default_factory=list)
    delivered: str | None = None
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.outcome == FAILED

    def lines(self) -> list[str]:
        out = []
        if self.outcome == REFUSED:
            out.append(f"not promoted: {self.detail}")
            out += [f"  {reason}" for reason in self.reasons]
        elif self.outcome == PROMOTED:
            out.append(f"promoted {self.candidate} (was {self.served_before or 'nothing'})")
        elif self.outcome in (UP_TO_DATE, STOPPED, BUSY):
            out.append(self.detail)
        elif self.outcome == FAILED:
            if self.served == self.served_before:
                after = "the served model and the Habla dir are unchanged"
            else:
                after = f"{self.served} is served; the next finish retries {self.failed_step}"
            out.append(f"{self.failed_step} failed: {self.detail} ({after})")
        if self.delivered:
            out.append(f"delivered to Habla: WHISPER_MODEL={self.delivered}")
        out.append(f"served model: {self.served or 'none'}")
        return out


def one_line(exc: BaseException) -> str:
    """An error as one line for people: a full disk said plainly, else the message's first line."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        # Over a term the registry is what grows: say what frees it without losing anything needed.
        return (f"disk full{where} (no space left on device); `habla-ls models prune --dry-run` shows what the "
                "weights of refused versions would free")
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first or type(exc).__name__
