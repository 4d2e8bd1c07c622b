"""The errors and warnings calib reports in words, and the checks that raise them early.

Every ``calib`` command follows one contract (docs/cli.md): its parameters are
checked by the functions here before any model loads or any structure is read;
a user error ends with one line (or one JSON document ``{"error", "kind"}``
under ``--json``) and an exit code, never a traceback. The library raises the
same exceptions, so a pipeline that calls calib from Python gets the same
messages. :class:`UsageError` is also a ``ValueError`` and
:class:`OutputError` also a ``FileExistsError``, so code written against the
builtin exceptions keeps working.

Exit codes: 0 every valid structure processed (skipped ones reported), 1 the
run failed or nothing could be processed, 2 a usage error (a bad parameter or
an output that would overwrite a file).
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CalibError", "UsageError", "InputError", "DataError", "OutputError", "CalibWarning", "check_device",
           "check_outputs", "check_output_folder", "check_plot_folder", "finite", "fraction", "named_as", "positive",
           "positive_int", "non_negative_int"]


class CalibError(Exception):
    """An error reported to the user as a sentence: ``kind`` names its family, ``exit_code`` the exit status."""

    kind = "error"
    exit_code = 1

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class UsageError(CalibError, ValueError):
    """A parameter that cannot be right (exit 2): found before any model loads."""

    kind = "usage"
    exit_code = 2


class OutputError(UsageError, FileExistsError):
    """An output that would overwrite an input or an existing file without ``--overwrite`` (exit 2)."""

    kind = "output"


class InputError(CalibError, ValueError):
    """Input data that gives nothing to compute on (no valid structure, an unreadable file) (exit 1)."""

    kind = "input"


class DataError(CalibError, ValueError):
    """Data that cannot determine what is asked of it (e.g. an energy fit whose residuals the element reference
    absorbs) (exit 1): the kind a plain ValueError gets from the CLI, as a CalibError so that the CLI can word it
    with its option names (:func:`named_as`)."""

    kind = "data"


class CalibWarning(UserWarning):
    """A condition of calib's own that the user should know about; the CLI reports each once
    (stderr, and ``warnings`` under ``--json``)."""


@contextmanager
def named_as(**names: str):
    """Errors raised inside, reworded with the caller's names of the parameters: the library names a parameter
    by its keyword (``md_steps``, ``overwrite=True``, ``target="forces"``), a front-end by its own name for it,
    so ``named_as(md_steps="--md-steps", overwrite="--overwrite", target="--target")`` makes the CLI's message
    of a library error ("--overwrite", "--target forces"). A :class:`CalibError` or ``FileExistsError`` keeps
    its type and kind; only its words change."""
    try:
        yield
    except (CalibError, FileExistsError) as exc:
        message = str(exc)
        for keyword, name in names.items():
            message = re.sub(rf"""(?<![\w-]){re.escape(keyword)}(?:=(True|False|"[^"]*"|'[^']*'))?(?!\w)""",
                             lambda m, name=name: _flag_words(name, m.group(1)), message)
        exc.args = (message,)
        raise


def _flag_words(name: str, value: str | None) -> str:
    """A keyword's words as an option: a bool or none is the flag alone, a quoted value follows the flag."""
    return name if value is None or value in ("True", "False") else f"{name} {value[1:-1]}"


# --------------------------------------------------------------------------- parameter checks


def positive_int(name: str, value) -> int:
    """``value`` as an int ≥ 1, or UsageError naming the option."""
    if value is None or int(value) != value or value < 1:
        raise UsageError(f"{name} must be a whole number ≥ 1, got {value!r}")
    return int(value)


def non_negative_int(name: str, value) -> int:
    if value is None or int(value) != value or value < 0:
        raise UsageError(f"{name} must be a whole number ≥ 0, got {value!r}")
    return int(value)


def finite(name: str, value, minimum: float | None = None, maximum: float | None = None,
           unit: str = "") -> float:
    """``value`` as a finite float in [minimum, maximum] (either bound optional)."""
    u = f" {unit}" if unit else ""
    if value is None or not math.isfinite(float(value)):
        raise UsageError(f"{name} must be a finite number{u}, got {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{name} must be ≥ {minimum}{u}, got {value!r}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be ≤ {maximum}{u}, got {value!r}")
    return float(value)


