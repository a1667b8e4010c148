"""Where `train` runs: the one device rule of `train fit`, `pretrain`, `eval` and `predict`, and
fit's CPU thread count."""
from __future__ import annotations

import os

import torch

from shared.errors import ConfigError

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def device_kind(name: str) -> str:
    """"cuda" or "cpu": what `name` will run on (before a process group exists, which needs it)."""
    if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for a ``--device`` value.

    - ``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``;
    - ``cpu``;
    - ``cuda``: ``cuda:LOCAL_RANK``;  ``cuda:N``: GPU N.
    `local_rank` is this process's GPU under torchrun (0 for a single process). A one-line
    ConfigError for another value or for CUDA on a machine without it.
    """
    if name not in ("auto", "cpu") and not name.startswith("cuda"):
        raise ConfigError(f"--device {name!r} must be auto, cpu or cuda[:N]")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if name in ("auto", "cuda"):
        return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} must be auto, cpu or cuda[:N]") from None


def set_threads(num_threads: int, device: torch.device) -> int:
    """Intra-op threads: `num_threads`, or (0) on CPU the CPUs available / processes on this node.

    Returns the count in effect (on a GPU with 0: torch's own, unchanged)."""
    if num_threads > 0:
        n = num_threads
    elif device.type == "cpu":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    else:
        return torch.get_num_threads()
    torch.set_num_threads(n)
    return n


def describe_device(device: torch.device) -> str:
    """What a timing ran on, for summary.json: the GPU's name, or the CPU's model name (Linux
    /proc/cpuinfo; else platform.processor() or the machine type)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"
