"""How many CPU threads torch may use: chosen deliberately, not left to OpenMP's default.

torch's default is one intra-op thread per core. On a node shared with other
CPU-bound work that default is slow: OpenMP's threads wait for each other at
every operation, and one of them is always waiting for a core the other job
holds. Measured on a 2-core machine with one other CPU-bound process running,
the force-gradient pass of ``calib calibrate`` took ≈ 180 s per batch of 16
structures with 2 threads and ≈ 25 s with 1 (docs/scaling.md).

:func:`choose_threads` takes, in order: an explicit number (``--threads``),
the ``CALIB_THREADS`` environment variable, ``OMP_NUM_THREADS`` when the user
set it, and otherwise the CPUs this process may use (affinity mask and cgroup
quota) minus those other processes keep busy right now (sampled from
``/proc/stat`` over 0.2 s), at least 1.
"""

from __future__ import annotations

import math
import os
import time


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def busy_cpus(interval: float = 0.2) -> float:
    """CPUs kept busy by other processes, averaged over ``interval`` s (0 where /proc/stat is missing)."""

    def sample():
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle

    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = t1 - t0
    if total <= 0:
        return 0.0
    return (os.cpu_count() or 1) * (1.0 - (i1 - i0) / total)


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """(number of threads, why) — see the module doc for the order of precedence."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return int(requested), "--threads"
    for var in ("CALIB_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                raise ValueError(f"{var}={value!r} is not a whole number of threads") from None
            if n < 1:
                raise ValueError(f"{var} must be >= 1, got {n}")
            return n, var
    cpus = usable_cpus()
    busy = busy_cpus()
    n = max(1, min(cpus, cpus - int(round(busy))))
    return n, f"{cpus} usable CPU(s), {busy:.1f} busy with other processes"


_PENDING: dict = {}


def request_threads(requested: int | None = None) -> None:
    """What the command line asks for (``--threads``), checked now, applied when a model loads
    (:func:`apply_pending`): an explicit number or an environment variable is applied at once (it costs
    nothing); the automatic choice samples /proc/stat for 0.2 s, so it waits until torch is needed, and a
    command refused for its parameters never pays for it. Raises ValueError for a bad number."""
    if requested is not None or any(os.environ.get(v, "").strip() for v in ("CALIB_THREADS", "OMP_NUM_THREADS")):
        configure_threads(requested)
        _PENDING.clear()
    else:
        _PENDING["auto"] = True


def apply_pending() -> None:
    """Apply a thread choice :func:`request_threads` deferred (once per process; nothing when none is)."""
    if _PENDING.pop("auto", None):
        configure_threads(None)


def configure_threads(requested: int | None = None) -> tuple[int, str]:
    """Apply :func:`choose_threads` to torch (now if it is imported, else through OMP_NUM_THREADS)."""
    import sys

    n, why = choose_threads(requested)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n, why
