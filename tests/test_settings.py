"""Parameters declared once (calib.settings): the CLI's defaults are the settings dataclasses', and a bad value
is refused by the library and the command with the same words."""

import dataclasses
import re

import pytest
import typer.main

from calib import settings
from calib.cli.main import app
from calib.errors import UsageError
from calib.softening.decide import DecisionRules, Thresholds
from calib.uq.trust import TrustPolicy
from calib.workflows.settings import CalibrationSettings, LoopSettings

SETTINGS = (TrustPolicy, DecisionRules, CalibrationSettings, LoopSettings)


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


#: the commands whose options each settings dataclass declares
COMMANDS = {TrustPolicy: ("predict", "screen", "neb", "decide"), DecisionRules: ("decide",),
            CalibrationSettings: ("calibrate",), LoopSettings: ("loop",)}


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
                p = params[s.flag]
                assert p.default == f.default, (name, s.flag, p.default, f.default)
                assert s.help in (p.help or ""), (name, s.flag)
                seen.add((cls.__name__, f.name))
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
