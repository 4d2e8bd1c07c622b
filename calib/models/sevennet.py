"""SevenNet backend (sevenn): SevenNet-0, whose weights ship inside the ``sevenn`` wheel, or a user's checkpoint.

SevenNet-0 (Park et al., J. Chem. Theory Comput. 20, 4857 (2024)) is a NequIP-style equivariant network
trained on MPtrj, as CHGNet was. Its readout is per atom: the node features go through
``reduce_input_to_hidden`` (a linear map to 64 scalars h_a), then ``reduce_hidden_to_energy`` (a linear map
w·h_a + b, no bias in SevenNet-0), then a per-species rescale, and the atomic energies are summed:

    E = Σ_a [ s(Z_a) · (w · h_a + b) + t(Z_a) ]

with s, t the species-wise scale and shift. The energy is therefore linear in w with the last-layer
features

    f = Σ_a s(Z_a) h_a      (summed over atoms: energy_convention "total")

and the fixed offset Σ_a [s(Z_a) b + t(Z_a)]. h_a is taken with a forward pre-hook on
``reduce_hidden_to_energy`` and w by applying its e3nn ``Linear`` to unit vectors (so nothing depends on
e3nn's weight layout); a test rebuilds SevenNet's energy from f and w to float tolerance. The per-atom
descriptors of the domain detector are the same s(Z_a) h_a.

Edge vectors are computed here from the positions (r_j − r_i + S·cell, as ASE's neighbour list), not
taken from the neighbour list's numbers, so that the features are differentiable with respect to the
positions (force σ); forces and stress are SevenNet's own (the gradient with respect to the edge vectors).

Two sevenn APIs are read: ≥ 0.11 (``load_checkpoint``; needs e3nn ≥ 0.5) and 0.10.4, the last on e3nn 0.4.4 and
so the one pip installs beside mace-torch (``model_from_checkpoint``); both give SevenNet-0's energies and forces
alike (README).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

from calib.models.base import BatchOutput, FeatureGraph, ModelAdapter, pool_atoms, wrapped
from calib.models.loading import e3nn_constants_loadable, weights_hash

#: the pretrained potentials of the sevenn wheel that calib loads by name (``sevennet:NAME``); the first is
#: ``--model sevennet``
PRETRAINED = ("SevenNet_0__11Jul2024", "SevenNet_0__22May2024")


def pretrained_path(name: str = "") -> str:
    """Path of a checkpoint shipped inside the sevenn wheel (``name`` one of :data:`PRETRAINED`; default
    SevenNet-0 of 11 July 2024). ValueError for another name or when sevenn is not installed."""
    name = name or PRETRAINED[0]
    if name not in PRETRAINED:
        raise ValueError(f"unknown SevenNet potential {name!r}: calib loads {', '.join(PRETRAINED)} by name, or a "
                         "sevenn checkpoint file you pass (--model PATH)")
    sevenn = _import_sevenn()
    folder = os.path.join(os.path.dirname(sevenn.__file__), "pretrained_potentials", name)
    path = os.path.join(folder, "checkpoint_sevennet_0.pth")
    if not os.path.exists(path):
        raise ValueError(f"the sevenn wheel has no {name} checkpoint at {path} (sevenn {sevenn.__version__})")
    return path


def _import_sevenn():
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), e3nn_constants_loadable():
            warnings.simplefilter("ignore")
            import sevenn
            import sevenn._keys  # noqa: F401
            import sevenn.util  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"SevenNet needs sevenn: pip install -e '.[sevennet]' ({exc})") from None
    return sevenn


def _read_checkpoint(path: str):
    """(model, config) of a sevenn checkpoint: ``load_checkpoint`` (sevenn ≥ 0.11) or ``model_from_checkpoint``
    (0.10, the last sevenn that runs on e3nn 0.4.4 and so beside mace-torch; SevenNet-0's energies and forces
    agree to the last printed digit between the two)."""
    from sevenn import util

    if hasattr(util, "load_checkpoint"):
        cp = util.load_checkpoint(path)
        return cp.build_model(), cp.config
    return util.model_from_checkpoint(path)


def _preprocess(model, data):
    """What SevenNet's ``forward`` does before its modules run: the atomic numbers mapped to the one-hot node
    input (sevenn ≥ 0.11 has it as ``_preprocess``; 0.10 inside ``forward``)."""
    if hasattr(model, "_preprocess"):
        return model._preprocess(data)
    if model.eval_type_map:
        data[model.key_node_feature] = model._atomic_numbers_to_onehot(data[model.key_atomic_numbers])
    if model.key_grad is not None:
        data[model.key_grad].requires_grad_(True)
    return data


class SevenNetAdapter(ModelAdapter):
    """Adapter for a SevenNet model.

    Parameters
    ----------
    checkpoint : str or path, optional
        A sevenn checkpoint file (``checkpoint_*.pth``: a pickle, loaded because you name it). Default:
        SevenNet-0 (11 July 2024) from the sevenn wheel.
    device : "cpu", "cuda", ...
    name, version : str — shown in provenance

    The model runs in float32, its own precision (sevenn's one-hot embedding is float32 whatever the
    default dtype); calib's sums over features are float64.
    """

    energy_convention = "total"

    def __init__(self, checkpoint: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                 name: str = "sevennet", version: str = ""):
        sevenn = _import_sevenn()
        import sevenn._keys as KEY

        path = os.fspath(checkpoint) if checkpoint is not None else pretrained_path()
        if not os.path.exists(path):
            raise FileNotFoundError(f"SevenNet checkpoint not found: {path}")
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, config = _read_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - whatever sevenn raises on a file it cannot read
            raise ValueError(f"{path} is not a SevenNet checkpoint sevenn can read ({type(exc).__name__}: {exc})"
                             ) from None
        if getattr(model, "modal_map", None):
            raise ValueError(f"{path} is a multi-fidelity SevenNet ({', '.join(model.modal_map)}): calib supports "
                             "single-fidelity models such as SevenNet-0")
        if "reduce_hidden_to_energy" not in model._modules:
            raise TypeError(f"{path}: the readout is not reduce_input_to_hidden → reduce_hidden_to_energy (a "
                            "readout MLP); calib needs SevenNet's linear readout")
        self._K = KEY
        self.dtype = torch.float32
        model.set_is_batch_data(True)
        self.model = model.to(device=device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.config = config
        self.checkpoint_path = os.path.abspath(path)  # calib finetune builds its trainee from this file
        self._fingerprint: str | None = None
        self.name = name
        self.version = version or (os.path.basename(os.path.dirname(path)) if checkpoint is None else path)
        self.sevenn_version = sevenn.__version__
        self.type_map = {int(z): int(i) for z, i in config[KEY.TYPE_MAP].items()}
        self.supported_elements = frozenset(self.type_map)
        self.cutoff = float(config[KEY.CUTOFF])
        self._index = torch.full((max(self.type_map) + 1,), -1, dtype=torch.long)
        for z, i in self.type_map.items():
            self._index[z] = i
        self._readout = self.model._modules["reduce_hidden_to_energy"]
        rescale = self.model._modules["rescale_atomic_energy"]
        n_types = len(self.type_map)
        self._scale = torch.broadcast_to(torch.atleast_1d(rescale.scale.detach()), (n_types,)).to(torch.float64)
        self._shift = torch.broadcast_to(torch.atleast_1d(rescale.shift.detach()), (n_types,)).to(torch.float64)
        lin = self._readout.linear
        n_in = int(lin.irreps_in.dim)
        with torch.no_grad():
            zero = torch.zeros(1, n_in, dtype=self.dtype, device=self.device)
            b = lin(zero).reshape(-1)
            w = (lin(torch.eye(n_in, dtype=self.dtype, device=self.device)) - lin(zero))[:, 0]
        self._w = w.detach().to("cpu", torch.float64).numpy()
        self._b = float(b[0])
        self.n_features = n_in
        self.feature_set = "last"

    @property
    def readout(self) -> tuple[np.ndarray, float]:
        return self._w.copy(), 0.0

    def fingerprint(self) -> str:
        """SHA-256 of the weights as the checkpoint file holds them (``model_state_dict``, names and values).

        Not the built network's state dict, as other backends: sevenn ≥ 0.11 on e3nn ≥ 0.5 and sevenn 0.10 on
        e3nn 0.4.4 build SevenNet-0 with differently ordered Wigner-3j buffers and re-sorted convolution weights
        (the same energies and forces), so only the file's own tensors name the model in both environments."""
        if self._fingerprint is None:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)["model_state_dict"]
            self._fingerprint = weights_hash(state)
        return self._fingerprint

    def describe(self) -> dict:
        return {**super().describe(), "sevenn_version": self.sevenn_version}

    # ------------------------------------------------------------------ internals
    def _batch(self, structures: Sequence[Atoms]):
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.data import Batch

        # sevenn ≥ 0.11 adds the cell shifts on request; 0.10 always does
        shift = {"with_shift": True} if "with_shift" in inspect.signature(unlabeled_atoms_to_graph).parameters else {}
        graphs = [AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(wrapped(a), self.cutoff, **shift))
                  for a in structures]
        data = Batch.from_data_list(graphs).to(self.device)
        K = self._K
        for key in (K.POS, K.CELL, K.CELL_VOLUME):
            data[key] = data[key].to(self.dtype)
        return data

    def _edge_vectors(self, data, pos: torch.Tensor) -> torch.Tensor:
        """r_j − r_i + S·cell for every edge (i → j), differentiable in ``pos`` (Å)."""
        K = self._K
        src, dst = data[K.EDGE_IDX]
        cell = data[K.CELL].reshape(-1, 3, 3)[data[K.BATCH][src]]
        return pos[dst] - pos[src] + torch.einsum("ei,eij->ej", data[K.CELL_SHIFT].to(pos.dtype), cell)

    def _scaled(self, phi: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s(Z_a) h_a, t(Z_a) + s(Z_a) b) per atom."""
        idx = self._index.to(numbers.device)[numbers.long()]
        s = self._scale.to(phi.device)[idx]
        return phi * s.to(phi.dtype).unsqueeze(1), self._shift.to(phi.device)[idx] + s * self._b

    def _run(self, data, *, until: str | None):
        """Run SevenNet's modules in order, stopping before ``until`` (None: all of them, forces and stress
        included; ``"force_output"``: the energy only; ``"reduce_hidden_to_energy"``: the features only, with
        their graph to the positions). Returns (the data dict, h_a: the input of reduce_hidden_to_energy)."""
        data = _preprocess(self.model, data)
        phi = None
        for name, module in self.model._modules.items():
            if name == until:
                break
            if name == "reduce_hidden_to_energy":
                phi = data[self._K.NODE_FEATURE]
            data = module(data)
        if phi is None:
            phi = data[self._K.NODE_FEATURE]
        return data, phi

    # ------------------------------------------------------------------ protocol
    def forward_batch(self, structures: Sequence[Atoms], *, forces: bool, stress: bool) -> BatchOutput:
        K = self._K
        data = self._batch(structures)
        data[K.EDGE_VEC] = self._edge_vectors(data, data[K.POS])
        # SevenNet's forces and stress are the gradient with respect to the edge vectors, taken by its last module
        ctx = torch.enable_grad() if (forces or stress) else torch.no_grad()
        with ctx:
            out, phi = self._run(data, until=None if (forces or stress) else "force_output")
        f_atoms, offset_atoms = self._scaled(phi.detach().to(torch.float64), data[K.ATOMIC_NUMBERS])
        n = len(structures)
        feats, n_atoms = pool_atoms(f_atoms, data[K.BATCH], n, "total")
        energy = out[K.PRED_TOTAL_ENERGY].detach().reshape(n).to(torch.float64)
        res = BatchOutput(features=feats, atom_features=f_atoms, n_atoms=n_atoms, energy=energy,
                          energy_offset=torch.zeros(n, dtype=torch.float64, device=feats.device).index_add(
                              0, data[K.BATCH], offset_atoms))
        if forces:
            res.forces = out[K.PRED_FORCE].detach()
        if stress:
            # sevenn: [xx yy zz xy yz zx] of −σ in eV/Å³; ASE: σ in Voigt order xx yy zz yz xz xy
            s = -out[K.PRED_STRESS].detach().to(torch.float64).reshape(n, 6)
            xx, yy, zz, xy, yz, zx = s.unbind(1)
            res.stress = torch.stack([torch.stack([xx, xy, zx], 1), torch.stack([xy, yy, yz], 1),
                                      torch.stack([zx, yz, zz], 1)], 1)
        return res

    def feature_graph(self, structures: Sequence[Atoms]) -> FeatureGraph:
        K = self._K
        data = self._batch(structures)
        sizes = (data["ptr"][1:] - data["ptr"][:-1]).tolist()
        leaves = [p.detach().clone().requires_grad_(True) for p in torch.split(data[K.POS], sizes)]
        with torch.enable_grad():
            pos = torch.cat(leaves)
            data[K.POS] = pos
            data[K.EDGE_VEC] = self._edge_vectors(data, pos)
            data, phi = self._run(data, until="reduce_hidden_to_energy")
            f_atoms, _ = self._scaled(phi, data[K.ATOMIC_NUMBERS])
            feats, n_atoms = pool_atoms(f_atoms, data[K.BATCH], len(structures), "total")
        return FeatureGraph(features=feats, positions=leaves, n_atoms=n_atoms)
