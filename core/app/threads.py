"""A torch thread count that does not oversubscribe a shared machine."""

from __future__ import annotations

import os

__all__ = ["available_cores", "physical_cores", "default_threads"]


def available_cores() -> int:
    """Logical CPUs this process may run on (its affinity mask, or ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores among :func:`available_cores` (hyper-threads counted once), from ``/proc/cpuinfo`` where it
    exists; the logical count otherwise."""
    logical = available_cores()
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return logical
    pairs, phys, core = set(), None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip():
            if core is not None:
                pairs.add((phys, core))
            phys = core = None
    if core is not None:
        pairs.add((phys, core))
    n_logical = text.count("processor\t:") or text.count("processor :") or logical
    if not pairs or n_logical == 0:
        return logical
    per_core = max(1, n_logical // len(pairs))
    return max(1, logical // per_core)


def default_threads(processes: int = 1, load: float | None = None) -> int:
    """Threads per process: the physical cores that are idle (the 1-minute load average subtracted, so another
    job's busy cores are not counted), divided by the ``processes`` the app starts on this machine; at least 1.

    OpenMP threads spin at every barrier, so a thread on a core another job keeps busy slows every step of its
    siblings (a 2-thread run on a 2-core machine with one busy core measured 17x slower than 1 thread)."""
    cores = physical_cores()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    idle = max(1, int(cores - load + 0.5))
    return max(1, min(cores, idle) // max(1, processes))
