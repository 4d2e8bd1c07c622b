"""Parameters declared once (calib.settings): the CLI's defaults are the settings dataclasses', and a bad value
is refused by the library and the command with the same words."""

import dataclasses
import inspect
import re

import pytest
import typer.main

from calib import settings
from calib.cli.main import app
from calib.errors import UsageError
from calib.data.dft import GPAWSettings
from calib.softening.decide import DecisionRules, Thresholds
from calib.softening.scale import SofteningSettings
from calib.uq.trust import TrustPolicy
from calib.workflows.settings import (
    LOOP_GPAW,
    CalibrationSettings,
    EOSSettings,
    FinetuneSettings,
    HessianSettings,
    LoopSettings,
    ScreenSettings,
)

SETTINGS = (TrustPolicy, DecisionRules, CalibrationSettings, LoopSettings, SofteningSettings, HessianSettings,
            FinetuneSettings, ScreenSettings, EOSSettings, GPAWSettings)


def _commands():
    group = typer.main.get_command(app)

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, path + [name])
        else:
            yield " ".join(path), cmd

    yield from walk(group, [])


#: the commands whose options each settings dataclass declares (an instance: options whose defaults are its values)
COMMANDS = {TrustPolicy: ("predict", "screen", "neb", "decide"), DecisionRules: ("decide",),
            CalibrationSettings: ("calibrate",), LoopSettings: ("loop",), SofteningSettings: ("softening",),
            HessianSettings: ("hessian",), FinetuneSettings: ("finetune",), ScreenSettings: ("screen",),
            EOSSettings: ("eos",), GPAWSettings: ("label",), LOOP_GPAW: ("loop",)}


def test_every_cli_option_of_a_setting_has_the_dataclass_default_and_help():
    commands = dict(_commands())
    seen = set()
    for cls, names in COMMANDS.items():
        for name in names:
            params = {o: p for p in commands[name].params for o in getattr(p, "opts", [])}
            for f in dataclasses.fields(cls):
                s = settings.spec(cls, f.name)
                if not s.flag or (cls is TrustPolicy and f.name == "barrier_tol" and name != "neb"):
                    continue
                if cls is TrustPolicy and f.name == "force_tol" and name == "decide":
                    continue  # decide's --force-tol is DecisionRules.mae_tol_ev_per_a (checked below)
                if cls is LOOP_GPAW and f.name == "xc":
                    continue  # the loop labels with GPAW's PBE: no --xc
                p = params[s.flag]
                want = settings.default(cls, f.name)
                assert p.default == want, (name, s.flag, p.default, want)
                assert s.help in (p.help or ""), (name, s.flag)
                seen.add((type(cls).__name__ if not isinstance(cls, type) else cls.__name__, f.name))
    # every setting with a flag is some command's option
    assert seen == {(c.__name__, f.name) for c in SETTINGS for f in dataclasses.fields(c)
                    if settings.spec(c, f.name).flag}


