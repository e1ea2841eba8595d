"""Simulation configuration: one dataclass, filled from defaults, a TOML file and flags.

Precedence, lowest first: field defaults, ``--config FILE`` (TOML), command-line flags.
Keys may be written with hyphens or underscores (``capture-clients`` = ``capture_clients``).

Two tasks share the keys: ``kws`` (keyword spotting, the default) and ``sdd`` (speech-deepfake
detection). The keys in :data:`TASK_DEFAULTS` take their default from the task unless they were
set explicitly; keys that only one task reads (:data:`KWS_ONLY`, :data:`SDD_ONLY`) are an error
when set for the other task.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedspeech.errors import ConfigError

SHARE_MODES = ("update", "gradient")
STRATEGIES = ("fedavg", "fedprox", "fedadam")
TASKS = ("kws", "sdd")
NORMALIZE = ("peak", "none")
# ``--alignment``: the aligners of fedspeech.training.aligners, plus RoGA.
ROGA = "roga"
# ``--roga-domains``: what RoGA's domains are (see fedspeech.training.sdd); the first, each
# clip's attack type, is the default.
ROGA_DOMAINS = ("attack", "speaker", "path")


def check_roga_domains(kind: str) -> None:
    """Raise :class:`ConfigError` unless ``kind`` is one of :data:`ROGA_DOMAINS`."""
    if kind not in ROGA_DOMAINS:
        raise ConfigError(f"unknown --roga-domains {kind!r}; known: {', '.join(ROGA_DOMAINS)}")


# Keys whose default depends on the task (applied unless the key was set explicitly).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "kws": {
        "dataset": "synth",
        "model": "kws-cnn",
        "lr": 0.1,
        "batch_size": 16,
        "rounds": 30,
        "local_steps": 0,
        "fraction": 0.2,
    },
    # Sized so that ``fedspeech simulate --task sdd --clients 50`` finishes in well under
    # 15 minutes on two shared CPU cores (see README, "Speech-deepfake detection").
    "sdd": {
        "dataset": "builtin",
        "model": "aasist-xs",
        "fraction": 0.1,
        "lr": 3e-3,
        "batch_size": 16,
        "rounds": 12,
        "local_steps": 10,
    },
}
# Keys only keyword spotting reads, and keys only speech-deepfake detection reads.
KWS_ONLY = (
    "words",
    "normalize",
    "frontend",
    "activation",
    "synth_speakers",
    "synth_takes",
)
SDD_ONLY = (
    "augment",
    "alignment",
    "optimizer",
    "clip_samples",
    "test_clips",
    "bonafide_root",
    "roga_rho",
    "roga_alpha",
    "roga_domains",
    "dropout",
)
# Keys whose command-line flag is not ``--key`` (the flag switches the default off).
_NEGATED_FLAGS = {"dropout": "--no-dropout"}


@dataclass
class SimConfig:
    """Everything a simulation run needs; see ``fedspeech simulate --help``."""

    task: str = "kws"
    dataset: str = "synth"
    data_root: str | None = None
    words: str | None = None
    normalize: str = "peak"
    frontend: str = "mel"
    model: str = "kws-cnn"
    activation: str = "relu"
    clients: int = 10
    fraction: float = 0.2
    rounds: int = 30
    partition: str = "speaker"
    alpha: float = 0.5
    share: str = "update"
    local_epochs: int = 3
    local_steps: int = 0
    batch_size: int = 16
    lr: float = 0.1
    momentum: float = 0.0
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_lr: float = 0.01
    capture_clients: str = "1"
    seed: int = 0
    out: str | None = None
    ray_address: str | None = None
    cpus_per_client: float = 1.0
    synth_speakers: int = 200
    synth_takes: int = 3
    augment: str = "rawboost:4"
    alignment: str = "pcgrad"
    optimizer: str = "adam"
    clip_samples: int = 4000
    test_clips: int = 400
    bonafide_root: str | None = None
    roga_rho: float = 0.1
    roga_alpha: float = 2e-4
    roga_domains: str = ROGA_DOMAINS[0]
    dropout: bool = True
    audit: bool = False
    audit_iterations: int = 8000
    audit_threads: int = 0
    progress: bool = True
    # Keys set explicitly (by a file, flags or a mapping); not a setting itself.
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    # ------------------------------------------------------------------ building
    @classmethod
    def keys(cls) -> list[str]:
        """Names of the settable keys (underscore form)."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "explicit"]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> SimConfig:
        """Build from a mapping, rejecting unknown keys and coercing types."""
        return cls().updated(values, source)

    def updated(self, values: Mapping[str, Any], source: str = "config") -> SimConfig:
        """A copy with ``values`` applied on top (``None`` values are ignored)."""
        known = {f.name: f for f in dataclasses.fields(self) if f.name != "explicit"}
        changes: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                names = ", ".join(k.replace("_", "-") for k in sorted(known))
                raise ConfigError(f"unknown config key {raw_key!r} in {source}; known: {names}")
            if value is None:
                continue
            changes[key] = _coerce(key, value, known[key], source)
        explicit = self.explicit | {k for k in changes if k != "progress"}
        task = changes.get("task", self.task)
        for key, default in TASK_DEFAULTS.get(task, {}).items():
            if key not in explicit:
                changes[key] = default
        new = dataclasses.replace(self, explicit=frozenset(explicit), **changes)
        new.validate()
        return new

    @classmethod
    def from_toml(cls, path: str | Path) -> SimConfig:
        """Load a TOML file; a ``[simulate]`` table, if present, holds the keys."""
        return cls().updated(read_toml(path), str(path))

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` on values no run could use."""
        if self.clients < 1:
            raise ConfigError(f"--clients must be at least 1, got {self.clients}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {self.rounds}")
        if self.share not in SHARE_MODES:
            raise ConfigError(
                f"--share must be one of {', '.join(SHARE_MODES)}, got {self.share!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        self._validate_task_keys()
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.local_epochs < 0 or self.local_steps < 0:
            raise ConfigError("--local-epochs and --local-steps must not be negative")
        if self.local_epochs == 0 and self.local_steps == 0:
            raise ConfigError("one of --local-epochs or --local-steps must be positive")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.alpha <= 0:
            raise ConfigError(f"--alpha must be positive, got {self.alpha}")
        if self.cpus_per_client <= 0:
            raise ConfigError(f"--cpus-per-client must be positive, got {self.cpus_per_client}")
        if self.normalize not in NORMALIZE:
            raise ConfigError(
                f"--normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}"
            )
        if self.audit_iterations < 1:
            raise ConfigError(f"--audit-iterations must be at least 1, got {self.audit_iterations}")
        if self.audit_threads < 0:
            raise ConfigError(f"--audit-threads must not be negative, got {self.audit_threads}")
        if self.audit and self.capture_count() == 0:
            raise ConfigError("--audit needs captures: --capture-clients must not be 0")
        self.capture_count()  # validates the spelling
        if self.task == "sdd":
            self._validate_sdd()

    def _validate_task_keys(self) -> None:
        """Keys that only the other task reads must not be set."""
        other = SDD_ONLY if self.task == "kws" else KWS_ONLY
        misused = [k for k in other if k in self.explicit]
        if misused:
            flags = ", ".join(_NEGATED_FLAGS.get(k, "--" + k.replace("_", "-")) for k in misused)
            raise ConfigError(f"{flags} cannot be used with --task {self.task}")

    def _validate_sdd(self) -> None:
        """Values only speech-deepfake detection reads (names behind their registries)."""
        from fedspeech.augment import build_augmentation
        from fedspeech.training.aligners import ALIGNERS
        from fedspeech.training.dual_path import OPTIMIZERS

        if self.share != "update":
            raise ConfigError("--task sdd trains locally and shares updates; use --share update")
        if self.strategy == "fedprox":
            raise ConfigError(
                "--strategy fedprox is not available with --task sdd (the dual-path "
                "step has no proximal term); use fedavg or fedadam"
            )
        aug = build_augmentation(self.augment)
        if aug.domain != "wave":
            raise ConfigError(
                f"--augment {self.augment!r} works on spectral features; --task sdd "
                "models take raw waveforms (use rawboost:N)"
            )
        known = [*ALIGNERS.names(), ROGA]
        if self.alignment not in known:
            raise ConfigError(
                f"unknown alignment {self.alignment!r}; known: {', '.join(sorted(known))}"
            )
        OPTIMIZERS.get(self.optimizer)
        if self.clip_samples < 1:
            raise ConfigError(f"--clip-samples must be positive, got {self.clip_samples}")
        if self.test_clips < 0:
            raise ConfigError(f"--test-clips must not be negative, got {self.test_clips}")
        if self.roga_rho < 0 or self.roga_alpha < 0:
            raise ConfigError("--roga-rho and --roga-alpha must not be negative")
        check_roga_domains(self.roga_domains)

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
        """How many clients Flower's FedAvg samples each round."""
        return max(1, int(self.clients * self.fraction))

    # ------------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settable keys (hyphenated, ``None`` values dropped)."""
        out: dict[str, Any] = {}
        skip = SDD_ONLY if self.task == "kws" else KWS_ONLY
        for key in self.keys():
            if key in skip:
                continue
            value = getattr(self, key)
            if value is not None:
                out[key.replace("_", "-")] = value
        return out

    def to_toml(self) -> str:
        """The resolved configuration as TOML text."""
        lines = ["# fedspeech simulate: resolved configuration", "[simulate]"]
        for key, value in self.to_dict().items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a flat mapping (``[simulate]`` table or top level).

    An ``[experiment]`` table beside ``[simulate]`` is left to experiment runners (such as
    ``experiments/dpda.py``, which reads its grid of runs from it) and ignored here.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    if "simulate" in data and isinstance(data["simulate"], dict):
        rest = {k: v for k, v in data.items() if k not in ("simulate", "experiment")}
        if rest:
            raise ConfigError(
                f"config file {p}: keys outside [simulate]: {', '.join(sorted(rest))}"
            )
        return dict(data["simulate"])
    return data


def _coerce(key: str, value: Any, fld: dataclasses.Field[Any], source: str) -> Any:
    kind = str(fld.type).removesuffix(" | None")
    flag = key.replace("_", "-")
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes"):
                return True
            if str(value).lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if kind == "str":
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} in {source}: expected {kind}, got {value!r}") from None
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
