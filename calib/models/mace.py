"""MACE backend (mace-torch): a user's ``.model`` file (MACE-MP-0, a fine-tuned model) or a module.

MACE predicts a *total* energy. For ``ScaleShiftMACE`` (MACE-MP-0's class):

    E = Σ_a [ E0(Z_a) + s · (pair_a + Σ_i w_i · x_{i,a}) + t ]

with E0 the fixed atomic energies, s and t the scale and shift of the head, ``pair_a`` the optional ZBL
pair term, and ``w_i · x_{i,a}`` the final linear map of readout i: for the linear readouts (every
interaction but the last) x is the scalar part of the node features entering it, for the non-linear
readout of the last interaction x is the hidden activation entering its last linear layer. The last-layer
features are therefore

    f = Σ_a [x_{0,a}, x_{1,a}, ...]     (summed over atoms: energy_convention "total")

with readout weights s·[w_0, w_1, ...] and bias 0; everything else (Σ E0, N·t, s·Σ pair) is the fixed
offset. The features are captured by forward hooks on the final linear of every readout and the weights by
applying that linear to unit vectors, so nothing depends on e3nn's internal weight layout; a test rebuilds
the model's energy from features and weights to float tolerance.

``import mace`` must come before ``import e3nn`` (mace configures e3nn on import); this module imports
mace first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

from calib.models.base import BatchOutput, FeatureGraph, ModelAdapter, layer_calls, pool_atoms, wrapped

#: the format tag of the MACE files ``calib finetune`` writes (calib.workflows.finetune_mace), and the attribute
#: of the saved module that holds calib's provenance record (plain data): ``adapter.provenance`` reads it back
FINETUNED_FORMAT = "calib-finetuned-mace"
PROVENANCE_ATTRIBUTE = "calib_provenance"


def _import_mace() -> None:
    """Import mace (before e3nn) with its import-time notices kept off stdout (``--json`` owns stdout)."""
    import contextlib
    import io
    import logging

    from calib.models.loading import e3nn_constants_loadable

    # mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD for the whole process at import (e3nn's import needs it); calib
    # loads a user's model with weights_only=False explicitly and gives every other torch.load its default back
    with e3nn_constants_loadable(), contextlib.redirect_stdout(io.StringIO()):
        import mace  # noqa: F401
        import mace.data  # noqa: F401
        import mace.modules  # noqa: F401
        import mace.tools.torch_geometric  # noqa: F401
    logging.getLogger("mace").setLevel(logging.WARNING)


class MACEAdapter(ModelAdapter):
    """Adapter for a MACE model.

    Parameters
    ----------
    model : str, path or torch.nn.Module
        A ``.model`` file saved by mace (``torch.save`` of the module) or the module itself.
    device : "cpu", "cuda", ...
    dtype : "float64" (default, as calib's sums) or "float32"
    head : str or None — the head of a multi-head model (default: "Default", else the last head)
    name : str — shown in provenance ("mace" unless given)
    """

    energy_convention = "total"

    def __init__(self, model, *, device: str | torch.device = "cpu", dtype: str = "float64",
                 head: str | None = None, name: str = "mace", version: str = ""):
        _import_mace()

        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if not os.path.exists(path):
                raise FileNotFoundError(f"MACE model file not found: {path}")
            try:
                model = torch.load(path, map_location=device, weights_only=False)
            except Exception as exc:
                raise ValueError(f"{path}: not a MACE model file readable by torch.load: {exc}") from exc
            version = version or os.path.basename(path)
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "readouts"):
            raise TypeError("expected a MACE module (with .readouts) or a path to a .model file")
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self.dtype = torch.float64 if dtype == "float64" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name, self.version = name, version or type(model).__name__
        self.provenance = dict(getattr(model, PROVENANCE_ATTRIBUTE, None) or {})  # calib finetune's record
        self.heads = list(getattr(model, "heads", None) or ["Default"])
        if head is None:
            head = next((h for h in self.heads if h.lower() == "default"), self.heads[-1])
        if head not in self.heads:
            raise ValueError(f"head {head!r} not in the model's heads {self.heads}")
        self.head, self.head_index = head, self.heads.index(head)
        self.z_table = [int(z) for z in model.atomic_numbers]
        self.supported_elements = frozenset(self.z_table)
        self.cutoff = float(model.r_max)
        self._finals = [r.linear_2 if hasattr(r, "linear_2") else r.linear for r in self.model.readouts]
        self._columns, weights = [], []
        for lin in self._finals:
            cols, w = self._readout_weights(lin)
            self._columns.append(cols)
            weights.append(w)
        scale = getattr(getattr(self.model, "scale_shift", None), "scale", None)
        self._scale = 1.0 if scale is None else float(torch.atleast_1d(scale)[self.head_index])
        self._w = np.concatenate(weights) * self._scale
        self.n_features = int(self._w.size)
        self.feature_set = "last"

    def _readout_weights(self, lin) -> tuple[torch.Tensor, np.ndarray]:
        """(input columns that reach the energy, their weights for this head) of one final linear map."""
        n_in = int(lin.irreps_in.dim)
        with torch.no_grad():
            eye = torch.eye(n_in, dtype=self.dtype, device=self.device)
            zero = torch.zeros(1, n_in, dtype=self.dtype, device=self.device)
            out = lin(eye) - lin(zero)
        w = out[:, self.head_index] if out.ndim == 2 else out
        scalar = torch.zeros(n_in, dtype=torch.bool)
        start = 0
        for mul, ir in lin.irreps_in:
            if ir.l == 0 and ir.p == 1:
                scalar[start:start + mul] = True
            start += mul * ir.dim
        cols = torch.nonzero(scalar).reshape(-1).to(self.device)
        return cols, w[cols].detach().to("cpu", torch.float64).numpy()

    @property
    def readout(self) -> tuple[np.ndarray, float]:
        return self._w.copy(), 0.0

    # ------------------------------------------------------------------ internals
    def _batch(self, structures: Sequence[Atoms]) -> dict:
        from mace import data as mace_data
        from mace.tools import torch_geometric
        from mace.tools.utils import AtomicNumberTable

        table = AtomicNumberTable(self.z_table)
        keyspec = mace_data.KeySpecification(info_keys={}, arrays_keys={})
        graphs = []
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            for atoms in structures:
                config = mace_data.config_from_atoms(wrapped(atoms), key_specification=keyspec, head_name=self.head)
                graphs.append(mace_data.AtomicData.from_config(config, z_table=table, cutoff=self.cutoff,
                                                               heads=self.heads))
        finally:
            torch.set_default_dtype(previous)
        return torch_geometric.Batch.from_data_list(graphs).to(self.device).to_dict()

    def _run(self, data: dict, *, forces: bool, stress: bool):
        """Model outputs and the per-atom features (N, d), hooked from the readouts' final linears."""
        with layer_calls(*self._finals) as calls:
            out = self.model(data, training=False, compute_force=forces, compute_stress=stress)
        captured = [c[-1][0] if c else None for c in calls]  # each readout's last call
        if any(c is None for c in captured):
            raise RuntimeError("a MACE readout was not called; cannot take last-layer features")
        phi = torch.cat([c[:, cols] for c, cols in zip(captured, self._columns)], dim=1)
        return out, phi

    # ------------------------------------------------------------------ protocol
    def forward_batch(self, structures: Sequence[Atoms], *, forces: bool, stress: bool) -> BatchOutput:
        data = self._batch(structures)
        ctx = torch.enable_grad() if (forces or stress) else torch.no_grad()
        with ctx:
            out, phi = self._run(data, forces=forces, stress=stress)
        phi = phi.detach()
        feats, n_atoms = pool_atoms(phi, data["batch"], int(data["ptr"].numel() - 1), "total")
        energy = out["energy"].detach().reshape(len(structures), -1)[:, self.head_index].to(torch.float64)
        w = torch.as_tensor(self._w, dtype=torch.float64, device=energy.device)
        res = BatchOutput(features=feats, atom_features=phi, n_atoms=n_atoms, energy=energy,
                          energy_offset=energy - feats.to(torch.float64) @ w)
        if forces:
            res.forces = out["forces"].detach()
        if stress:
            res.stress = out["stress"].detach().to(torch.float64)  # eV/Å³, ASE sign convention
        return res

    def feature_graph(self, structures: Sequence[Atoms]) -> FeatureGraph:
        data = self._batch(structures)
        sizes = (data["ptr"][1:] - data["ptr"][:-1]).tolist()
        leaves = [p.detach().clone().requires_grad_(True) for p in torch.split(data["positions"], sizes)]
        with torch.enable_grad():
            data["positions"] = torch.cat(leaves)
            _, phi = self._run(data, forces=False, stress=False)
            feats, n_atoms = pool_atoms(phi, data["batch"], int(data["ptr"].numel() - 1), "total")
        return FeatureGraph(features=feats, positions=leaves, n_atoms=n_atoms)