@pytest.mark.parametrize("cls, field, bad, words", [
    (TrustPolicy, "force_tol", 0.0, "must be a finite number > 0 eV/Å"),
    (TrustPolicy, "confidence", 1.0, "strictly between 0 and 1"),
    (TrustPolicy, "barrier_tol", float("nan"), "must be a finite number > 0 eV"),
    (DecisionRules, "min_labels", 0, "whole number ≥ 1"),
    (DecisionRules, "max_untrusted_fraction", 1.5, "in [0, 1]"),
    (DecisionRules, "n_requests", -1, "whole number ≥ 0"),
    (CalibrationSettings, "target", "stress", "must be both, energy or forces"),
    (CalibrationSettings, "energy_folds", 1, "0 (in-sample) or ≥ 2"),
    (CalibrationSettings, "alpha", 0.0, "strictly between 0 and 1"),
    (LoopSettings, "md_steps", 3, "whole number ≥ 4"),
    (LoopSettings, "temperature", -5.0, "finite number > 0 K"),
    (SofteningSettings, "n_bootstrap", 0, "whole number ≥ 1"),
    (SofteningSettings, "confidence", 1.0, "strictly between 0 and 1"),
    (HessianSettings, "force_weight", -1.0, "must be ≥ 0.0"),
    (HessianSettings, "checkpoint_every", 0, "whole number ≥ 1"),
    (FinetuneSettings, "epochs", 0, "whole number ≥ 1"),
    (FinetuneSettings, "lr", 0.0, "finite number > 0"),
    (ScreenSettings, "batch_size", 0, "whole number ≥ 1"),
    (GPAWSettings, "cutoff", 10.0, "must be ≥ 50.0 eV"),
    (GPAWSettings, "kdensity", 0.0, "finite number > 0 Å⁻¹"),
])
def test_library_and_flags_refuse_the_same_values(cls, field, bad, words):
    with pytest.raises(UsageError, match=rf"^{re.escape(cls.__name__ + '.' + field)} .*{re.escape(words)}"):
        cls(**{field: bad})
    flag = settings.spec(cls, field).flag
    with pytest.raises(UsageError, match=rf"^{re.escape(flag)} .*{re.escape(words)}"):
        settings.from_flags(cls, **{field: bad})
    cls(**{field: None}) if settings.spec(cls, field).optional else None  # None leaves an optional check out


def test_thresholds_is_a_deprecated_alias_with_the_old_names():
    with pytest.warns(DeprecationWarning, match="DecisionRules"):
        r = Thresholds(force_tol=0.2, confidence=0.9, max_untrusted=0.3, n_requests=1)
    assert r == DecisionRules(mae_tol_ev_per_a=0.2, ci_level=0.9, max_untrusted_fraction=0.3, n_requests=1)


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


def test_library_defaults_are_the_declared_ones():
    """The keyword defaults of the workflows and of GPAWFactory are read from the settings, not typed again."""
    from calib.data.labelers import GPAWFactory
    from calib.softening.scale import fit_softening, fit_softening_by_chemsys
    from calib.workflows.accumulate import accumulate_hessian
    from calib.workflows.decisions import decide
    from calib.workflows.eos import run_eos
    from calib.workflows.finetune import finetune
    from calib.workflows.hessian import build_hessian
    from calib.workflows.screen import screen
    from calib.workflows.softening import measure_softening

    soft = SofteningSettings()
    for fn in (fit_softening, fit_softening_by_chemsys, measure_softening):
        d = _defaults(fn)
        assert (d["n_bootstrap"], d["confidence"]) == (soft.n_bootstrap, soft.confidence), fn.__name__
    assert _defaults(decide)["n_bootstrap"] == soft.n_bootstrap
    assert DecisionRules().ci_level == soft.confidence
    for fn in (build_hessian, accumulate_hessian):
        d = _defaults(fn)
        assert (d["checkpoint_every"], d["force_weight"]) == (10, 0.0) == (
            HessianSettings().checkpoint_every, HessianSettings().force_weight), fn.__name__
    ft, d = FinetuneSettings(), _defaults(finetune)
    assert {k: d[k] for k in ("epochs", "replay", "lr", "seed", "batch_size")} == dataclasses.asdict(ft)
    loop = LoopSettings()
    assert (loop.epochs, loop.replay, loop.lr) == (ft.epochs, ft.replay, ft.lr)
    assert _defaults(screen)["batch_size"] == ScreenSettings().batch_size
    assert _defaults(run_eos)["batch_size"] == EOSSettings().batch_size
    g = GPAWFactory()
    assert (g.cutoff, g.kdensity, g.xc) == (450.0, 3.0, "PBE") == dataclasses.astuple(GPAWSettings())
    assert (LOOP_GPAW.cutoff, LOOP_GPAW.kdensity) == (450.0, 2.0)  # the shipped data's k-point density