def positive(name: str, value, unit: str = "") -> float:
    """``value`` as a finite float > 0 (a tolerance, a density, a temperature, a learning rate), or UsageError
    naming the option; zero and negative values get the same message."""
    u = f" {unit}" if unit else ""
    if value is None or not math.isfinite(float(value)) or value <= 0:
        raise UsageError(f"{name} must be a finite number > 0{u}, got {value!r}")
    return float(value)


def fraction(name: str, value, closed: bool = False) -> float:
    """``value`` strictly between 0 and 1 (``closed``: 0 and 1 allowed)."""
    if value is None or not math.isfinite(float(value)) or not (
            (0 <= value <= 1) if closed else (0 < value < 1)):
        bounds = "in [0, 1]" if closed else "strictly between 0 and 1"
        raise UsageError(f"{name} must be a number {bounds}, got {value!r}")
    return float(value)


def check_device(device: str) -> str:
    """``device`` if torch can use it here: cpu, cuda, cuda:N or mps (UsageError otherwise)."""
    d = str(device).strip().lower()
    kind, _, index = d.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise UsageError(f"--device must be cpu, cuda, cuda:N or mps, got {device!r}")
    if kind == "cuda":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UsageError(f"--device {device}: torch sees no CUDA GPU on this machine "
                             f"(torch {torch.__version__}{', a CPU-only build' if '+cpu' in torch.__version__ else ''})")
        if index and int(index) >= n:
            raise UsageError(f"--device {device}: this machine has {n} CUDA GPU(s), numbered from 0")
    if kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {device}: the MPS backend is not available on this machine")
    return d


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: dict, inputs=(), overwrite: bool = False, resumable=()) -> None:
    """Refuse, before any work, outputs that cannot or must not be written.

    Parameters
    ----------
    outputs : dict option name → path (None entries ignored)
    inputs : paths the command reads; no output may be one of them
    overwrite : whether existing outputs may be replaced
    resumable : option names whose existing file is continued, not replaced (resume files)
    """
    given = {name: Path(p) for name, p in outputs.items() if p is not None}
    ins = [Path(p) for p in inputs if p is not None]
    seen = {}
    for name, path in given.items():
        for src in ins:
            if path.resolve() == src.resolve() or _same(path, src):
                raise OutputError(f"{name} {path} is also an input of this command; write to another file")
        key = path.resolve()
        if key in seen:
            raise OutputError(f"{name} and {seen[key]} both name {path}")
        seen[key] = name
        if path.is_dir():
            raise OutputError(f"{name} {path} is a folder; name a file inside it")
        parent = path.resolve().parent
        if not parent.is_dir():
            raise OutputError(f"{name} {path}: the folder {path.parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"{name} {path}: the folder {path.parent} is not writable")
        if path.exists() and not overwrite and name not in resumable:
            raise OutputError(f"{name} {path} exists; pass --overwrite to replace it")


def check_output_folder(name: str, folder, own=None) -> None:
    """A folder a command writes into and creates when absent (``calib loop -o``): refused (OutputError) when
    it is a file, when its parent folder does not exist (calib does not create a tree of folders) or when it
    or that parent is not writable. ``own(folder)``: whether an existing, non-empty folder is the command's
    own (resumed) rather than someone else's."""
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{name} {p} is a file; {name} takes a folder")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise OutputError(f"{name} {p}: the folder is not writable")
        if own is not None and any(p.iterdir()) and not own(p):
            raise OutputError(f"{name} {p} exists and is not this command's folder: pass a new folder (or the "
                              "command's own folder to resume it)")
        return
    parent = p.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"{name} {p}: the folder {p.parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{name} {p}: the folder {p.parent} is not writable")


def check_plot_folder(name: str, folder) -> None:
    """A folder calib writes into (plots, bench files): absent (created later) or a folder, not a file."""
    if folder is None:
        return
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{name} {p} is a file; {name} takes a folder")
    if not p.exists() and not p.resolve().parent.is_dir():
        raise OutputError(f"{name} {p}: the folder {p.parent} does not exist")
