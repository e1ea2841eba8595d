"""What the audit attacks and how (:class:`AuditSettings`), and the cache keys it implies.

The stage-1 fields take their defaults and command-line help from
:class:`attacks.features.Stage1Settings` (each default is written once, there) and are
handed to :func:`attacks.features.reconstruct` as :attr:`AuditSettings.stage1`.

Field metadata describes the command line of ``fedspeech audit``: ``help`` (one line),
optional ``choices``, and ``flag`` where the flag is not ``--`` plus the name with hyphens
(``--no-speaker`` turns the default-true ``speaker`` off; ``--round R`` may repeat and fills
the list ``rounds``). A field without ``help`` is a setting of the Python API only; error
messages name it ``AuditSettings.<name>``
(:func:`attacks.features.setting_name`).

Examples
--------
>>> s = AuditSettings(iterations=200, speaker=False)
>>> s.stage1.iterations, s.stage1.patience, s.stage1_key()["iterations"]
(200, 1200, 200)
>>> AuditSettings(chunk=0)
Traceback (most recent call last):
...
fedspeech.errors.ConfigError: --chunk must be at least 1, got 0
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from attacks.features import PRESETS, Stage1Settings, setting_name
from attacks.labels import LABEL_METHODS
from attacks.scoring import SPEAKER_MODELS
from attacks.target import DUAL_PATH_MODELS, UPDATE_MODELS
from attacks.waveform import DEFAULT_N_ITER
from fedspeech.errors import ConfigError

__all__ = ["CACHE_VERSION", "GROUPS", "AuditSettings"]

# Bump when the layout of the per-capture files changes, so old ones are recomputed.
CACHE_VERSION = 1

_STAGE1 = {f.name: f for f in dataclasses.fields(Stage1Settings)}

#: Help groups of ``fedspeech audit --help`` (the ``group`` of each field's metadata).
GROUPS: dict[str, str] = {
    "select": "which captures",
    "stage1": "stage 1: features (or waveforms) from the shared gradient",
    "scoring": "stage 2 and scoring",
    "run": "execution",
}


def _stage1_field(name: str, **metadata: Any) -> Any:
    """A field with :class:`Stage1Settings`' default and metadata for ``name``.

    ``metadata`` entries replace the stage-1 ones (the audit's own help text, say).
    """
    spec = _STAGE1[name]
    return field(default=spec.default, metadata={**spec.metadata, "group": "stage1", **metadata})


@dataclass(frozen=True)
class AuditSettings:
    """What to attack and how; checked on construction.

    Attributes
    ----------
    iterations, restarts, lr, lr_start, extra_restarts, tv_weight, tv_reduction, distance
        Stage 1's (:class:`attacks.features.Stage1Settings`, same defaults): step cap per
        restart, restarts, Adam step size, a larger first step size decreased at plateaus
        down to ``lr`` (None: the study's constant step), restarts for a capture none of
        whose restarts converged, total-variation weight and reduction, gradient distance.
    unrolled_start : str
        Stage 1's too: where a replayed update's first restart starts (``"random"`` or
        ``"averaged"``, the clips of the pass that put its labels in step order).
    preset : str or None
        A key of :data:`attacks.features.PRESETS` (``"study"``): its stage-1 fields take the
        preset's values. A field the preset sets must be left at its default or given the
        preset's value, else the settings conflict (a ConfigError).
    dual_path : str
        How a dual-path keyword update is matched (:data:`attacks.target.DUAL_PATH_MODELS`):
        ``"expected"`` (the mean of the clean and the expected-mask gradient) or ``"clean"``.
    update_model : str
        How an update of several local steps is matched (:data:`attacks.target.UPDATE_MODELS`):
        ``"unrolled"`` (the client's local training replayed on the candidates) or
        ``"averaged"`` (one averaged gradient, the audit's model before 2026-12).
    griffin_lim_iters : int
        Stage 2 Griffin-Lim iterations.
    label_method : str
        :func:`attacks.labels.recover_labels` method ("auto", "idlg", "count").
    speaker_model : str
        Speaker encoder for re-identification ("resemblyzer" or "ecapa").
    content, speaker : bool
        Score content (keyword classifier) and speaker re-identification.
    rounds, clients : list[int] or None
        Audit only these rounds / client ids (None: all).
    max_samples : int or None
        Stop after this many reconstructed samples, counted over whole captures in
        ``rNNN_cNNNN`` order (a batch capture is never split, so the count can exceed it by
        less than one batch).
    chunk : int
        Captures whose stage 1 runs together in one batched optimisation.
    seed : int
        Seeds stage 1's starts, Griffin-Lim's phases and the scorers' fitting.
    ray_address : str or None
        Run stage 1 as one Ray task per capture on this cluster ("auto", "host:port",
        "ray://...", or "local" to start a private one); None runs in this process.
    threads : int or None
        Torch threads in this process; None uses every core (``os.cpu_count()``). On a
        machine shared with other jobs, 1 can be much faster.
    workers : int
        Processes stage 1 splits each chunk over, one torch thread each
        (:mod:`attacks.features.workers`); 1 runs it in this process with ``threads``.
    content_epochs : int
        Epochs of the content classifier.
    verifier_speakers, verifier_clips : int
        The speaker verifier's threshold is fitted on up to this many train-split speakers
        with up to this many clips each.
    content_max_clips : int
        Train-split clips the content classifier is fitted on, at most (a seeded draw).

    Raises
    ------
    ConfigError
        On construction, for settings no audit could use.
    """

    iterations: int = _stage1_field("iterations")
    restarts: int = _stage1_field("restarts")
    lr: float = _stage1_field("lr")
    lr_start: float | None = _stage1_field("lr_start")
    extra_restarts: int = _stage1_field("extra_restarts")
    tv_weight: float = _stage1_field("tv_weight")
    tv_reduction: str = _stage1_field("tv_reduction")
    distance: str = _stage1_field("distance")
    unrolled_start: str = _stage1_field("unrolled_start")
    preset: str | None = field(
        default=None,
        metadata={
            "help": "study: Li, Zhang and Liu's exact stage-1 settings (a constant step "
            "size) instead of fedspeech's faster schedule",
            "choices": tuple(PRESETS),
            "group": "stage1",
        },
    )
    dual_path: str = field(
        default="expected",
        metadata={
            "help": "model of a dual-path (SpecAugment) update: the mean of the clean "
            "gradient and the gradient at the expected masked features, or the clean gradient",
            "choices": DUAL_PATH_MODELS,
            "group": "stage1",
        },
    )
    update_model: str = field(
        default="unrolled",
        metadata={
            "help": "model of an update of several local steps: the client's local training "
            "replayed on the candidate clips (unrolled), or one averaged gradient",
            "choices": UPDATE_MODELS,
            "group": "stage1",
        },
    )
    griffin_lim_iters: int = field(
        default=DEFAULT_N_ITER,
        metadata={"help": "stage-2 Griffin-Lim iterations", "group": "scoring"},
    )
    label_method: str = "auto"
    speaker_model: str = field(
        default="resemblyzer",
        metadata={
            "help": "speaker encoder for re-identification",
            "choices": ("resemblyzer", "ecapa"),
            "group": "scoring",
        },
    )
    content: bool = field(
        default=True,
        metadata={
            "help": "skip the content classifier",
            "flag": "--no-content",
            "group": "scoring",
        },
    )
    speaker: bool = field(
        default=True,
        metadata={
            "help": "skip speaker re-identification",
            "flag": "--no-speaker",
            "group": "scoring",
        },
    )
    rounds: list[int] | None = field(
        default=None,
        metadata={
            "help": "audit only round R (repeat for several)",
            "flag": "--round",
            "metavar": "R",
            "group": "select",
        },
    )
    clients: list[int] | None = field(
        default=None,
        metadata={
            "help": "audit only client C (repeat for several)",
            "flag": "--client",
            "metavar": "C",
            "group": "select",
        },
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "stop after N reconstructed samples", "group": "select"}
    )
    chunk: int = field(
        default=32,
        metadata={
            "help": "captures reconstructed together in one batched optimisation",
            "group": "run",
        },
    )
    seed: int = _stage1_field("seed", help="seed of starts, phases and scorers", group="run")
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "run stage 1 as Ray tasks on this cluster "
            "('auto', HOST:PORT, or 'local' for a private one)",
            "metavar": "ADDRESS",
            "group": "run",
        },
    )
    threads: int | None = field(
        default=None,
        metadata={"help": "torch threads (default: all cores)", "group": "run"},
    )
    workers: int = field(
        default=1,
        metadata={"help": "processes stage 1 is split over, one torch thread each", "group": "run"},
    )
    content_epochs: int = 8
    verifier_speakers: int = 30
    verifier_clips: int = 4
    content_max_clips: int = 5000

    def __post_init__(self) -> None:
        self._apply_preset()
        self.stage1  # noqa: B018 -- builds Stage1Settings, which checks the stage-1 fields
        for name in (
            "griffin_lim_iters",
            "chunk",
            "content_epochs",
            "verifier_speakers",
            "content_max_clips",
        ):
            self._at_least(name, 1)
        self._at_least("verifier_clips", 2)
        for name in ("max_samples", "threads"):
            if getattr(self, name) is not None:
                self._at_least(name, 1)
        self._at_least("workers", 1)
        # Flower numbers rounds from 1 and clients from 0 (captures rNNN_cNNNN).
        self._each_at_least("rounds", 1)
        self._each_at_least("clients", 0)
        if self.dual_path not in DUAL_PATH_MODELS:
            known = ", ".join(DUAL_PATH_MODELS)
            raise ConfigError(
                f"{setting_name(self, 'dual_path')} must be one of {known}, got {self.dual_path!r}"
            )
        if self.update_model not in UPDATE_MODELS:
            known = ", ".join(UPDATE_MODELS)
            raise ConfigError(
                f"{setting_name(self, 'update_model')} must be one of {known}, "
                f"got {self.update_model!r}"
            )
        if self.label_method != "auto":
            LABEL_METHODS.get(self.label_method)
        if self.speaker:
            SPEAKER_MODELS.get(self.speaker_model)

    def _at_least(self, name: str, low: int) -> None:
        value = getattr(self, name)
        if value < low:
            raise ConfigError(f"{setting_name(self, name)} must be at least {low}, got {value}")

    def _apply_preset(self) -> None:
        """Give the preset's fields its values (a frozen dataclass: set once, here)."""
        if self.preset is None:
            return
        if self.preset not in PRESETS:
            known = ", ".join(PRESETS)
            raise ConfigError(f"--preset must be one of {known}, got {self.preset!r}")
        for name, value in PRESETS[self.preset].items():
            current = getattr(self, name)
            if current != value and current != _STAGE1[name].default:
                raise ConfigError(
                    f"--preset {self.preset} sets {setting_name(self, name)} to {value}; "
                    f"it conflicts with {setting_name(self, name)} {current}"
                )
            object.__setattr__(self, name, value)

    def _each_at_least(self, name: str, low: int) -> None:
        """Every entry of the list setting ``name`` (None: all) is at least ``low``."""
        bound = "not be negative" if low == 0 else f"be at least {low}"
        for value in getattr(self, name) or ():
            if value < low:
                raise ConfigError(f"{setting_name(self, name)} must {bound}, got {value}")

    @cached_property
    def stage1(self) -> Stage1Settings:
        """The stage-1 fields as the :class:`Stage1Settings` that reconstruct takes."""
        return Stage1Settings(**{name: getattr(self, name) for name in _stage1_names()})

    def stage1_key(self) -> dict[str, Any]:
        """The settings a stage-1 reconstruction depends on (its resume files' key)."""
        keys = ("iterations", "restarts", "lr", "tv_weight", "distance", "label_method", "seed")
        key = {"version": CACHE_VERSION, **{k: getattr(self, k) for k in keys}}
        # Absent for the study's constant step (the default before 2026-12-03, now
        # --preset study), so caches made with it stay valid for it.
        if self.lr_start is not None:
            key["lr_start"] = self.lr_start
            # Since 2026-12-03 a decrease continues from the best iterate with fresh moments
            # (Stage1Settings.decay_from_best): schedules cached before are made again.
            key["lr_schedule"] = "from-best"
        if self.extra_restarts:
            key["extra_restarts"] = self.extra_restarts
        # Absent for a random start, the only one before the option existed, and where
        # nothing is replayed.
        if self.update_model == "unrolled" and self.unrolled_start != "random":
            key["unrolled_start"] = self.unrolled_start
        # Dual-path updates were matched as clean gradients before the option existed.
        key["dual_path"] = self.dual_path
        # Multi-step updates were matched as one averaged gradient before the option existed:
        # caches made then are valid for "averaged" only.
        if self.update_model != "averaged":
            key["update_model"] = self.update_model
        # Caches from before the option existed summed the total variation.
        if self.tv_reduction != "sum":
            key["tv_reduction"] = self.tv_reduction
        # Stage 1's loop changed (2: patience 600, float64 matching loss of factored layers;
        # 3: the plateau clock no longer restarts when a batch-mate finishes, patience 1200):
        # reconstructions made before are made again.
        key["stage1_loop"] = 3
        return key

    def scoring_key(self, scored: bool) -> dict[str, Any]:
        """The settings a capture's scored rows depend on (stage 1's included)."""
        key = {**self.stage1_key(), "griffin_lim_iters": self.griffin_lim_iters}
        # PESQ on 16-bit PCM (attacks.scoring.pcm16): rows scored on floats are rescored.
        key["pesq_input"] = "pcm16"
        key["scored"] = scored
        # The random guess (guess_* columns) is scored with the rows: older rows lack it.
        key["random_guess"] = "stage1-start" if scored else None
        if scored:
            key["speaker"] = self.speaker_model if self.speaker else None
            if self.speaker:
                key["verifier"] = [self.verifier_speakers, self.verifier_clips]
            key["content"] = [self.content_epochs, self.content_max_clips] if self.content else None
        return key


def _stage1_names() -> list[str]:
    """The fields :class:`AuditSettings` shares with :class:`Stage1Settings`."""
    return [f.name for f in dataclasses.fields(AuditSettings) if f.name in _STAGE1]
