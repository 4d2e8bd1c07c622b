"""CHGNet backend (default model: CHGNet 0.3.0, whose weights ship inside the chgnet wheel).

CHGNet predicts energy per atom. Its readout is an MLP applied per atom,
``model.mlp``, ending in ``Linear(64, 1)``; the per-atom outputs are averaged
and a fixed composition reference (``AtomRef``) is added:

    E / N = w · mean_a(φ_a) + b + AtomRef(composition) / N

The last-layer features φ_a are the input of that final Linear, captured with
a forward hook. Units are converted here, once: CHGNet's stress (GPa) becomes
eV/Å³ in ASE's sign convention, energies become total eV.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms, units

from calib.models.base import BatchOutput, FeatureGraph, ModelAdapter, layer_calls, linear_readout, pool_atoms, wrapped

# chgnet's BatchedGraph builds its volume tensor from grad-tracking scalars; harmless, but noisy
warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")


def _quiet():
    """CHGNet prints on load; keep stdout clean for --json pipelines."""
    return contextlib.redirect_stdout(io.StringIO())


#: the ``calib["format"]`` of a fine-tuned CHGNet file (calib.workflows.finetune)
FINETUNED_FORMAT = "calib-finetuned-chgnet"


def chgnet_from_state(state: dict):
    """(CHGNet, calib provenance or {}) of a CHGNet file's contents (``{"model": {"state_dict", "model_args"}}``,
    as ``CHGNet.from_file`` reads; calib's fine-tuned files add ``"calib"``)."""
    from chgnet.model import CHGNet

    with _quiet():
        model = CHGNet.from_dict(state["model"])
    return model, dict(state.get("calib") or {})


