"""Option groups that several commands share, declared once.

A command takes one parameter annotated with a group (``subset: Subset = GROUPED``, ``run: ModelRun =
GROUPED``, ``trust: Trust = GROUPED``, ``output: Output = GROUPED``) and is decorated with :func:`grouped`: typer
then sees the group's options (``--every --limit --shuffle --seed``; ``--model --batch-size --device``;
``--force-tol --energy-tol --trust-confidence``; ``--quiet --json``) in that parameter's place, and the command
receives them as one value. A command whose option differs from the group's (``calib hessian`` loads CHGNet by default, not
the artifact's model) passes its own as a keyword of :func:`grouped`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from typing import ClassVar, Optional

from calib.cli.app import (
    ArtModelOpt,
    BatchOpt,
    DeviceOpt,
    EnergyTolOpt,
    EveryOpt,
    ForceTolOpt,
    JsonOpt,
    LimitOpt,
    QuietOpt,
    SeedOpt,
    ShuffleOpt,
    TrustConfidenceOpt,
    common_options,
    subset_options,
)


@dataclass(frozen=True)
class Subset:
    """Which structures of the input a command takes: every N-th, at most ``limit``, shuffled with ``seed``."""

    every: int
    limit: Optional[int]
    shuffle: bool
    seed: int

    OPTIONS: ClassVar[dict] = {"every": EveryOpt, "limit": LimitOpt, "shuffle": ShuffleOpt, "seed": SeedOpt}

    def checked(self) -> dict:
        """The subset as keywords of ``take_subset``, checked (a UsageError names the flag) before any model
        loads."""
        return subset_options(self.every, self.limit, self.shuffle, self.seed)


@dataclass(frozen=True)
class ModelRun:
    """Which model runs, and how: ``model`` (a name or file; None: the artifact's), ``batch_size`` (structures
    per model call) and ``device``."""

    model: Optional[str]
    batch_size: int
    device: str

    OPTIONS: ClassVar[dict] = {"model": ArtModelOpt, "batch_size": BatchOpt, "device": DeviceOpt}

    def checked(self) -> str | None:
        """Check ``--batch-size``, ``--model`` and ``--device`` before anything loads; returns the normalised
        device."""
        return common_options(self.batch_size, self.device, model=self.model)


@dataclass(frozen=True)
class Trust:
    """The verdict's options (:class:`calib.uq.trust.TrustPolicy`): ``force_tol`` (eV/Å), ``energy_tol`` (eV/atom;
    None: not part of the verdict) and ``trust_confidence`` (the confidence of the force bound it reads)."""

    force_tol: float
    energy_tol: Optional[float]
    trust_confidence: float

    OPTIONS: ClassVar[dict] = {"force_tol": ForceTolOpt, "energy_tol": EnergyTolOpt,
                               "trust_confidence": TrustConfidenceOpt}

    def policy(self, **more):
        """The :class:`~calib.uq.trust.TrustPolicy` of these options and ``more`` of its fields, checked under their
        flags before any model loads."""
        from calib.settings import from_flags
        from calib.uq.trust import TrustPolicy

        return from_flags(TrustPolicy, force_tol=self.force_tol, energy_tol=self.energy_tol,
                          confidence=self.trust_confidence, **more)


@dataclass(frozen=True)
class Output:
    """How a command reports: ``quiet`` (no progress bars on stderr) and ``as_json`` (exactly one JSON document on
    stdout, errors too)."""

    quiet: bool
    as_json: bool

    OPTIONS: ClassVar[dict] = {"quiet": QuietOpt, "as_json": JsonOpt}

    @property
    def progress(self) -> bool:
        """Whether progress bars are shown (not ``quiet``)."""
        return not self.quiet


GROUPS = (Subset, ModelRun, Trust, Output)
#: the default of a command's group parameter in its source (:func:`grouped` puts the group's options there)
GROUPED = None


def grouped(**options):
    """Give typer the options of each group a command's parameters are annotated with, in that parameter's place
    (``options``: a typer option replacing the group's one of that name), and call the command with the group
    built from them."""

    def decorate(fn):
        hints = typing.get_type_hints(fn)
        params, groups = [], {}
        for p in inspect.signature(fn).parameters.values():
            cls = hints.get(p.name)
            if cls not in GROUPS:
                params.append(p.replace(annotation=hints.get(p.name, p.annotation)))
                continue
            types = typing.get_type_hints(cls)
            names = [f.name for f in dataclasses.fields(cls)]
            groups[p.name] = (cls, names)
            params += [inspect.Parameter(n, p.kind, default=options.get(n, cls.OPTIONS[n]), annotation=types[n])
                       for n in names]

        @functools.wraps(fn)
        def command(**kwargs):
            for name, (cls, names) in groups.items():
                kwargs[name] = cls(**{n: kwargs.pop(n) for n in names})
            return fn(**kwargs)

        command.__signature__ = inspect.signature(fn).replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
