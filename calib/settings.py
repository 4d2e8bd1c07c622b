"""Parameters declared once: a settings dataclass's fields carry their default, unit, help and constraint.

A field made with :func:`setting` holds what the library checks and what the CLI shows, so that a default
is typed in one place: the dataclass validates itself on construction (:func:`validate`, called from
``__post_init__``), and the CLI builds the option of a field from it (``calib.cli.app.option``) and reports a
bad value under the option's flag. Used by :class:`calib.uq.trust.TrustPolicy`,
:class:`calib.softening.decide.DecisionRules`, :class:`calib.softening.scale.SofteningSettings`,
:class:`calib.data.dft.GPAWSettings` and the settings of :mod:`calib.workflows.settings` (calibration, loop,
Hessian, fine-tuning, screening, EOS). A default instance (``LOOP_GPAW = GPAWSettings(kdensity=2.0)``) declares
another default of the same fields once: :func:`default` and the CLI read it like a class.

The constraints are the parameter checks of :mod:`calib.errors` (``positive``, ``fraction``, ...), so a
library call and a command reject the same values with the same words.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from calib import errors

_KEY = "calib"


@dataclass(frozen=True)
class Spec:
    """What a settings field declares besides its default: ``help`` (words), ``unit`` ("eV/Å", "" for none),
    ``check`` (a check of :mod:`calib.errors` taking (name, value), or None), ``flag`` (the CLI option, e.g.
    "--force-tol"), ``optional`` (None is allowed and leaves the setting out)."""

    help: str
    unit: str = ""
    check: Callable[..., Any] | None = None
    flag: str = ""
    optional: bool = False

    def describe(self) -> str:
        """The help text with its unit ("..., eV/Å")."""
        return f"{self.help}, {self.unit}" if self.unit else self.help


def setting(default, help: str, *, unit: str = "", check: Callable[..., Any] | None = None, flag: str = "",
            optional: bool = False):
    """A dataclass field with its :class:`Spec` in the field's metadata."""
    return dataclasses.field(default=default, metadata={_KEY: Spec(help, unit, check, flag, optional)})


def spec(cls, name: str) -> Spec:
    """The :class:`Spec` of field ``name`` of the settings dataclass ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata[_KEY]
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def default(cls, name: str):
    """The default of field ``name`` of ``cls`` (what the CLI option shows); of an instance, its value."""
    if not isinstance(cls, type):
        return getattr(cls, name)
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _check(f: dataclasses.Field, value, label: str) -> None:
    s = f.metadata.get(_KEY)
    if s is None or s.check is None or (s.optional and value is None):
        return
    if s.check in (errors.positive, errors.finite):
        s.check(label, value, unit=s.unit)
    else:
        s.check(label, value)


def validate(obj) -> None:
    """Check every field of ``obj`` that declares a check; the error (:class:`calib.errors.UsageError`, a
    ValueError) names the field ``Class.field``."""
    for f in dataclasses.fields(obj):
        _check(f, getattr(obj, f.name), f"{type(obj).__name__}.{f.name}")


def from_flags(cls, **values):
    """``cls(**values)``, checked first with errors that name the fields' CLI flags (for a command's options,
    before any model loads)."""
    for f in dataclasses.fields(cls):
        if f.name in values:
            s = f.metadata.get(_KEY)
            _check(f, values[f.name], s.flag if s is not None and s.flag else f.name)
    return cls(**values)


def open_fraction(name: str, value) -> float:
    """A number strictly between 0 and 1 (:func:`calib.errors.fraction`)."""
    return errors.fraction(name, value)


def closed_fraction(name: str, value) -> float:
    """A number in [0, 1] (:func:`calib.errors.fraction` with ``closed``)."""
    return errors.fraction(name, value, closed=True)


def non_negative(name: str, value) -> float:
    """A finite number ≥ 0 (:func:`calib.errors.finite` with ``minimum`` 0)."""
    return errors.finite(name, value, minimum=0.0)


def one_of(*choices: str) -> Callable[[str, Any], Any]:
    """A check that the value is one of ``choices`` (words)."""

    def check(name: str, value):
        if value not in choices:
            raise errors.UsageError(f"{name} must be {', '.join(map(str, choices[:-1]))} or {choices[-1]}, "
                                    f"got {value!r}")
        return value

    check.__name__ = f"one_of{choices}"
    return check


def folds(name: str, value) -> int:
    """A number of cross-fitting folds: 0 (in-sample) or a whole number ≥ 2."""
    if errors.non_negative_int(name, value) == 1:
        raise errors.UsageError(f"{name} must be 0 (in-sample) or ≥ 2, got 1")
    return int(value)
