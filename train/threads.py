"""CPU threading defaults of `train fit`, `train eval` and `train predict` (torch-free module).

Why: torch's CPU kernels run on OpenMP threads. With libgomp's default wait policy an idle
thread spins for a while before sleeping, so when other processes use the same cores the
threads of one parallel region burn the time slices their partners need, and a step takes many
times longer (issue 14: 2.2 samples/s with 2 threads on a busy 2-core machine vs 15-20 with
one). ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep at once: on an idle machine this
costs little, on a busy one it removes the collapse (bench/bench_threads.py, BENCHMARKS.md).

OpenMP reads the variable once, when torch's OpenMP runtime loads, so :func:`apply_env_defaults`
must run before ``import torch``: `train`'s entry point calls it first thing. A value the user
set is kept.
"""
from __future__ import annotations

import os
import sys
from typing import MutableMapping

ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_env_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the OpenMP defaults the user did not set; returns what was set.

    Does nothing once torch is imported (too late for OpenMP to see it).
    """
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules:
        return {}
    applied = {}
    for key, value in ENV_DEFAULTS.items():
        if key not in environ:
            environ[key] = value
            applied[key] = value
    return applied
