"""Packing short clips into Whisper's 30-s windows: which clips share a window, how they lie in it, and
which clip a moment of the window belongs to."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ml_backend.decoding import DecodeOptions
from ml_backend.features import SAMPLE_RATE, WINDOW_SECONDS


def plan_windows(lengths: Sequence[int], options: DecodeOptions) -> list[list[int]]:
    """Clip indices grouped into 30-s windows (first fit, in the order given; with gaps and a 1-s margin).

    Fed longest first (the canonical order), this is first-fit decreasing: few, full windows. A clip
    longer than ``pack_max_clip_seconds`` gets a window of its own, and so does every clip without packing.
    """
    if not options.pack:
        return [[i] for i in range(len(lengths))]
    limit = (WINDOW_SECONDS - 1.0) * SAMPLE_RATE
    gap = int(options.pack_gap_seconds * SAMPLE_RATE)
    windows: list[list[int]] = []
    used: list[float] = []
    for i, length in enumerate(lengths):
        if length > options.pack_max_clip_seconds * SAMPLE_RATE:
            windows.append([i])
            used.append(math.inf)
            continue
        needed = length + gap
        for w, filled in enumerate(used):
            if filled + needed <= limit:
                windows[w].append(i)
                used[w] += needed
                break
        else:
            windows.append([i])
            used.append(needed)
    return windows


def lay_end_to_end(clips: Sequence[np.ndarray], gap_seconds: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One window's audio (its clips end to end, ``gap_seconds`` of silence after each) and each clip's
    (start, end) in it, in seconds."""
    gap = np.zeros(int(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    spans, cursor = [], 0
    for clip in clips:
        spans.append((cursor / SAMPLE_RATE, (cursor + len(clip)) / SAMPLE_RATE))
        cursor += len(clip) + len(gap)
    return np.concatenate([part for clip in clips for part in (clip, gap)]), spans


def clip_at(spans: list[tuple[float, float]], t: float, slack: float) -> int:
    """The clip whose span, widened by ``slack`` (half a gap) on each side, holds time ``t``; else the nearest one."""
    for i, (start, end) in enumerate(spans):
        if start - slack <= t < end + slack:
            return i
    return min(range(len(spans)), key=lambda i: min(abs(t - spans[i][0]), abs(t - spans[i][1])))
