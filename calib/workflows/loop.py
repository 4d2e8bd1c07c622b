"""The periodic fine-tuning loop of Wong & Yang: sample where the *current* model goes, label, fine-tune, repeat.

Each round ``r`` works in ``DIR/round-r/`` and every step writes its own file, so a killed loop resumes at the
first step whose output is missing:

1. ``md.extxyz``: Langevin MD with the current model from the start structure(s) (``temperature`` K,
   ``md_steps`` of 1 fs, a frame every ``md_steps // (4 frames)`` steps);
2. ``selected.extxyz``: ``frames`` of them, the least trusted first and spread in feature space
   (farthest-point ranking on the pooled features, weighted by the trust verdict's score);
3. ``labels.extxyz``: reference labels (GPAW by default, :func:`calib.data.labelers.label`, resumable);
4. ``model.pt``: the base model fine-tuned on every label so far plus replay (:mod:`calib.workflows.finetune`);
5. ``calibration.nc``: a calibration of the new model (H over a proxy sample and the labels; calibrated on the
   labels and a sample of the shipped GPAW labels);
6. the decision (:func:`calib.workflows.decisions.decide`) for the start's chemical system, with the round's
   MD frames as targets. The loop stops at "accept" or "scale", or after ``rounds``.

``report.json`` records the run it belongs to (``run``: a SHA-256 of the start structures, every setting but
``rounds``, the labeller's settings, the base model and the SHA-256 of the first calibration): a loop is
resumed only with the same start and settings (:func:`check_resume`; more ``rounds`` may be asked for), so
that every round of one report was labelled with the same DFT settings. It also holds, per round, the current model's force MAE and softening scale on the round's fresh labels
*before* it was trained on them (a held-out error: the model never saw these frames), the decision and its
reasons, and the files; ``report.png`` plots MAE and s per round.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms

from calib.data.ncio import replace_atomically
from calib.data.structures import chemsys
from calib.workflows.settings import LOOP_GPAW, LoopSettings  # noqa: F401 - LoopSettings: re-exported

if TYPE_CHECKING:
    from calib.uq.trust import TrustPolicy


def _labeller_record(labeller) -> dict:
    """The settings of a labeller that change a number: a dataclass factory's fields (GPAWFactory), else its
    type and repr."""
    import dataclasses

    if dataclasses.is_dataclass(labeller) and not isinstance(labeller, type):
        return {"type": type(labeller).__name__, **json.loads(json.dumps(dataclasses.asdict(labeller),
                                                                         default=str))}
    return {"type": type(labeller).__name__, "repr": repr(labeller)}


def run_record(start: Sequence[Atoms], settings: LoopSettings, labeller, model: str, calibration,
               policy=None) -> dict:
    """What identifies one loop (stored as ``report.json["run"]``): the start structures (SHA-256 over atoms,
    positions, cells and names), every setting but ``rounds``, the labeller's settings, the base model (its
    name or file), the SHA-256 of the calibration of the first selection (None: none) and, when one is given,
    the trust policy (:class:`calib.uq.trust.TrustPolicy`) of the selection and the decision."""
    import dataclasses
    import hashlib

    from calib.data.structures import structures_fingerprint
    from calib.workflows.screen import file_sha256

    start = list(start)
    names = "\0".join(str(a.info.get("name", "")) for a in start)
    record = {"start_sha256": hashlib.sha256((structures_fingerprint(start) + names).encode()).hexdigest(),
              "n_start": len(start),
              "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "rounds"},
              "labeller": _labeller_record(labeller), "model": str(model),
              "calibration_sha256": file_sha256(calibration) if calibration else None}
    if policy is not None:
        record["policy"] = policy.as_dict()
    return record


def base_model_name(model) -> str:
    """The name a loop records for its base model, the same before and after the model loads: a registered
    name as given, a model file by its absolute path, an adapter by the name it was loaded by (else its name
    and version)."""
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        return os.path.abspath(name) if os.path.isfile(name) else name
    spec = getattr(model, "spec", None)
    return spec.name if spec is not None else f"{model.name} {model.version}"


def loop_calibration(model, calibration=None) -> str | None:
    """The artifact the first round selects with: ``calibration``, else calib's default for the base model
    ``model`` (a name, a file or an adapter; None when calib ships none for it)."""
    from calib.data.datasets import default_calibration

    if calibration:
        return os.fspath(calibration)
    if isinstance(model, (str, os.PathLike)) or getattr(model, "spec", None) is not None:
        return default_calibration(base_model_name(model), committee=None)  # the rounds recalibrate without one
    return None


def check_run(out_dir, start: Sequence[Atoms], settings: LoopSettings, labeller, model, calibration=None,
              policy=None) -> dict:
    """The record of the loop :func:`run_loop` runs with these arguments (:func:`run_record`), refused by
    :func:`check_resume` when ``out_dir`` holds a loop of another start or other settings. ``model`` may be a
    name or a file, so that a command checks a resumed loop before GPAW or a model loads."""
    record = run_record(start, settings, labeller, base_model_name(model), loop_calibration(model, calibration),
                        policy)
    check_resume(out_dir, record)
    return record


def check_resume(out_dir, record: dict) -> None:
    """Refuse (:class:`calib.errors.InputError`) to resume the loop in ``out_dir`` with another start or other
    settings than the ones its ``report.json`` records; nothing to check for a new folder."""
    from calib.errors import InputError

    path = os.path.join(os.fspath(out_dir), "report.json")
    if not os.path.exists(path):
        rounds = [d for d in os.listdir(out_dir) if d.startswith("round-")] if os.path.isdir(out_dir) else []
        if rounds:
            raise InputError(f"{out_dir} holds loop rounds but no report.json: it cannot be told which start and "
                             "settings they were made with; write to a new folder")
        return
    with open(path) as fh:
        stored = json.load(fh).get("run")
    if stored is None:
        raise InputError(f"{path} records no start or settings (written before calib 0.6): resuming it cannot be "
                         "checked; write to a new folder")
    diff = []
    if stored.get("start_sha256") != record["start_sha256"]:
        diff.append("the start structures")
    for key in ("settings", "labeller"):
        a, b = stored.get(key, {}), record[key]
        diff += [f"{k} ({a.get(k)!r} recorded, {b.get(k)!r} now)" for k in sorted(set(a) | set(b))
                 if a.get(k) != b.get(k)]
    for key, what in (("model", "the base model"), ("calibration_sha256", "the calibration"),
                      ("policy", "the trust policy")):
        if stored.get(key) != record.get(key):
            diff.append(what)
    if diff:
        raise InputError(f"the loop in {out_dir} was started with other inputs or settings: {'; '.join(diff)} "
                         "differ; rerun with the recorded ones to resume it, or write to a new folder")


class Stopped(RuntimeError):
    """Raised by :func:`run_loop` after the step named in ``stop_after`` (tests, time limits)."""


def _md(model, start: Sequence[Atoms], settings: LoopSettings, seed: int) -> list[Atoms]:
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from calib.calculator import CalibratedCalculator
    from calib.predictor import CalibratedPredictor

    rng = np.random.default_rng(seed)
    predictor = CalibratedPredictor(model)
    frames, every = [], max(1, settings.md_steps // 4)
    for k, s in enumerate(start):
        atoms = s.copy()
        atoms.calc = CalibratedCalculator(predictor=predictor, uncertainties=False, correction=False)
        MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature, rng=rng)
        Stationary(atoms)
        dyn = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=settings.temperature, friction=0.02, rng=rng,
                       logfile=None)
        for step in range(every, settings.md_steps + 1, every):
            dyn.run(every)
            frame = Atoms(atoms.numbers, positions=atoms.get_positions(), cell=atoms.cell[:], pbc=True)
            frame.info.update(name=f"{s.info.get('name', s.get_chemical_formula())}-r{seed}-s{k}-md{step}",
                              md_step=step, temperature_K=settings.temperature)
            frames.append(frame)
    return frames


def _select(model, artifact, frames: list[Atoms], n: int, policy=None) -> list[Atoms]:
    """``n`` frames: the least trusted first (the verdict's score under ``policy``, a TrustPolicy or None for the
    default, or the model's largest |F| without a calibration), spread by farthest-point ranking on the pooled
    features."""
    from calib.predictor import CalibratedPredictor
    from calib.softening.decide import farthest_point_ranking

    ds = CalibratedPredictor(model, artifact, trust=policy).predict(frames, forces=True, force_mode="none",
                                                                    descriptors=True, progress=False)
    u = ds["trust_score"].values if "trust_score" in ds else ds["max_force"].values
    picked = farthest_point_ranking(ds["features"].values, np.nan_to_num(u) + 1e-12, n)
    return [frames[i] for i in picked]


def _fresh_errors(model, labels: Sequence[Atoms]) -> dict:
    """The model's force MAE (eV/Å) and softening scale on labels it was not trained on."""
    from calib.data.structures import get_forces
    from calib.softening.scale import fit_softening

    pred = model.predict(list(labels), forces=True)
    f = [pred.forces_of(k) for k in range(len(pred))]
    g = [get_forces(labels[int(i)]) for i in pred.indices]
    r = fit_softening(f, g, n_bootstrap=200)
    return {"force_mae": r.mae, "softening_scale": r.softening_scale, "softening_ci": r.softening_ci,
            "n_labels": len(f)}


def shipped_sample(n: int, rng: np.random.Generator, exclude: Sequence[str] = ()) -> list[Atoms]:
    """About ``n`` shipped GPAW labels (high-energy states and near-equilibrium structures) for a recalibration,
    drawn as whole chemical systems in a random order until ``n`` structures are reached, leaving out the chemical
    systems ``exclude`` (canonical spellings, :func:`calib.data.structures.chemsys`). Chemistries with several
    structures are what the quantile of a calibrated chemistry's own bound is taken over (calibrate's
    ``chemistry_scale``); single structures of many chemistries never give it."""
    from calib import datasets

    shipped = datasets.load("high-energy-states") + datasets.load("near-equilibrium")
    skip = set(exclude)
    by_chem: dict[str, list[Atoms]] = {}
    for a in shipped:
        c = chemsys(a)
        if c not in skip:
            by_chem.setdefault(c, []).append(a)
    out: list[Atoms] = []
    for c in rng.permutation(sorted(by_chem)):
        if len(out) >= n:
            break
        out.extend(by_chem[str(c)])
    return out


def _recalibrate(model, labels: list[Atoms], settings: LoopSettings, out: str) -> None:
    """A calibration of ``model``: H over a proxy sample and the labels, calibrated on the labels and a sample of
    the shipped GPAW labels (both regimes)."""
    from calib import datasets
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    rng = np.random.default_rng(settings.seed)
    proxy = datasets.load("equilibrium-proxy")
    sample = [proxy[int(i)] for i in rng.choice(len(proxy), min(settings.proxy_sample, len(proxy)), replace=False)]
    hess, _ = build_hessian(model, sample + list(labels), progress=False)
    extra = shipped_sample(settings.shipped_sample, rng, exclude=[chemsys(a) for a in labels])
    # the labels are the tuned model's training data: their errors are in-sample, so no chemistry gets a scale of
    # its own from them (calibrate's chemistry_scale)
    calibrate(hess, model, list(labels) + extra, chemistry_scale=False, progress=False).artifact.save(out)


def run_loop(start: Sequence[Atoms], out_dir, *, model="chgnet", calibration=None, settings: LoopSettings | None = None,
             labeller=None, progress: bool = True, stop_after: str | None = None, log=None,
             policy: TrustPolicy | None = None) -> dict:
    """Run (or resume) the loop in ``out_dir``; returns the report (also ``out_dir/report.json``).

    ``model``: the base model (a name or an adapter; CHGNet: chgnet's Trainer fine-tunes it); ``calibration``:
    an artifact of the base model for the first round's selection (None: calib's default for CHGNet 0.3.0);
    ``labeller``: an ASE calculator or factory (default :class:`calib.data.labelers.GPAWFactory` with the
    shipped data's settings); ``policy``: the trust verdict's policy of the selection and the decision (None: the
    default :class:`~calib.uq.trust.TrustPolicy`; recorded with the run when given)."""
    from calib.artifact import Artifact
    from calib.data.labelers import GPAWFactory
    from calib.models import load_model

    settings = settings or LoopSettings()
    out_dir = os.fspath(out_dir)
    labeller = labeller or GPAWFactory(cutoff=LOOP_GPAW.cutoff, kdensity=LOOP_GPAW.kdensity, spinpol=False)
    start = list(start)
    if not start:
        raise ValueError("the loop needs at least one start structure")
    base = load_model(model)
    cal_path = loop_calibration(base, calibration)
    record = check_run(out_dir, start, settings, labeller, base, cal_path, policy)  # before anything is written
    os.makedirs(out_dir, exist_ok=True)
    run = _Run(out_dir, start, settings, labeller, base, _report(out_dir, start, record),
               Artifact.load(cal_path) if cal_path else None, say=log or (lambda msg: None), progress=progress,
               stop_after=stop_after, policy=policy)
    run.save()  # the run's record first: a loop killed in its first round is still known by its start and settings
    for r in range(settings.rounds):
        if run.round(r) in ("accept", "scale"):
            break
    return run.finish()


#: the file of each step of a round, in the round's folder
ROUND_FILES = (("md", "md.extxyz"), ("selected", "selected.extxyz"), ("labels", "labels.extxyz"),
               ("model", "model.pt"), ("calibration", "calibration.nc"))


def _report(out_dir: str, start: Sequence[Atoms], record: dict) -> dict:
    """The report of the loop in ``out_dir`` (resumed), else a new one for this start and run record."""
    path = os.path.join(out_dir, "report.json")
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    return {"chemsys": chemsys(start[0]), "run": record, "rounds": []}  # an element set: any order of the tag


@dataclass
class _Run:
    """One loop between its steps: the current model and calibration, every label so far, and the report.
    Each step is skipped when its file exists, so a killed loop resumes at its first missing file."""

    out_dir: str
    start: list
    settings: LoopSettings
    labeller: object
    base: object
    report: dict
    artifact: object
    say: Callable
    progress: bool
    stop_after: str | None
    policy: TrustPolicy | None = None
    current: object = None
    labels: list = field(default_factory=list)

    def __post_init__(self):
        if self.current is None:
            self.current = self.base

    def save(self) -> None:
        """``report.json``, whole or not at all."""
        def write(tmp):
            with open(tmp, "w") as fh:
                json.dump(self.report, fh, indent=1, default=float)

        replace_atomically(os.path.join(self.out_dir, "report.json"), write)

    def stop(self, step: str) -> None:
        """Save and raise :class:`Stopped` when ``stop_after`` names this step."""
        if self.stop_after == step:
            self.save()
            raise Stopped(f"stopped after {step}")

    def round(self, r: int) -> str:
        """Round ``r`` (MD, selection, labels, fine-tuning, calibration, decision); returns the decision."""
        rd = os.path.join(self.out_dir, f"round-{r}")
        os.makedirs(rd, exist_ok=True)
        rounds = self.report["rounds"]
        entry = rounds[r] if r < len(rounds) else {"round": r}
        if r == len(rounds):
            rounds.append(entry)
        t0 = time.perf_counter()
        paths = {k: os.path.join(rd, f) for k, f in ROUND_FILES}
        self._sample(r, paths)
        self._label(r, paths, entry)
        self._train(r, paths, entry)
        mine = self._decide(paths)
        entry.update(decision=mine.decision, reasons=mine.reasons, n_labels=len(self.labels), files=paths,
                     seconds=round(entry.get("seconds", 0.0) + time.perf_counter() - t0, 1))
        self.save()
        self.say(f"round {r}: {mine.decision} ({'; '.join(mine.reasons)})")
        return mine.decision

    def _sample(self, r: int, paths: dict) -> None:
        """MD with the current model from the start structures, and the frames selected from it."""
        from calib.data.readers import read_structures

        if not os.path.exists(paths["md"]):
            self.say(f"round {r}: MD at {self.settings.temperature:g} K with {self.current.name} "
                     f"{os.path.basename(self.current.version)}")
            _write(paths["md"], _md(self.current, self.start, self.settings, seed=self.settings.seed + r))
        self.stop("md")
        if not os.path.exists(paths["selected"]):
            _write(paths["selected"], _select(self.current, self.artifact, read_structures(paths["md"]),
                                              self.settings.frames, self.policy))
        self.stop("select")

    def _label(self, r: int, paths: dict, entry: dict) -> None:
        """Reference labels of the selected frames (resumable), and the current model's errors on them before
        it is trained on them."""
        from calib.data.labelers import label
        from calib.data.readers import read_structures

        selected = read_structures(paths["selected"])
        self.say(f"round {r}: labelling {len(selected)} frame(s)")
        rep = label(selected, paths["labels"], self.labeller, progress=self.progress)
        entry["label_failures"] = len(rep.failures)
        self.stop("label")
        fresh = read_structures(paths["labels"])
        self.labels += fresh
        if "before" not in entry:  # the current model on frames it never saw
            entry["before"] = _fresh_errors(self.current, fresh)

    def _train(self, r: int, paths: dict, entry: dict) -> None:
        """The base model fine-tuned on every label so far, and a calibration of it: the new current ones."""
        from calib.artifact import Artifact
        from calib.models import load_model
        from calib.workflows.finetune import finetune

        s = self.settings
        if not os.path.exists(paths["model"]):
            self.say(f"round {r}: fine-tuning on {len(self.labels)} label(s) + {s.replay} replay")
            res = finetune(self.base, self.labels, paths["model"], epochs=s.epochs, replay=s.replay, lr=s.lr,
                           seed=s.seed, progress=False)
            entry["finetune"] = {"before": res.before, "after": res.after}
        self.current = load_model(paths["model"])
        self.stop("finetune")
        if not os.path.exists(paths["calibration"]):
            self.say(f"round {r}: recalibrating the fine-tuned model")
            _recalibrate(self.current, self.labels, s, paths["calibration"])
        self.artifact = Artifact.load(paths["calibration"], model=self.current)
        self.stop("calibrate")

    def _decide(self, paths: dict):
        """The decision for the start's chemical system, with the round's MD frames as targets."""
        from calib.data.readers import read_structures
        from calib.workflows.decisions import decide

        decisions, _ = decide(self.artifact, self.current, self.labels, read_structures(paths["md"]), progress=False,
                              policy=self.policy)
        chem = chemsys(self.start[0])
        return next((d for d in decisions if d.chemsys == chem), decisions[0])

    def finish(self) -> dict:
        """The report, naming the last round's model and calibration, saved and plotted."""
        self.report["final_model"] = self.report["rounds"][-1]["files"]["model"]
        self.report["final_calibration"] = self.report["rounds"][-1]["files"]["calibration"]
        self.save()
        _plot(self.report, os.path.join(self.out_dir, "report.png"))
        return self.report


def _write(path: str, structs: list[Atoms]) -> None:
    import ase.io

    replace_atomically(path, lambda tmp: ase.io.write(tmp, structs, format="extxyz"))


def _plot(report: dict, path: str) -> None:
    """Force MAE and softening scale of the current model on each round's fresh labels."""
    from calib.data.figures import pyplot, save

    plt = pyplot()

    rounds = [e for e in report["rounds"] if "before" in e]
    if not rounds:
        return
    x = [e["round"] for e in rounds]
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    ax.plot(x, [e["before"]["force_mae"] for e in rounds], "o-", color="tab:blue", label="force MAE (eV/Å)")
    ax.set_xlabel("round (model before training on the round's labels)")
    ax.set_ylabel("force MAE on fresh labels (eV/Å)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(x, [e["before"]["softening_scale"] for e in rounds], "s--", color="tab:orange", label="s")
    ax2.axhline(1.0, color="tab:orange", lw=0.6, ls=":")
    ax2.set_ylabel("softening scale s", color="tab:orange")
    ax.set_title(f"{report['chemsys']}: calib loop")
    save(fig, path)
