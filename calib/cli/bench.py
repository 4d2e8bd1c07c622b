"""``calib bench commands``: every ``calib`` command on the shipped data, each run in its own process.

This benchmark measures the command-line program itself (it runs ``python -m calib.cli.main``), so it lives
beside the CLI; the benchmarks of the library (``bench llpr | screen | conformal | dask``) are
:mod:`calib.workflows.bench`.
"""

from __future__ import annotations

import time

#: the files ``bench_commands`` writes into its work folder (beside a ``.calib-bench`` marker)
BENCH_FILES = ("H.nc", "CAL.nc", "SOFT.nc", "req.extxyz", "screen.nc")


def command_lines(workdir: str) -> list[tuple[str, list[str]]]:
    """(name, argv) of every ``calib`` command on the shipped data, in an order where each finds its inputs:
    the 140 GPAW-labelled high-energy states (14 chemistries), the 2530-structure equilibrium proxy, the
    LiF vacancy-hop NEB path."""
    import glob
    import os

    from calib.data.datasets import root

    data = str(root())
    lab = sorted(glob.glob(os.path.join(data, "high-energy-states", "*.extxyz")))
    neb = os.path.join(data, "neb", "LiF-vacancy-hop.extxyz")
    w = workdir.rstrip("/")
    return [
        ("hessian", ["hessian", os.path.join(data, "equilibrium-proxy", "proxy.extxyz.gz"), "-o", f"{w}/H.nc"]),
        ("calibrate", ["calibrate", *lab, "--hessian", f"{w}/H.nc", "-o", f"{w}/CAL.nc"]),
        ("evaluate", ["evaluate", *lab, "--calibration", f"{w}/CAL.nc"]),
        ("predict", ["predict", *lab, "--calibration", f"{w}/CAL.nc"]),
        ("predict --forces", ["predict", *lab, "--calibration", f"{w}/CAL.nc", "--forces"]),
        ("softening", ["softening", *lab, "--calibration", f"{w}/CAL.nc", "-o", f"{w}/SOFT.nc"]),
        ("decide", ["decide", *lab, "--calibration", f"{w}/CAL.nc", "--request-out", f"{w}/req.extxyz"]),
        ("neb", ["neb", neb, "--calibration", f"{w}/CAL.nc", "--reference", neb]),
        ("screen", ["screen", *lab, "--calibration", f"{w}/CAL.nc", "-o", f"{w}/screen.nc", "--forces"]),
        ("eos", ["eos"]),
    ]


def bench_commands(only=None, workdir: str | None = None, progress: bool = True) -> dict:
    """Wall time (s) and peak resident memory (MB) of every command on the shipped data, each run in its own
    process (``os.wait4`` gives that process's own peak), with the threads this machine gives calib."""
    import os
    import subprocess
    import sys
    import tempfile

    from tqdm.auto import tqdm

    workdir = workdir or tempfile.mkdtemp(prefix="calib-bench-")
    lines = command_lines(workdir)
    if only:
        unknown = set(only) - {n for n, _ in lines}
        if unknown:
            from calib.errors import UsageError

            raise UsageError(f"unknown command(s) {sorted(unknown)}; choose from {[n for n, _ in lines]}")
    out = {"workdir": workdir}
    needs_cal = bool(only) and bool(set(only) - {"hessian", "eos"}) and not os.path.exists(f"{workdir}/CAL.nc")
    for name, argv in tqdm(lines, desc="commands", unit="command", disable=not progress):
        if only and name not in only and not (needs_cal and name in ("hessian", "calibrate")):
            continue  # the artifact-building steps run when a later command needs them
        cmd = [sys.executable, "-m", "calib.cli.main", *argv, "--json", "--quiet", "--overwrite"] \
            if name in ("hessian", "calibrate", "softening", "decide", "eos") else \
            [sys.executable, "-m", "calib.cli.main", *argv, "--json", "--quiet"]
        if name == "screen":
            cmd.append("--overwrite")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        err = proc.stderr.read().decode(errors="replace")[-300:]
        proc.stderr.close()
        out[f"{name}: seconds"] = round(seconds, 1)
        out[f"{name}: peak_rss_mb"] = round(usage.ru_maxrss / 1024, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            out[f"{name}: exit_code"] = code
            out[f"{name}: stderr"] = err
    return out
