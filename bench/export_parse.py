"""Why `sync pull` reads Label Studio's export snapshot with its own parser, not one ``json.loads``.

A synthetic export of N annotated tasks (the shape Label Studio 1.23 writes) is parsed both ways in one
run: the time (best of 5), and the longest a second thread waits to run (it sleeps 1 ms in a loop and
records the largest gap between wake-ups: how long the parser held the GIL). The pull reads the snapshot
while its other threads fetch tasks, and the ML backend may share the process's interpreter with it.

    .venv/bin/python bench/export_parse.py                 # 10,000 and 50,000 tasks
    .venv/bin/python bench/export_parse.py --tasks 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sync.ls_exports import parse_json_array  # noqa: E402

TEXT = "Buenos días, abrid el libro por la página veinte."


def task(i: int) -> dict[str, Any]:
    result = {"value": {"text": [TEXT]}, "id": "t1", "from_name": "transcription", "to_name": "audio", "type": "textarea",
              "origin": "manual"}
    annotation = {"id": i * 3, "completed_by": 1, "result": [result], "was_cancelled": False, "ground_truth": False,
                  "created_at": "2025-03-01T10:00:00.000000Z", "updated_at": "2025-03-01T10:00:00.000000Z", "lead_time": 12.5,
                  "prediction": {}, "result_count": 1, "task": i, "project": 1, "updated_by": 1, "parent_prediction": i,
                  "parent_annotation": None}
    return {"id": i, "data": {"audio": f"/data/local-files/?d=archive/s{i % 50}/{i}.wav", "ext_id": f"s{i % 50}/seg-{i:06d}",
                              "speaker": "alumno", "session": f"s{i % 50}"},
            "annotations": [annotation], "predictions": [i], "drafts": [], "meta": {},
            "created_at": "2025-03-01T09:00:00.000000Z", "updated_at": "2025-03-01T10:00:00.000000Z", "inner_id": i,
            "total_annotations": 1, "cancelled_annotations": 0, "total_predictions": 1, "project": 1}


def longest_stall(parse: Callable[[str], Any], text: str) -> float:
    """The longest gap a 1-ms ticker thread sees while ``parse`` runs (seconds)."""
    gap, stop = [0.0], threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gap[0] = max(gap[0], now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.05)
    parse(text)
    stop.set()
    ticker.join()
    return gap[0]


def best_time(parse: Callable[[str], Any], text: str, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        parse(text)
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="10000,50000", help="comma-separated export sizes")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the start")
    print(f"{'tasks':>7} {'MB':>6} {'parser':<18} {'time (best of 5)':>17} {'longest stall':>14}")
    for n in (int(x) for x in args.tasks.split(",")):
        text = json.dumps([task(i) for i in range(n)], ensure_ascii=False)
        assert json.loads(text) == parse_json_array(text)
        for name, parse in (("json.loads", json.loads), ("parse_json_array", parse_json_array)):
            stall = max(longest_stall(parse, text) for _ in range(3))
            print(f"{n:>7} {len(text) / 1e6:>6.1f} {name:<18} {1000 * best_time(parse, text):>14.0f} ms {1000 * stall:>11.0f} ms")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
