"""Stage 1's settings: one frozen, self-checking object for :func:`attacks.features.reconstruct`.

Every numerical option of the gradient-matching loop lives here, with its default written
once. A field whose metadata has a ``"help"`` text is a command-line setting (``fedspeech
audit`` exposes it, and a parser can be derived from the metadata: ``help``, optional
``choices``, and ``flag`` where the flag is not ``--`` plus the name with hyphens); the
others are tuning knobs for code and benchmarks. Errors name the flag of a command-line
setting and ``Stage1Settings.<name>`` for the others (:func:`setting_name`).

Examples
--------
>>> Stage1Settings(iterations=100).restarts
2
>>> Stage1Settings(tv_weight=-1)
Traceback (most recent call last):
...
fedspeech.errors.ConfigError: --tv-weight must not be negative, got -1
>>> Stage1Settings(patience=0)
Traceback (most recent call last):
...
fedspeech.errors.ConfigError: Stage1Settings.patience must be at least 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from attacks.features.objective import DISTANCE_CHOICES, DISTANCES, TV_REDUCTIONS
from fedspeech.errors import ConfigError

__all__ = ["PRESETS", "UNROLLED_STARTS", "Stage1Settings", "setting_name"]

# fedspeech's first step size (the study's step is constant: PRESETS["study"]).
_LR_START = 0.1

#: Where a replayed update's first restart starts (``Stage1Settings.unrolled_start``).
UNROLLED_STARTS = ("random", "averaged")

# The largest seed (32 bits, what every seeded library accepts).
_SEED_MAX = 2**32 - 1


def setting_name(settings: Any, name: str) -> str:
    """How messages name the field ``name`` of the dataclass ``settings`` (class or object).

    ``--flag`` for a command-line setting (a ``"help"`` in its metadata; ``"flag"`` overrides
    the flag derived from the name), ``Class.name`` for any other field.

    Examples
    --------
    >>> setting_name(Stage1Settings, "tv_weight"), setting_name(Stage1Settings, "tol")
    ('--tv-weight', 'Stage1Settings.tol')
    """
    meta = {f.name: f.metadata for f in dataclasses.fields(settings)}[name]
    if "help" not in meta:
        cls = settings if isinstance(settings, type) else type(settings)
        return f"{cls.__name__}.{name}"
    return str(meta.get("flag", "--" + name.replace("_", "-")))


#: Stage-1 values of a named preset where they differ from fedspeech's defaults.
#: ``"study"``: Li, Zhang and Liu's settings (a constant Adam step of 0.01), from which
#: fedspeech's default differs only by the step schedule (from 0.1 down to 0.001, chosen on
#: ``benchmarks/bench_attack.py``'s three draws; see docs/results/attack_throughput.md).
PRESETS: dict[str, dict[str, Any]] = {"study": {"lr_start": None, "lr": 0.01}}


@dataclass(frozen=True)
class Stage1Settings:
    """How stage 1 searches for the features behind a gradient; checked on construction.

    Attributes
    ----------
    iterations : int
        Adam steps per restart: a cap for :func:`attacks.features.reconstruct` (which stops a
        converged restart early), the exact count for
        :func:`attacks.features.reconstruct_plain` (8000 in the study).
    restarts : int
        Independent starts per target; the best by matching loss is kept.
    lr : float
        Adam step size: the last of the schedule (0.001), or the constant step when
        ``lr_start`` is None (the study's 0.01, :data:`PRESETS` ``"study"``).
    lr_start : float or None
        The first step size of each restart (0.1), multiplied by ``lr_decay`` at each
        plateau of ``decay_patience`` steps down to ``lr``; None (or ``lr``) keeps the step
        constant.
    extra_restarts : int
        Restarts beyond ``restarts`` (not the study's; 0 by default) for a target none of
        whose restarts reached ``skip_below``, from further random starts, while its steps
        stay within ``restarts * iterations``.
    tv_weight : float
        Weight of the total-variation prior.
    tv_reduction : str
        ``"mean"`` over entries (as ``inversefed``) or ``"sum"``
        (:data:`attacks.features.TV_REDUCTIONS`).
    distance : str
        Gradient distance, ``"l2"`` or ``"cosine"`` (:data:`attacks.features.DISTANCES`), or
        ``"auto"`` (the default): cosine for a target whose local steps are replayed, l2
        (the study's) otherwise (:func:`attacks.features.objective.resolve_distance`).
    tol, patience : float, int
        A restart has converged when its best matching loss improved by less than the
        relative ``tol`` over the last ``patience`` steps. Restarts on FSDD clips cross
        flat stretches of up to 890 such steps (32 clips at the study's settings) before
        reaching a near-zero loss; 1200 leaves a margin.
    floor : float
        A restart also stops when its matching loss is below ``floor`` times the loss of a
        zero gradient (``||g_shared||^2`` for ``"l2"``, 1 for ``"cosine"``).
    skip_below : float
        No further restarts for a target once one restart ended below ``skip_below`` times
        that zero-gradient loss.
    max_batch : int
        Restarts optimised together at most (per group of alike targets).
    factored : bool
        Match ``nn.Linear`` weight gradients through their factors (same objective, fewer
        passes over large weights). False computes every gradient in full.
    layerwise : bool
        Where the targets share their weights and the matched layers are linear or 2-D
        convolutions, step them as one batch with plain autograd (same objective, faster);
        False always uses ``vmap``.
    check_every : int
        Steps between convergence checks (each check synchronises with the device).
    lr_decay : float
        Factor in (0, 1) applied to the step size at each plateau (with ``lr_start``).
    decay_patience : int
        Steps without a relative ``tol`` improvement before the step size is decreased.
    decay_from_best : bool
        At each decrease, continue from the restart's best iterate with Adam's moments
        reset (True), or from the current iterate with its moments (False).
    unrolled_start : str
        Where the first restart of a replayed update starts (:data:`UNROLLED_STARTS`):
        ``"random"``, a seeded draw as for every other restart, or ``"averaged"`` (the
        default since 2026-12-03; docs/results/unrolled.md), the clips
        the averaged pass that puts the labels in step order ended at
        (:mod:`attacks.features.step_order`), in that order. That pass runs for updates of 2
        to 32 clips with more than one distinct label; other updates, and later restarts,
        start at random.
    seed : int
        Seeds the random starts (restart ``k`` of every target starts from the same draw
        for the same seed).

    Only ``iterations``, ``restarts``, ``lr``, ``tv_weight``, ``tv_reduction``,
    ``distance`` and ``seed`` apply to the plain loop; the rest shape the fast one.

    Raises
    ------
    ConfigError
        On construction, for a value no reconstruction could use.
    """

    iterations: int = field(default=8000, metadata={"help": "stage-1 steps per restart"})
    restarts: int = field(default=2, metadata={"help": "stage-1 restarts"})
    lr: float = field(
        default=0.001,
        metadata={
            "help": "stage-1 Adam step size: the schedule's last, or the constant step with "
            "--preset study (0.01)"
        },
    )
    lr_start: float | None = field(
        default=_LR_START,
        metadata={
            "help": "start each restart at this step size, divided by 3.3 at each plateau "
            "down to --lr (fedspeech's schedule; --preset study: the study's constant step)"
        },
    )
    extra_restarts: int = field(
        default=0,
        metadata={
            "help": "restarts beyond --restarts, from new random starts, for a capture none of "
            "whose restarts converged, within --restarts x --iterations steps (not the study's)"
        },
    )
    tv_weight: float = field(default=1e-3, metadata={"help": "total-variation weight"})
    tv_reduction: str = field(
        default="mean",
        metadata={
            "help": "total variation as a mean over entries (inversefed's, the default) or a sum",
            "choices": ("mean", "sum"),
        },
    )
    distance: str = field(
        default="auto",
        metadata={
            "help": "gradient distance; auto: cosine for updates whose local steps are "
            "replayed (--update-model unrolled), the study's l2 otherwise",
            "choices": DISTANCE_CHOICES,
        },
    )
    unrolled_start: str = field(
        default="averaged",
        metadata={
            "help": "where a replayed update's first restart starts: a seeded random draw, or "
            "the clips of the averaged pass that put the labels in step order",
            "choices": UNROLLED_STARTS,
        },
    )
    tol: float = 1e-2
    patience: int = 1200
    floor: float = 1e-7
    skip_below: float = 1e-3
    max_batch: int = 32
    factored: bool = True
    layerwise: bool = True
    check_every: int = 10
    lr_decay: float = 0.3
    decay_patience: int = 150
    decay_from_best: bool = True
    seed: int = field(default=0, metadata={"help": "seed of the random starts"})

    def __post_init__(self) -> None:
        self._check_finite()
        for name in ("iterations", "restarts", "patience", "max_batch", "check_every"):
            self._at_least(name, 1)
        self._at_least("decay_patience", 1)
        if not self.lr > 0:
            raise ConfigError(f"{self._name('lr')} must be positive, got {self.lr}")
        if self.lr_start is not None and not self.lr_start >= self.lr:
            # The default start is below a large --lr: say how to get either schedule.
            default = self.lr_start == _LR_START
            raise ConfigError(
                f"{self._name('lr_start')} must be at least {self._name('lr')} ({self.lr}), "
                f"got {self.lr_start}"
                + (
                    f" (its default; give {self._name('lr_start')} at least {self.lr}, or "
                    "--preset study for a constant step)"
                    if default
                    else ""
                )
            )
        if not 0.0 < self.lr_decay < 1.0:
            raise ConfigError(f"{self._name('lr_decay')} must be in (0, 1), got {self.lr_decay}")
        for name in ("extra_restarts", "tv_weight", "tol", "floor", "skip_below"):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"{self._name(name)} must not be negative, got {value}")
        if not 0 <= self.seed <= _SEED_MAX:
            raise ConfigError(f"{self._name('seed')} must be in [0, {_SEED_MAX}], got {self.seed}")
        TV_REDUCTIONS.get(self.tv_reduction)
        if self.unrolled_start not in UNROLLED_STARTS:
            raise ConfigError(
                f"unknown {self._name('unrolled_start')} {self.unrolled_start!r}; "
                f"known: {', '.join(UNROLLED_STARTS)}"
            )
        if self.distance != "auto":
            DISTANCES.get(self.distance)

    def _check_finite(self) -> None:
        """Every float is finite: range checks alone pass infinity (``inf > 0``)."""
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{self._name(spec.name)} must be a finite number, got {value}")

    def _name(self, name: str) -> str:
        return setting_name(self, name)

    def _at_least(self, name: str, low: int) -> None:
        value = getattr(self, name)
        if value < low:
            raise ConfigError(f"{self._name(name)} must be at least {low}, got {value}")

    @classmethod
    def preset(cls, name: str, **changes: Any) -> Stage1Settings:
        """The settings of the preset ``name`` (:data:`PRESETS`), with ``changes`` on top.

        Examples
        --------
        >>> s = Stage1Settings.preset("study", iterations=100)
        >>> s.lr_start, s.lr, s.iterations
        (None, 0.01, 100)
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})

    @property
    def first_lr(self) -> float:
        """The step size each restart starts with: ``lr_start``, or ``lr`` when None."""
        return self.lr if self.lr_start is None else self.lr_start