def read_chgnet_file(path: str):
    """(CHGNet, calib provenance or {}) of a saved CHGNet file, or None when ``path`` is not one. Read with
    ``torch.load(weights_only=True)``: tensors and plain data only, no code runs."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file of plain data: the caller tries other formats
        return None
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict) and "model_args" in state["model"]):
        return None
    return chgnet_from_state(state)


class CHGNetAdapter(ModelAdapter):
    """Adapter for a CHGNet model.

    Parameters
    ----------
    model : chgnet.model.CHGNet, optional
        A loaded model. Default: ``CHGNet.load(model_name=version)``.
    version : str
        Pretrained version to load when ``model`` is None ("0.3.0").
    device : str
        "cpu" or "cuda" (or a torch.device).
    feature_set : "last" | "last2"
        "last" (default): the 64 inputs φ_a of the final Linear, i.e. the
        Jacobian of E/N with respect to the readout weights w.
        "last2": the Gauss–Newton features of the last *two* linear layers:
        [φ_a (64), ∂(E/N)/∂b₃ (64), ∂(E/N)/∂W₃ (64×64)] = 4224 per atom, with
        ∂/∂b₃ⱼ = wⱼ silu'(zⱼ) and ∂/∂W₃ⱼₖ = wⱼ silu'(zⱼ) hₖ for the penultimate
        layer z = W₃h + b₃. The readout weight is w padded with zeros, so
        E/N = w·f + b + offset still holds. Meant for energy σ; force σ would
        need 4224 backward passes per batch.
    """

    name = "chgnet"
    energy_convention = "per_atom"

    def __init__(self, model=None, *, version: str = "0.3.0", device: str | torch.device = "cpu",
                 feature_set: str = "last"):
        from chgnet.model import CHGNet

        if model is None:
            with _quiet():
                model = CHGNet.load(model_name=version, use_device=str(device), verbose=False)
        self.model = model.to(device).eval()
        self.version = str(model.version or version)
        self._last = self.model.mlp.layers[-1]
        if not isinstance(self._last, torch.nn.Linear) or self._last.out_features != 1:
            raise TypeError("CHGNet readout does not end in Linear(d, 1); cannot take last-layer features")
        if not self.model.mlp_first or not self.model.is_intensive:
            raise TypeError("calib supports CHGNet with mlp_first=True and is_intensive=True (as 0.3.0)")
        if feature_set not in ("last", "last2"):
            raise ValueError(f"feature_set must be 'last' or 'last2', got {feature_set!r}")
        self.feature_set = feature_set
        d = int(self._last.in_features)
        if feature_set == "last2":
            self._pen = self.model.mlp.layers[-4]
            if not isinstance(self._pen, torch.nn.Linear) or not isinstance(self.model.mlp.layers[-3], torch.nn.SiLU):
                raise TypeError("feature_set='last2' needs the readout MLP to end in Linear, SiLU, Dropout, Linear")
            d = d + self._pen.out_features + self._pen.out_features * self._pen.in_features
        self.n_features = d
        self._descriptor_dims = int(self._last.in_features)  # φ_a; last2 appends Gauss–Newton features
        self.cutoff = float(self.model.graph_converter.atom_graph_cutoff)
        n_elements = int(self.model.atom_embedding.embedding.num_embeddings)
        self.supported_elements = frozenset(range(1, n_elements + 1))

    @property
    def readout(self) -> tuple[np.ndarray, float]:
        w, b = linear_readout(self._last)
        return np.concatenate([w, np.zeros(self.n_features - w.size)]), b

    # ------------------------------------------------------------------ internals
    def _graphs(self, structures: Sequence[Atoms]):
        from pymatgen.io.ase import AseAtomsAdaptor

        conv = self.model.graph_converter
        dev = self.device
        graphs = []
        for atoms in structures:
            struct = AseAtomsAdaptor.get_structure(wrapped(atoms))  # the neighbour search's cost is bounded
            with _quiet():
                graphs.append(conv(struct).to(dev))
        return graphs

    def _run(self, structures, *, forces: bool, stress: bool, strains: bool = False):
        """Forward pass; returns (prediction dict, per-atom φ, batched graph, composition energy).
        ``strains``: attach the strain tensors (for a stress taken afterwards) without CHGNet's own."""
        from chgnet.model.model import BatchedGraph

        graphs = self._graphs(structures)
        hooked = (self._last, self._pen) if self.feature_set == "last2" else (self._last,)
        with layer_calls(*hooked, once=True) as calls:
            comp = self.model.composition_model(graphs) if self.model.composition_model is not None else 0.0
            bg = BatchedGraph.from_graphs(
                graphs,
                bond_basis_expansion=self.model.bond_basis_expansion,
                angle_basis_expansion=self.model.angle_basis_expansion,
                compute_stress=stress or strains,
            )
            pred = self.model._compute(bg, compute_force=forces, compute_stress=stress)
        phi, _ = calls[0][0]  # the readout's one call: (its input φ_a, its output)
        if self.feature_set == "last2":
            h, z = calls[1][0]
            sig = torch.sigmoid(z)
            g = self._last.weight.reshape(1, -1) * sig * (1 + z * (1 - sig))  # w ⊙ silu'(z), (N, 64)
            phi = torch.cat([phi, g, (g.unsqueeze(2) * h.unsqueeze(1)).reshape(len(h), -1)], dim=1)
        if not torch.is_tensor(comp):
            comp = torch.zeros_like(pred["e"])
        return pred, phi, bg, comp

    # ------------------------------------------------------------------ protocol
    def forward_batch(self, structures: Sequence[Atoms], *, forces: bool, stress: bool) -> BatchOutput:
        # Forces and stress are taken here by one first-order autograd.grad: CHGNet's own _compute keeps a
        # double-backward graph (create_graph=True, for training), measured at ~200 MB per 10-atom structure
        # in the batch; this path frees the graph after the one backward pass (docs/cli.md, memory).
        ctx = torch.enable_grad() if (forces or stress) else torch.no_grad()
        with ctx:
            pred, phi, bg, comp = self._run(structures, forces=False, stress=False, strains=stress)
            feats, n_atoms = pool_atoms(phi.detach(), bg.atom_owners, len(structures), self.energy_convention)
            pos = list(bg.atom_positions) if forces else []
            strains = list(bg.strains) if stress else []
            if pos or strains:
                total = (pred["e"] * n_atoms.to(pred["e"].dtype)).sum()  # CHGNet's e is per atom
                grads = torch.autograd.grad(total, pos + strains)
                if forces:
                    pred["f"] = [-g for g in grads[: len(pos)]]
                if stress:  # as CHGNet: dE/dε / V in GPa
                    pred["s"] = [g / v * 160.21766208 for g, v in zip(grads[len(pos):], bg.volumes)]
        n = n_atoms.to(torch.float64)
        out = BatchOutput(
            features=feats.detach(),
            atom_features=phi.detach(),
            n_atoms=n_atoms,
            energy=(pred["e"] + comp).detach().to(torch.float64) * n,
            energy_offset=comp.detach().to(torch.float64),
        )
        if forces:
            out.forces = torch.cat([f.detach() for f in pred["f"]])
        if stress:
            # CHGNet: GPa, +dE/dε / V (ASE's sign); ASE unit: eV/Å³
            out.stress = torch.stack([s.detach() for s in pred["s"]]).to(torch.float64) * units.GPa
        return out

    def feature_graph(self, structures: Sequence[Atoms]) -> FeatureGraph:
        with torch.enable_grad():
            pred, phi, bg, comp = self._run(structures, forces=False, stress=False)
            feats, n_atoms = pool_atoms(phi, bg.atom_owners, len(structures), self.energy_convention)
        return FeatureGraph(features=feats, positions=list(bg.atom_positions), n_atoms=n_atoms)
