"""Run settings, each declared once.

Every setting of ``fedspeech simulate`` is one field of :class:`SimConfig`, declared with
:func:`setting`: its type (the annotation), default, per-task defaults, help text, group,
allowed values or range, and which tasks read it. Everything else is derived from that one
declaration: the argparse flags (:mod:`fedspeech.cli`), the TOML reader and writer, the
Flower App config (``flwr run .``) and the validation of types and ranges. The same field
metadata keys (``help``, ``choices``, ``flag``, ``minimum``, ...) describe the audit's
settings, whose dataclasses live with the audit and the attack library.

Precedence, lowest first: field defaults (or the task's default), ``--config FILE`` (TOML),
command-line flags. Keys may be written with hyphens or underscores (``capture-clients`` =
``capture_clients``). Names behind a registry (model, front-end, alignment, ...) are checked
by the task plugins (:func:`fedspeech.tasks.check_config`), which own those registries'
layers; this module checks types, ranges and fixed choices only.

Examples
--------
>>> cfg = SimConfig.from_mapping({"task": "sdd", "clients": 5})
>>> (cfg.model, cfg.lr, cfg.clients)
('aasist-xs', 0.003, 5)
>>> SimConfig.from_mapping({"lr": float("nan")})
Traceback (most recent call last):
...
fedspeech.errors.ConfigError: --lr must be a finite number, got nan
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedspeech.capture.format import LR_SCHEDULES
from fedspeech.errors import ConfigError

#: The largest seed: numpy takes any, but 32 bits is what every seeded library accepts.
SEED_MAX = 2**32 - 1

# Settings about one invocation, not the run: left out of a run's config.toml, so that a
# config.toml fed back with --config never replaces a run unasked.
_NOT_RECORDED = ("overwrite", "resume")

#: ``--dp`` modes (see :mod:`fedspeech.training.defense`).
DP_MODES = ("none", "central", "local", "sgd")

#: Help groups of ``fedspeech simulate --help``, in display order.
GROUPS: dict[str, str] = {
    "task": "task",
    "data": "data",
    "model": "model",
    "federation": "federation",
    "sharing": "what clients share",
    "defense": "defenses (what a client does to its update before sending it)",
    "capture": "capture (the honest-but-curious server)",
    "audit": "audit after each round (--audit)",
    "dual-path": "dual-path training (clean and augmented paths, gradient alignment)",
    "sdd": "speech-deepfake detection (--task sdd)",
    "ray": "Ray",
    "output": "output",
}


def setting(
    default: Any,
    help: str,
    *,
    group: str,
    tasks: Sequence[str] | None = None,
    task_defaults: Mapping[str, Any] | None = None,
    choices: Sequence[str] | None = None,
    registry: str | None = None,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    flag: str | None = None,
    metavar: str | None = None,
) -> Any:
    """Declare one setting: a dataclass field whose metadata drives parsers and checks.

    Parameters
    ----------
    default
        The default (of the first task, ``kws``, where ``task_defaults`` overrides it).
    help : str
        One line for ``--help``. For a switch that is on by default, it describes the
        ``flag`` that turns it off (``--no-dropout``, ``--quiet``).
    group : str
        A key of :data:`GROUPS`.
    tasks : sequence of str, optional
        The tasks that read the setting (None: all); setting it for another task is an error.
    task_defaults : mapping, optional
        Task name -> default for that task, applied unless the key was set explicitly.
    choices : sequence of str, optional
        Fixed allowed values.
    registry : str, optional
        The name registry whose names are allowed (checked by :mod:`fedspeech.tasks`).
    minimum, above, maximum : float, optional
        ``value >= minimum``, ``value > above``, ``value <= maximum``.
    flag : str, optional
        The command-line flag when it is not ``--`` + the hyphenated name (``--no-dropout``).
    metavar : str, optional
        Placeholder shown in ``--help``.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown settings group {group!r}")
    meta = {
        "help": help,
        "group": group,
        "tasks": tuple(tasks) if tasks is not None else None,
        "task_defaults": dict(task_defaults or {}),
        "choices": tuple(choices) if choices is not None else None,
        "registry": registry,
        "minimum": minimum,
        "above": above,
        "maximum": maximum,
        "flag": flag,
        "metavar": metavar,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SettingInfo:
    """What one dataclass field declares, resolved (see :func:`setting`)."""

    name: str
    type: type
    optional: bool
    default: Any
    help: str
    group: str | None
    tasks: tuple[str, ...] | None
    task_defaults: Mapping[str, Any]
    choices: tuple[str, ...] | None
    registry: str | None
    minimum: float | None
    above: float | None
    maximum: float | None
    flag: str
    metavar: str | None

    @property
    def key(self) -> str:
        """The hyphenated key of TOML files and the Flower run config."""
        return self.name.replace("_", "-")

    def coerce(self, value: Any, source: str) -> Any:
        """``value`` as this setting's type; :class:`ConfigError` naming the key otherwise."""
        if value is None and self.optional:
            return None
        kind = self.type
        try:
            if kind is bool:
                if isinstance(value, bool):
                    return value
                text = str(value).lower()
                if text in ("1", "true", "yes"):
                    return True
                if text in ("0", "false", "no"):
                    return False
                raise ValueError
            if isinstance(value, bool) or isinstance(value, (dict, list)):
                raise ValueError
            if kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                return int(value)
            if kind is float:
                return float(value)
            return str(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(
                f"{self.key} in {source}: expected {kind.__name__}, got {value!r}"
            ) from None

    def check(self, value: Any) -> None:
        """Raise :class:`ConfigError` naming the flag if ``value`` is out of range or choice."""
        if value is None:
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{self.flag} must be a finite number, got {value}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"{self.flag} must be one of {', '.join(self.choices)}, got {value!r}"
            )
        if self.above is not None and self.maximum is not None:
            if not self.above < value <= self.maximum:
                interval = f"({_num(self.above)}, {_num(self.maximum)}]"
                raise ConfigError(f"{self.flag} must be in {interval}, got {value}")
        if self.above is not None and not value > self.above:
            bound = "positive" if self.above == 0 else f"greater than {_num(self.above)}"
            raise ConfigError(f"{self.flag} must be {bound}, got {value}")
        if self.minimum is not None and not value >= self.minimum:
            bound = "not be negative" if self.minimum == 0 else f"be at least {_num(self.minimum)}"
            raise ConfigError(f"{self.flag} must {bound}, got {value}")
        if self.maximum is not None and not value <= self.maximum:
            raise ConfigError(f"{self.flag} must be at most {_num(self.maximum)}, got {value}")

    def default_for(self, task: str) -> Any:
        """The default of this setting for ``task``."""
        return self.task_defaults.get(task, self.default)


def _num(bound: float) -> str:
    """A range bound as written: whole numbers in full (a seed's 4294967295, not 4.29e+09)."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


_SETTINGS: dict[type, tuple[SettingInfo, ...]] = {}


def settings_of(cls: type) -> tuple[SettingInfo, ...]:
    """The settings a dataclass declares, in field order (fields without ``help`` skipped).

    Works on any dataclass whose fields carry :func:`setting`-style metadata (at least
    ``help``); the audit's and the attack's settings use the same keys.
    """
    if cls in _SETTINGS:
        return _SETTINGS[cls]
    hints = typing.get_type_hints(cls)
    out = []
    for fld in dataclasses.fields(cls):
        meta = fld.metadata
        if "help" not in meta:
            continue
        kind, optional = _unwrap(hints[fld.name])
        if fld.default is not dataclasses.MISSING:
            default = fld.default
        elif fld.default_factory is not dataclasses.MISSING:
            default = fld.default_factory()
        else:
            default = None
        out.append(
            SettingInfo(
                name=fld.name,
                type=kind,
                optional=optional,
                default=default,
                help=meta["help"],
                group=meta.get("group"),
                tasks=meta.get("tasks"),
                task_defaults=meta.get("task_defaults") or {},
                choices=meta.get("choices"),
                registry=meta.get("registry"),
                minimum=meta.get("minimum"),
                above=meta.get("above"),
                maximum=meta.get("maximum"),
                flag=meta.get("flag") or "--" + fld.name.replace("_", "-"),
                metavar=meta.get("metavar"),
            )
        )
    _SETTINGS[cls] = tuple(out)
    return _SETTINGS[cls]


def _unwrap(hint: Any) -> tuple[type, bool]:
    """``(type, optional)`` of an annotation such as ``int``, ``str | None``."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def check_settings(obj: Any) -> None:
    """Check every declared setting of a dataclass instance against its declaration."""
    for info in settings_of(type(obj)):
        info.check(getattr(obj, info.name))


@dataclass(frozen=True)
class SimConfig:
    """Everything a simulation run needs; see ``fedspeech simulate --help``.

    Build it with :meth:`from_mapping`, :meth:`from_toml` or :meth:`updated`, which coerce
    types, apply the task's defaults and validate.
    """

    task: str = setting(
        "kws",
        "kws (keyword spotting) or sdd (speech-deepfake detection)",
        group="task",
        registry="task",
    )
    dataset: str = setting(
        "synth",
        "dataset name (the built-in corpus is built and cached on first use)",
        group="data",
        task_defaults={"sdd": "builtin"},
        registry="dataset",
    )
    data_root: str | None = setting(
        None, "dataset folder (built-in corpus: the cache)", group="data", metavar="DIR"
    )
    words: str | None = setting(
        None,
        "comma-separated words, or 'all' (Speech Commands; default: the 10-word subset)",
        group="data",
        tasks=("kws",),
    )
    normalize: str = setting(
        "peak",
        "per-clip gain before the front-end",
        group="data",
        tasks=("kws",),
        choices=("peak", "none"),
    )
    synth_speakers: int = setting(
        200, "speakers in the built-in corpus", group="data", tasks=("kws",), minimum=1
    )
    synth_takes: int = setting(
        3,
        "takes per word and speaker in the built-in corpus",
        group="data",
        tasks=("kws",),
        minimum=1,
    )
    partition: str = setting(
        "speaker", "how clips are split over clients", group="data", registry="partition"
    )
    alpha: float = setting(
        0.5, "Dirichlet concentration of --partition dirichlet", group="data", above=0
    )
    frontend: str = setting(
        "mel", "front-end features", group="model", tasks=("kws",), registry="frontend"
    )
    model: str = setting(
        "kws-cnn",
        "model name",
        group="model",
        task_defaults={"sdd": "aasist-xs"},
        registry="model",
    )
    init_weights: str | None = setting(
        None,
        "start the global model from these weights: a model.safetensors, a run folder, or a "
        "published AASIST/AASIST-L .pth (read with weights_only=True)",
        group="model",
        metavar="PATH",
    )
    activation: str = setting(
        "relu",
        "model activation",
        group="model",
        tasks=("kws",),
        choices=("relu", "sigmoid", "tanh"),
    )
    clients: int = setting(10, "number of simulated clients", group="federation", minimum=1)
    fraction: float = setting(
        0.2,
        "fraction of clients sampled per round, in (0, 1]",
        group="federation",
        task_defaults={"sdd": 0.1},
        above=0,
        maximum=1,
    )
    min_clients: int = setting(
        2,
        "fewest clients sampled per round (a round averages at least this many replies)",
        group="federation",
        minimum=1,
    )
    round_timeout: float = setting(
        600.0,
        "seconds the server waits for a round's replies; a client slower than this counts "
        "as failed",
        group="federation",
        above=0,
        metavar="S",
    )
    rounds: int = setting(
        30, "federated rounds", group="federation", task_defaults={"sdd": 12}, minimum=1
    )
    strategy: str = setting(
        "fedavg", "server strategy", group="federation", choices=("fedavg", "fedprox", "fedadam")
    )
    proximal_mu: float = setting(0.01, "FedProx proximal term", group="federation", minimum=0)
    server_lr: float = setting(0.01, "FedAdam server learning rate", group="federation", above=0)
    seed: int = setting(
        0,
        "seed of data, partition, sampling and initial weights",
        group="federation",
        minimum=0,
        maximum=SEED_MAX,
    )
    share: str = setting(
        "update",
        "what clients send: update (new weights) or gradient (one step)",
        group="sharing",
        choices=("update", "gradient"),
    )
    local_epochs: int = setting(
        3, "local epochs per round (share=update)", group="sharing", minimum=0
    )
    local_steps: int = setting(
        0,
        "exact local steps per round; overrides --local-epochs (0: use epochs)",
        group="sharing",
        task_defaults={"sdd": 10},
        minimum=0,
    )
    batch_size: int = setting(
        16,
        "local batch size (1 = the leakage study's threat model)",
        group="sharing",
        minimum=1,
    )
    lr: float = setting(
        0.1, "client learning rate", group="sharing", task_defaults={"sdd": 3e-3}, above=0
    )
    lr_schedule: str = setting(
        "constant",
        "client learning rate over the rounds: constant, or cosine (annealed from --lr in "
        "round 1 to --lr-min in the last)",
        group="sharing",
        choices=LR_SCHEDULES,
    )
    lr_min: float = setting(
        0.0, "the last round's learning rate of --lr-schedule cosine", group="sharing", minimum=0
    )
    clip_norm: float = setting(
        5.0,
        "clip each local step's gradient to this L2 norm (0: no clipping; share=update)",
        group="sharing",
        tasks=("kws",),
        minimum=0,
    )
    # Above 1 the velocity grows without bound: the run would only diverge.
    momentum: float = setting(
        0.0, "client SGD momentum, in [0, 1]", group="sharing", minimum=0, maximum=1
    )
    dp: str = setting(
        "none",
        "differential privacy: central (client clips, server adds noise after aggregating), "
        "local (client clips and adds noise), sgd (DP-SGD in local training, Opacus)",
        group="defense",
        choices=DP_MODES,
    )
    dp_clip: float | None = setting(
        None,
        "L2 bound C of a client's update (central, local) or of each sample's gradient (sgd)",
        group="defense",
        above=0,
        metavar="C",
    )
    dp_noise: float = setting(
        1.0,
        "noise multiplier Z: Gaussian noise of standard deviation Z*C",
        group="defense",
        minimum=0,
        metavar="Z",
    )
    dp_delta: float = setting(
        1e-5,
        "delta of the reported privacy budget epsilon",
        group="defense",
        above=0,
        maximum=0.5,
    )
    prune_ratio: float = setting(
        0.0,
        "fraction of the update's entries of smallest magnitude a client zeroes, in [0, 1]",
        group="defense",
        minimum=0,
        maximum=1,
        metavar="P",
    )
    quantize_bits: int | None = setting(
        None,
        "send the update uniformly quantised to this many bits per tensor (1-16)",
        group="defense",
        minimum=1,
        maximum=16,
        metavar="B",
    )
    secagg: bool = setting(
        False,
        "secure aggregation: the server learns only the round's aggregate (emulated, "
        "see docs/defenses.md); it captures that aggregate",
        group="defense",
    )
    capture_clients: str = setting(
        "1", "clients captured per round: a number or 'all'", group="capture", metavar="N"
    )
    audit: bool = setting(
        False,
        "attack the captured clients after each round; leakage per round in metrics.json, "
        "accuracy.png and audit/",
        group="audit",
    )
    audit_iterations: int | None = setting(
        None,
        "stage-1 steps per restart, a cap (default: fedspeech audit's --iterations)",
        group="audit",
        minimum=1,
    )
    audit_preset: str | None = setting(
        None,
        "stage-1 preset of the audit: study = the study's constant step size "
        "(default: fedspeech audit's faster schedule)",
        group="audit",
        choices=("study",),
    )
    audit_threads: int = setting(
        0, "torch threads of the attack (0 = every core)", group="audit", minimum=0
    )
    augment: str = setting(
        "none",
        "augmentation of the second path of dual-path training: rawboost:N (N = 1-8) or "
        "noise:LOW[:HIGH] on waveforms, specaugment:F[:M] on features (kws), none (kws: "
        "plain local SGD, no second path)",
        group="dual-path",
        task_defaults={"sdd": "rawboost:4"},
        registry="augmentation",
    )
    alignment: str = setting(
        "pcgrad",
        "local trainer of dual-path training: a gradient aligner or RoGA (sdd)",
        group="dual-path",
        registry="alignment",
    )
    optimizer: str = setting(
        "sgd",
        "local optimizer of dual-path training",
        group="dual-path",
        task_defaults={"sdd": "adam"},
        registry="optimizer",
    )
    weight_decay: float = setting(
        0.0,
        "L2 weight decay of the dual-path optimizer (Adam's or SGD's weight_decay)",
        group="dual-path",
        minimum=0,
    )
    clip_samples: int = setting(
        4000, "clip length in samples at 16 kHz", group="sdd", tasks=("sdd",), above=0
    )
    test_clips: int = setting(
        400,
        "test clips scored each round (fixed random subset; 0 = all)",
        group="sdd",
        tasks=("sdd",),
        minimum=0,
    )
    bonafide_root: str | None = setting(
        None,
        "build the built-in spoof corpus from this speech folder",
        group="sdd",
        tasks=("sdd",),
        metavar="DIR",
    )
    roga_rho: float = setting(0.1, "RoGA ascent radius", group="sdd", tasks=("sdd",), minimum=0)
    roga_alpha: float = setting(
        2e-4, "RoGA alignment weight", group="sdd", tasks=("sdd",), minimum=0
    )
    roga_domains: str = setting(
        "attack",
        "RoGA's domains: attack (attack id, bona fide its own), speaker, or path "
        "(clean vs augmented)",
        group="sdd",
        tasks=("sdd",),
        registry="roga-domains",
    )
    dropout: bool = setting(
        True,
        "train AASIST without dropout (the audit's best case: the server can then "
        "reproduce the client's network exactly)",
        group="sdd",
        tasks=("sdd",),
        flag="--no-dropout",
    )
    ray_address: str | None = setting(
        None,
        "address of an existing Ray cluster (default: start a local one)",
        group="ray",
        metavar="HOST:PORT",
    )
    # Ray refuses resource quantities finer than 0.0001.
    cpus_per_client: float = setting(1.0, "Ray CPUs reserved per client", group="ray", minimum=1e-4)
    out: str | None = setting(
        None, "run folder (default runs/<timestamp>)", group="output", metavar="DIR"
    )
    overwrite: bool = setting(
        False,
        "replace the run already in --out (its captures, truth, audit, data, metrics, plots)",
        group="output",
    )
    resume: str | None = setting(
        None,
        "continue the interrupted run in RUN_DIR from its last completed round (its "
        "config.toml gives the settings; no other flags but --quiet)",
        group="output",
        metavar="RUN_DIR",
    )
    progress: bool = setting(
        True, "no progress output (bars, the line per round)", group="output", flag="--quiet"
    )
    # Keys set explicitly (by a file, flags or a mapping); not a setting itself.
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ building
    @classmethod
    def keys(cls) -> list[str]:
        """Names of the settable keys (underscore form)."""
        return [info.name for info in settings_of(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> SimConfig:
        """Build from a mapping, rejecting unknown keys and coercing types."""
        return cls().updated(values, source)

    def updated(self, values: Mapping[str, Any], source: str = "config") -> SimConfig:
        """A copy with ``values`` applied on top (``None`` values are ignored)."""
        known = {info.name: info for info in settings_of(type(self))}
        changes: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                names = ", ".join(sorted(info.key for info in known.values()))
                raise ConfigError(f"unknown config key {raw_key!r} in {source}; known: {names}")
            if value is None:
                continue
            changes[key] = known[key].coerce(value, source)
        explicit = self.explicit | {k for k in changes if k != "progress"}
        task = changes.get("task", self.task)
        for info in known.values():
            if info.task_defaults and info.name not in explicit:
                changes[info.name] = info.default_for(task)
        return dataclasses.replace(self, explicit=frozenset(explicit), **changes)

    @classmethod
    def from_toml(cls, path: str | Path) -> SimConfig:
        """Load a TOML file; a ``[simulate]`` table, if present, holds the keys."""
        return cls().updated(read_toml(path), str(path))

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` on values no run could use (types, ranges, choices).

        Names behind registries are checked by :func:`fedspeech.tasks.check_config`.
        """
        self._validate_task_keys()
        check_settings(self)
        if self.local_epochs == 0 and self.local_steps == 0:
            raise ConfigError("one of --local-epochs or --local-steps must be positive")
        count = self.capture_count()  # validates the spelling
        if count is not None and count > self.clients:
            raise ConfigError(
                f"--capture-clients {count} is more than --clients {self.clients} "
                "(use 'all' to capture every client)"
            )
        if self.audit and count == 0:
            raise ConfigError("--audit needs captures: --capture-clients must not be 0")
        if self.lr_schedule == "constant" and "lr_min" in self.explicit:
            raise ConfigError("--lr-min needs --lr-schedule cosine")
        if self.lr_schedule != "constant" and self.share == "gradient":
            raise ConfigError("--lr-schedule is for local training; use it with --share update")
        if self.lr_min > self.lr:
            raise ConfigError(f"--lr-min {self.lr_min:g} is above --lr {self.lr:g}")
        self._validate_defense()

    def _validate_defense(self) -> None:
        """The DP flags go together: a mode needs its clip bound, a bound needs a mode."""
        if self.dp != "none" and self.dp_clip is None:
            raise ConfigError(f"--dp {self.dp} needs --dp-clip (the L2 bound C)")
        if self.dp == "none":
            stray = [
                f
                for f, k in (("--dp-clip", "dp_clip"), ("--dp-noise", "dp_noise"))
                if k in self.explicit
            ]
            if stray:
                raise ConfigError(f"{', '.join(stray)} needs --dp central, local or sgd")
        if self.dp == "sgd" and self.share != "update":
            raise ConfigError("--dp sgd needs --share update (DP-SGD is local training)")

    def _validate_task_keys(self) -> None:
        """Keys that only another task reads must not be set."""
        misused = [
            info.flag
            for info in settings_of(type(self))
            if info.tasks is not None and self.task not in info.tasks and info.name in self.explicit
        ]
        if misused:
            raise ConfigError(f"{', '.join(misused)} cannot be used with --task {self.task}")

    def capture_count(self) -> int | None:
        """Clients captured per round: ``None`` means all."""
        text = str(self.capture_clients).strip().lower()
        if text == "all":
            return None
        try:
            n = int(text)
        except ValueError:
            raise ConfigError(
                f"--capture-clients must be a number or 'all', got {self.capture_clients!r}"
            ) from None
        if n < 0:
            raise ConfigError(f"--capture-clients must not be negative, got {n}")
        return n

    def clients_per_round(self) -> int:
        """How many clients the server samples each round.

        ``--fraction`` of the clients, but at least ``--min-clients`` (a round of one
        client is that client's model, not an average) and at most ``--clients``.

        Examples
        --------
        >>> SimConfig.from_mapping({"clients": 6}).clients_per_round()  # 6 * 0.2 = 1.2
        2
        >>> SimConfig.from_mapping({"clients": 6, "min_clients": 1}).clients_per_round()
        1
        >>> SimConfig.from_mapping({"clients": 1}).clients_per_round()
        1
        """
        wanted = max(self.min_clients, int(self.clients * self.fraction))
        return min(self.clients, wanted)

    # ------------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the keys this task reads (hyphenated, ``None`` values dropped)."""
        out: dict[str, Any] = {}
        for info in settings_of(type(self)):
            if info.tasks is not None and self.task not in info.tasks:
                continue
            if info.name in _NOT_RECORDED:
                continue
            if self.dp == "none" and info.name in ("dp_noise", "dp_delta"):
                continue  # they mean nothing without --dp; fed back, they would be an error
            if self.task == "kws" and self.augment == "none":
                if info.name in ("alignment", "optimizer", "weight_decay"):
                    continue  # likewise without a second path
            if self.lr_schedule == "constant" and info.name == "lr_min":
                continue
            value = getattr(self, info.name)
            if value is not None:
                out[info.key] = value
        return out

    def to_toml(self) -> str:
        """The resolved configuration as TOML text (``[simulate]`` table)."""
        header = "# fedspeech simulate: resolved configuration\n"
        return header + tomli_w.dumps({"simulate": self.to_dict()})


def task_defaults(task: str) -> dict[str, Any]:
    """Keys whose default for ``task`` differs from the declared default, with that value."""
    return {
        info.name: info.task_defaults[task]
        for info in settings_of(SimConfig)
        if task in info.task_defaults
    }


def task_only_keys(task: str) -> tuple[str, ...]:
    """Keys that only ``task`` reads."""
    return tuple(
        info.name
        for info in settings_of(SimConfig)
        if info.tasks is not None and tuple(info.tasks) == (task,)
    )


def read_toml_file(path: Path, what: str) -> dict[str, Any]:
    """The whole TOML document at ``path``; :class:`ConfigError` naming ``what`` otherwise."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a flat mapping (``[simulate]`` table or top level).

    An ``[experiment]`` table beside ``[simulate]`` is left to experiment runners (such as
    ``experiments/dpda.py``, which reads its grid of runs from it) and ignored here.
    """
    p = Path(path)
    data = read_toml_file(p, "config file")
    if "simulate" in data and isinstance(data["simulate"], dict):
        rest = {k: v for k, v in data.items() if k not in ("simulate", "experiment")}
        if rest:
            raise ConfigError(
                f"config file {p}: keys outside [simulate]: {', '.join(sorted(rest))}"
            )
        return dict(data["simulate"])
    return data
