"""Training data for the small distilled MACE model: CHGNet 0.3.0 labels on near-equilibrium structures.

Every crystal of the shipped equilibrium proxy (datasets/equilibrium-proxy, 2530 CHGNet-relaxed crystals,
72 elements) and three perturbed copies of it: rattled by 0.03 Å and 0.08 Å (Gaussian, per coordinate)
and isotropically strained by ±3 %. Labels are CHGNet 0.3.0's total energy (eV), forces (eV/Å) and stress
(eV/Å³, ASE sign convention), stored as REF_energy / REF_forces / REF_stress for mace's training entry
point. Near-equilibrium data only, as MACE-MP-0's MPtrj is mostly near equilibrium: the model trained on
it is soft away from equilibrium for the same reason.

Resumable: frames are appended in chunks to OUT and the number of input structures consumed is then
written to OUT.progress; a rerun skips those (structures CHGNet rejects are consumed but not written).

    OMP_NUM_THREADS=1 python datasets/models/mace-small/make_data.py --out train.extxyz
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def structures(seed: int = 0):
    from calib import datasets

    rng = np.random.default_rng(seed)
    for k, atoms in enumerate(datasets.load("equilibrium-proxy")):
        base = atoms.copy()
        base.info = {"name": atoms.info.get("name", f"proxy{k}"), "kind": "equilibrium"}
        yield base
        for amp in (0.03, 0.08):
            a = base.copy()
            a.positions += rng.normal(0, amp, a.positions.shape)
            a.info = {"name": f"{base.info['name']}-rattle{amp}", "kind": f"rattle{amp}"}
            yield a
        a = base.copy()
        a.set_cell(a.cell * (1 + rng.choice([-0.03, 0.03])), scale_atoms=True)
        a.info = {"name": f"{base.info['name']}-strain3", "kind": "strain3"}
        yield a


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="train.extxyz")
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args()
    import ase.io
    from tqdm import tqdm

    from calib.models.chgnet import CHGNetAdapter

    progress = args.out + ".progress"
    done = int(open(progress).read()) if os.path.exists(progress) else 0
    model = CHGNetAdapter()
    chunk, seen = [], 0
    bar = tqdm(total=4 * 2530, initial=done, unit="structure")

    def flush(chunk):  # ``seen``: input structures consumed up to the end of this chunk
        pred = model.predict(chunk, forces=True, stress=True, batch_size=16)
        keep = [chunk[i] for i in pred.indices]
        for k, a in enumerate(keep):
            sl = pred.atom_slices()[k]
            a.info["REF_energy"] = float(pred.energy[k])
            a.info["REF_stress"] = pred.stress[k].reshape(9)[[0, 4, 8, 5, 2, 1]]
            a.arrays["REF_forces"] = pred.forces[sl]
        ase.io.write(args.out, keep, append=True)
        with open(progress, "w") as fh:
            fh.write(str(seen))
        bar.update(len(chunk))

    for atoms in structures():
        seen += 1
        if seen <= done:
            continue
        chunk.append(atoms)
        if len(chunk) == args.chunk:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    bar.close()


if __name__ == "__main__":
    main()
