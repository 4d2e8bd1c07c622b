"""The settings dataclasses of the workflows, light to import: the CLI builds its options from them when it
starts (:mod:`calib.settings`), before any model or heavy library loads. Where a workflow function takes a
setting as a keyword, its default is read from the module's default instance (:data:`HESSIAN`,
:data:`FINETUNE`, :data:`SCREEN`, :data:`EOS`), so that it is typed once."""

from __future__ import annotations

from dataclasses import dataclass

from calib.data.dft import GPAWSettings
from calib.errors import UsageError, non_negative_int, positive, positive_int
from calib.settings import folds, non_negative, one_of, open_fraction, setting, validate


def model_name(name: str, value) -> str:
    """A value naming a model calib could load (:func:`calib.models.registry.check_model_name`; cheap)."""
    from calib.models.registry import check_model_name

    try:
        check_model_name(value)
    except ValueError as exc:
        raise UsageError(f"{name} {value}: {exc}") from None
    return value


@dataclass(frozen=True)
class CalibrationSettings:
    """What :func:`calibrate` fits and how, validated on construction; each field declares its default, unit,
    help and constraint once (:mod:`calib.settings`), and ``calib calibrate`` builds its options from them."""

    target: str = setting(
        "both", "residuals for the NLL: both ((α², ς²) per observable: on the shipped GPAW data one pair cannot "
        "serve both, docs/llpr.md), energy (total eV after the element reference) or forces (every component, "
        "eV/Å)", check=one_of("both", "energy", "forces"), flag="--target")
    alpha: float | None = setting(
        0.1, "conformal miscoverage level in (0, 1): intervals aim at 1 − α coverage (None: no conformal state; "
        "the scores |error|/σ depend on this set only through ς², docs/conformal.md)", check=open_fraction,
        flag="--alpha", optional=True)
    classes: int | str | None = setting(
        None, "Mondrian classes of the conformal quantiles: K (a mixture of ≤ K environment classes on the "
        "per-atom descriptors), 'element', 'chemsys' or None")
    min_class_size: int = setting(30, "≥ 1: smaller classes use the global quantile", check=positive_int,
                                  flag="--min-class-size")
    energy_folds: int | None = setting(
        5, "cross-fit the element reference over K ≥ 2 folds of structures for the energy residuals and scores "
        "(they are then not shrunk by the fit; structures whose shift the other folds do not determine are left "
        "out); 0 or None: in-sample, as calib 0.1.0", check=folds, flag="--energy-folds", optional=True)
    approx_coverage: float = setting(0.95, "fraction of the summed force variance the approximate force σ keeps "
                                     "(directions chosen by their contribution on these structures)",
                                     check=open_fraction)
    with_forces: bool = setting(True, "exact force gradients on the labelled set (d backward passes per batch) "
                                "for the force fit and the approximate-σ truncation; only target 'energy' can do "
                                "without")
    difference_model: bool = setting(True, "fit the energy-difference variance model (calib.uq.differences), raw "
                                     "and after each chemistry's scalar correction; False: LLPR difference σ alone")
    error_folds: int = setting(10, "folds of the grouped cross-fit of the error models: each structure's score "
                               "comes from models fitted without its chemical system", check=positive_int)
    chemistry_scale: bool = setting(True, "give each calibrated chemistry with ≥ 2 structures its own "
                                    "force-variance scale and bound quantile; off when the labels are the model's "
                                    "own training data (calib loop)")
    structure_model: bool = setting(False, "also fit the structure error model (boosted trees of a structure's "
                                    "largest force error, conformalised) to bound a new chemistry's largest error; "
                                    "off by default (docs/errormodel.md)")

    committee: str | None = setting(
        None, "a second model (a --model value: 'sevennet', 'chgnet:0.2.0', a model file) whose forces' "
        "disagreement with the model's enters the force error model (docs/errormodel.md); the calibration then "
        "runs it beside the model wherever it predicts", check=model_name, flag="--committee", optional=True)

    def __post_init__(self):
        validate(self)
        if self.target != "energy" and not self.with_forces:
            raise UsageError(f"target={self.target!r} needs force gradients (with_forces=True)")


