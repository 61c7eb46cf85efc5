"""Delivery to Habla (`models export --habla-dir`) against a plain copy of the same CTranslate2 dir.

    .venv/bin/python bench/deliver_speed.py --home demo-data/home --version habla-v1 [--repeat 3]

The plain copy (``shutil.copytree`` then ``sync``) is the floor any delivery pays; the ratio is what the
atomic switch (temp dir, fsyncs, renames, the WHISPER_MODEL line) adds. Both run in this process, in
temporary dirs on the same disk, alternating; medians, with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml_backend.registry import CT2_SUBDIR, read_current  # noqa: E402
from training.deliver import deliver  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a habla-ls work dir with a trained version")
    parser.add_argument("--version", default=None, help="default: the served one")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    models = args.home / "models"
    version = args.version or read_current(models)
    source = models / version / CT2_SUBDIR
    size = sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) / 2**20
    print(f"{version}: {source} ({size:.0f} MiB); load average before {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    copies, deliveries, again = [], [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=args.home.parent) as tmp:
            started = time.perf_counter()
            shutil.copytree(source, Path(tmp) / "copy")
            os.sync()
            copies.append(time.perf_counter() - started)
            started = time.perf_counter()
            deliver(models, version, Path(tmp) / "habla")
            os.sync()
            deliveries.append(time.perf_counter() - started)
            started = time.perf_counter()
            deliver(models, version, Path(tmp) / "habla")
            again.append(time.perf_counter() - started)
    copy, delivered = statistics.median(copies), statistics.median(deliveries)
    print(f"{'what':<32} {'median s':>9}")
    print(f"{'plain copy + sync (baseline)':<32} {copy:>9.3f}")
    print(f"{'delivery':<32} {delivered:>9.3f}  ({delivered / copy:.2f}x the copy)")
    print(f"{'redelivery (nothing to do)':<32} {statistics.median(again):>9.4f}")
    print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
