"""calib in the workflow managers materials scientists run: jobflow jobs, a flow, and atomate2's force-field makers.

Needs the ``atomate2`` extra (``pip install "calib[atomate2]"``: jobflow and atomate2).

* :data:`CALCULATOR_META` names :class:`calib.calculator.CalibratedCalculator` the way atomate2's
  ``ase_calculator`` decodes a calculator (monty's ``@module``/``@callable``), so any force-field maker runs with
  it::

      from atomate2.forcefields.jobs import ForceFieldRelaxMaker
      maker = ForceFieldRelaxMaker(force_field_name=CALCULATOR_META, calculator_kwargs={"calibration": "default"})

* :func:`calibrated_static` is a job: calib's prediction of structures with σ, intervals and the verdict, its
  output the JSON records of ``calib predict --json`` (units as there: eV, eV/Å, eV/atom per name);
* :func:`label_requests` is a job that writes the untrusted structures to an extxyz file to label;
* :func:`relax_and_judge` is the flow: atomate2's force-field relaxation with the model through calib's
  calculator, the calibrated static with the verdict on the relaxed structures, and the label requests.

Run it with ``jobflow.run_locally(flow, store=...)`` or any jobflow manager (jobflow-remote, FireWorks);
the outputs land in the job store like any atomate2 task.
"""

from __future__ import annotations

import os

from jobflow import Flow, job

#: atomate2's ``force_field_name`` (a monty-decodable dict) for calib's calibrated ASE calculator
CALCULATOR_META = {"@module": "calib.calculator", "@callable": "CalibratedCalculator"}


def _atoms(structures) -> list:
    from ase import Atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    out = []
    for k, s in enumerate(structures):
        a = s if isinstance(s, Atoms) else AseAtomsAdaptor.get_atoms(s)
        a.info.setdefault("name", f"structure {k} ({a.get_chemical_formula()})")
        out.append(a)
    return out


@job
def calibrated_static(structures: list, calibration: str | None = None, model: str | None = None,
                      policy: dict | None = None) -> list[dict]:
    """calib's prediction of ``structures`` (pymatgen Structures or ase Atoms): one record per structure with
    energy (eV), σ, intervals, ``force_error_bound`` (eV/Å), ``trusted`` and ``trust_reason``, as
    ``calib predict --json`` prints them. ``calibration``: an artifact path or None for calib's default;
    ``policy``: the fields of a :class:`calib.uq.trust.TrustPolicy`."""
    from calib.data.records import to_records
    from calib.predictor import CalibratedPredictor
    from calib.uq.trust import TrustPolicy

    atoms = _atoms(structures)
    predictor = CalibratedPredictor.from_file(calibration, model=model, trust=TrustPolicy(**(policy or {})))
    return to_records(predictor.predict(atoms, forces=True, force_mode="none", progress=False), atoms)


@job
def label_requests(records: list[dict], structures: list, path: str = "label_requests.extxyz") -> dict:
    """Write the structures whose record is not trusted to ``path`` (extxyz, relative to the job's folder),
    each with its ``trust_reason`` in ``info``. Output: the path, the indices and the reasons."""
    import ase.io

    atoms = _atoms(structures)
    bad = [k for k, r in enumerate(records) if not r.get("trusted", False)]
    for k in bad:
        atoms[k].info["trust_reason"] = records[k].get("trust_reason") or records[k].get("error", "")
    if bad:
        ase.io.write(path, [atoms[k] for k in bad], format="extxyz")
    return {"path": os.path.abspath(path) if bad else "", "indices": bad,
            "reasons": [atoms[k].info["trust_reason"] for k in bad]}


@job
def _collect(structures: list) -> list:
    return list(structures)


def relax_and_judge(structures: list, *, calibration: str | None = None, model: str | None = None,
                    relax_maker=None, request_path: str = "label_requests.extxyz") -> Flow:
    """The flow relax → calibrated static → label requests over ``structures`` (pymatgen Structures).

    ``relax_maker``: an atomate2 maker (default: ``ForceFieldRelaxMaker`` with :data:`CALCULATOR_META`, the
    model's own forces (``correction=False``), fixed cell, 200 steps). Outputs: the relaxations' task documents,
    the records of :func:`calibrated_static`, and :func:`label_requests`'s file of untrusted structures."""
    if relax_maker is None:
        from atomate2.forcefields.jobs import ForceFieldRelaxMaker

        relax_maker = ForceFieldRelaxMaker(
            force_field_name=CALCULATOR_META, relax_cell=False, steps=200,
            calculator_kwargs={"model": model or "chgnet", "calibration": calibration or "default",
                               "correction": False})
    relaxed = [relax_maker.make(s) for s in structures]
    for k, r in enumerate(relaxed):
        r.name = f"relax {k}"
    gathered = _collect([r.output.structure for r in relaxed])
    static = calibrated_static(gathered.output, calibration=calibration, model=model)
    requests = label_requests(static.output, gathered.output, path=request_path)
    return Flow([*relaxed, gathered, static, requests], output={"records": static.output,
                                                               "requests": requests.output}, name="calib relax and judge")


__all__ = ["CALCULATOR_META", "calibrated_static", "label_requests", "relax_and_judge"]
