"""The CPU cores the engine may use, and how CTranslate2 splits them into workers and threads."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path


def cpu_threads(environ: Mapping[str, str] | None = None, cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CTranslate2's threads: HABLA_LS_CPU_THREADS, else the cores this process may use (its CPU
    affinity, capped by a cgroup CPU quota such as ``docker run --cpus=2``).

    Its OpenMP threads spin while they wait, so more threads than cores (a container seeing the host's
    core count, say) makes decoding several times slower: one window took 15 s with 4 threads on 2
    busy cores against 1.9 s with 2 (``bench/engine_speed.py --profile``).
    """
    env = os.environ if environ is None else environ
    if env.get("HABLA_LS_CPU_THREADS"):
        return max(1, int(env["HABLA_LS_CPU_THREADS"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to honour
    return max(1, cores)


def cpu_layout(cores: int) -> tuple[int, int]:
    """(workers, threads per worker) for ``cores``: CTranslate2 replicas that decode different windows
    at once, each on its own threads.

    Small decoder steps (a window's 5 beams) do not split well across threads: on 2 cores one window
    decoded with 2 threads took 2.0 s against 0.9 s with 1, so windows run side by side on one
    thread each (60 bench clips: 14 s on 1 worker x 2 threads, 10 s on 2 x 1). Past 4 cores the
    workers get more threads instead, so that a lone window (one Label Studio task) still uses several.
    """
    threads = max(1, cores // 4)
    return max(1, cores // threads), threads