@dataclass(frozen=True)
class HessianSettings:
    """How ``calib hessian`` / :func:`calib.workflows.hessian.build_hessian` accumulate H, validated on
    construction."""

    checkpoint_every: int = setting(10, "batches between checkpoint saves", check=positive_int,
                                    flag="--checkpoint-every")
    force_weight: float = setting(0.0, "≥ 0: add force rows Σ JᵀJ with this weight (d backward passes per batch: "
                                  "several times slower)", check=non_negative, flag="--force-weight")

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class FinetuneSettings:
    """How :func:`calib.workflows.finetune.finetune` trains (``calib finetune``'s options; the loop's fine-tuning
    starts from the same defaults), validated on construction."""

    epochs: int = setting(30, "training epochs (≥ 1)", check=positive_int, flag="--epochs")
    replay: int = setting(20, "proxy structures pseudo-labelled by the base model mixed into the training set (≥ 0): "
                          "what keeps the model's behaviour elsewhere", check=non_negative_int, flag="--replay")
    seed: int = setting(0, "seed of the training: replay sample, data order, initialisation", check=non_negative_int,
                        flag="--seed")
    lr: float = setting(3e-4, "learning rate of the model's trainer (Adam; chgnet: cosine schedule, sevenn: linear "
                        "decay, mace: AMSGrad, mace's ReduceLROnPlateau)", check=positive, flag="--lr")
    batch_size: int = setting(8, "structures per training step", check=positive_int, flag="--batch-size")

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class ScreenSettings:
    """How :func:`calib.workflows.screen.screen` batches (``calib screen``'s option)."""

    batch_size: int = setting(16, "structures per batch; each batch is committed to the results file",
                              check=positive_int, flag="--batch-size")

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class EOSSettings:
    """How :func:`calib.workflows.eos.run_eos` batches (``calib eos``'s option)."""

    batch_size: int = setting(32, "strained cells per model call", check=positive_int, flag="--batch-size")

    def __post_init__(self):
        validate(self)


HESSIAN = HessianSettings()
FINETUNE = FinetuneSettings()
SCREEN = ScreenSettings()
EOS = EOSSettings()
#: the loop's labeller: the shipped data's GPAW settings (k-point density 2.0 Å⁻¹, not calib label's 3.0)
LOOP_GPAW = GPAWSettings(kdensity=2.0)


def _md_steps(name: str, value) -> int:
    """At least 4 MD steps: the loop keeps a frame every md_steps // 4 steps."""
    if positive_int(name, value) < 4:
        raise UsageError(f"{name} must be a whole number ≥ 4 (the MD keeps a frame every md_steps // 4 steps), got "
                         f"{value!r}")
    return int(value)


@dataclass(frozen=True)
class LoopSettings:
    """Settings of :func:`calib.workflows.loop.run_loop`, validated on construction (``calib loop`` builds its
    options from them)."""

    rounds: int = setting(3, "at most this many rounds (≥ 1)", check=positive_int, flag="--rounds")
    frames: int = setting(4, "frames labelled per round (≥ 1)", check=positive_int, flag="--frames")
    temperature: float = setting(1000.0, "MD temperature (> 0)", unit="K", check=positive, flag="--temperature")
    md_steps: int = setting(400, "MD steps of 1 fs per round and start structure (≥ 4)", check=_md_steps,
                            flag="--md-steps")
    epochs: int = setting(FINETUNE.epochs, "fine-tuning epochs per round (≥ 1)", check=positive_int, flag="--epochs")
    replay: int = setting(FINETUNE.replay, "replay structures per fine-tuning (≥ 0)", check=non_negative_int,
                          flag="--replay")
    lr: float = setting(FINETUNE.lr, "learning rate of chgnet's Trainer (Adam, cosine schedule)", check=positive)
    seed: int = setting(0, "seed of the loop: MD velocities, proxy and replay samples, training",
                        check=non_negative_int, flag="--seed")
    proxy_sample: int = setting(300, "equilibrium-proxy structures of each round's Hessian", check=non_negative_int)
    shipped_sample: int = setting(40, "shipped labels added to each recalibration", check=non_negative_int)

    def __post_init__(self):
        validate(self)
