"""``fedspeech sweep SWEEP.toml --out DIR``: every defense, its utility and its leakage.

A sweep file names two base configurations (``utility``: a federated run trained for
accuracy; ``leakage``: the leakage study's threat model, audited) and a list of variants,
each a set of ``fedspeech simulate`` settings applied to both::

    [sweep]
    utility = "fsdd.toml"            # paths relative to the sweep file
    leakage = "leakage_fsdd.toml"
    utility-settings = { rounds = 10 }
    leakage-settings = { share = "update", local-steps = 1, clip-norm = 0 }
    audit = { iterations = 2000, restarts = 1, workers = 2 }

    [[variant]]
    name = "none"

    [[variant]]
    name = "local-0.1"
    dp = "local"
    dp-clip = 1.0
    dp-noise = 0.1
    leakage = { clients = 8 }        # settings for one of the two runs only

Every variant's settings are checked before anything runs (an unknown key is one line and
exit 2). Each variant then runs in ``DIR/<name>/``: ``utility/`` (``fedspeech simulate``),
``leakage/`` (``fedspeech simulate`` then ``fedspeech audit``), and ``row.json``, written
last: a variant with a ``row.json`` is done, and a sweep run again skips it. The rows are
gathered into ``DIR/frontier.csv``, ``DIR/frontier.md`` and ``DIR/frontier.png`` after
every variant. The runs are subprocesses of this Python (one Ray session each).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import tomli_w

from fedspeech.audit import AuditSettings
from fedspeech.cluster import check_reachable
from fedspeech.config import SimConfig, read_toml, read_toml_file, settings_of
from fedspeech.errors import ConfigError, FedspeechError
from fedspeech.fileio import atomic_save_figure, atomic_write_json, atomic_write_text
from fedspeech.report.html import FRONTIER_COLUMNS, SWEEP_COLUMNS
from fedspeech.tasks import check_config

__all__ = ["FRONTIER_COLUMNS", "Sweep", "Variant", "load_sweep", "run_sweep"]

_LEAK = ("label_accuracy", "f_mse", "pesq_nb", "stoi", "speaker_reid_rate", "content_rate")
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class Variant:
    """One point of the sweep: its name and the resolved configurations of its two runs."""

    name: str
    utility: SimConfig
    leakage: SimConfig

    @property
    def defense(self) -> tuple[str, str]:
        """``(defense, strength)`` for the table, e.g. ``("local DP", "0.1")``."""
        cfg = self.leakage
        if cfg.dp != "none":
            return f"{cfg.dp} DP", f"{cfg.dp_noise:g}"
        if cfg.prune_ratio > 0:
            return "pruning", f"{cfg.prune_ratio:g}"
        if cfg.quantize_bits is not None:
            return "quantisation", f"{cfg.quantize_bits} bits"
        if cfg.secagg:
            return "secure aggregation", f"{cfg.clients_per_round()} clients"
        if cfg.task == "kws" and cfg.augment != "none":
            # Not a defense: dual-path training, whose effect on leakage a sweep can measure.
            return f"dual-path {cfg.alignment}", cfg.augment
        return "none", ""


@dataclass
class Sweep:
    """A parsed sweep file."""

    path: Path
    variants: list[Variant]
    audit: dict[str, Any] = field(default_factory=dict)


def _settings(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of simulate settings")
    return dict(table)


def _base(sweep_path: Path, head: Mapping[str, Any], kind: str) -> dict[str, Any]:
    if kind not in head:
        raise ConfigError(f'sweep file {sweep_path}: [sweep] needs {kind} = "FILE.toml"')
    base = read_toml(sweep_path.parent / str(head[kind]))
    base.update(_settings(head.get(f"{kind}-settings", {}), f"[sweep] {kind}-settings"))
    return base


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file: every variant's two configurations are built.

    Raises
    ------
    ConfigError
        Not TOML, a missing base file, an unknown or bad setting (naming the variant), a
        duplicate or unusable variant name.
    """
    p = Path(path)
    doc = read_toml_file(p, "sweep file")
    head = doc.get("sweep")
    if not isinstance(head, dict):
        raise ConfigError(f"sweep file {p} has no [sweep] table")
    extra = sorted(set(doc) - {"sweep", "variant"})
    if extra:
        raise ConfigError(f"sweep file {p}: unknown table {extra[0]!r} (known: sweep, variant)")
    known_head = {"utility", "leakage", "utility-settings", "leakage-settings", "audit"}
    unknown = sorted(set(head) - known_head)
    if unknown:
        raise ConfigError(f"sweep file {p}: unknown key {unknown[0]!r} in [sweep]")
    bases = {kind: _base(p, head, kind) for kind in ("utility", "leakage")}
    audit = _audit_settings(head.get("audit", {}), p)
    rows = doc.get("variant", [])
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"sweep file {p} has no [[variant]] entries")
    variants: list[Variant] = []
    for i, row in enumerate(rows):
        name = str(row.get("name", "")) if isinstance(row, dict) else ""
        if not name or not set(name) <= _NAME_OK:
            raise ConfigError(
                f"sweep file {p}: variant {i + 1} needs a name of letters, digits, '-', '_', "
                f"'.' (got {name!r})"
            )
        if any(v.name == name for v in variants):
            raise ConfigError(f"sweep file {p}: two variants are named {name!r}")
        common = {k: v for k, v in row.items() if k not in ("name", "utility", "leakage")}
        built = {}
        for kind in ("utility", "leakage"):
            values = {**bases[kind], **common, **_settings(row.get(kind, {}), f"{name}.{kind}")}
            for key in ("out", "overwrite", "resume", "progress", "audit"):
                values.pop(key, None)
            source = f"variant {name!r} ({kind}) of {p}"
            cfg = SimConfig.from_mapping(values, source)
            # Folders as absolute paths: a variant may run elsewhere (a Ray worker's cwd).
            folders = {
                key: str(Path(getattr(cfg, key)).resolve())
                for key in ("data_root", "bonafide_root")
                if getattr(cfg, key) is not None
            }
            cfg = cfg.updated(folders, source)
            check_config(cfg)
            built[kind] = cfg
        variants.append(Variant(name, built["utility"], built["leakage"]))
    return Sweep(p, variants, audit)


def _audit_settings(table: Any, path: Path) -> dict[str, Any]:
    """The ``audit`` table as ``fedspeech audit`` flags (checked against AuditSettings)."""
    values = _settings(table, f"[sweep] audit of {path}")
    infos = {info.name: info for info in settings_of(AuditSettings)}
    out: dict[str, Any] = {}
    for raw, value in values.items():
        key = raw.replace("-", "_")
        if key not in infos:
            raise ConfigError(
                f"sweep file {path}: unknown audit setting {raw!r}; known: "
                + ", ".join(sorted(i.key for i in infos.values()))
            )
        out[key] = infos[key].coerce(value, f"[sweep] audit of {path}")
    AuditSettings(**out)  # checks ranges and choices
    return out


def _audit_flags(audit: Mapping[str, Any]) -> list[str]:
    infos = {info.name: info for info in settings_of(AuditSettings)}
    flags: list[str] = []
    for key, value in audit.items():
        info = infos[key]
        if isinstance(value, bool):
            if value != info.default:
                flags.append(info.flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                flags += [info.flag, str(item)]
        else:
            flags += [info.flag, str(value)]
    return flags


def _run(cmd: list[str], log: Path) -> None:
    """Run a fedspeech command, its output into ``log``; one line naming it if it fails."""
    # A variant on a cluster node starts its own local Ray: it must not join the cluster.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, env=env)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        last = tail[-1] if tail else f"exit code {proc.returncode}"
        raise FedspeechError(f"{' '.join(cmd[2:4])} failed ({last}); its output is in {log}")


def _simulate(cfg: SimConfig, out: Path, log: Path) -> None:
    toml = out.parent / f"{out.name}.toml"
    atomic_write_text(toml, cfg.to_toml())
    cmd = [sys.executable, "-m", "fedspeech", "simulate", "--config", str(toml)]
    _run([*cmd, "--out", str(out), "--overwrite", "--quiet"], log)


def _row(variant: Variant, folder: Path) -> dict[str, Any]:
    """The frontier row of a finished variant."""
    metrics = json.loads((folder / "utility" / "metrics.json").read_text(encoding="utf-8"))
    summary_path = folder / "leakage" / "audit" / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    final = metrics.get("final") or {}
    defense, strength = variant.defense
    grads = summary.get("from_gradients", {})
    row: dict[str, Any] = {
        "variant": variant.name,
        "defense": defense,
        "strength": strength,
        "epsilon": final.get("epsilon"),
        "accuracy": final.get("accuracy"),
        "eer": final.get("eer"),
    }
    rates = [r["conflict_rate"] for r in metrics.get("rounds", []) if "conflict_rate" in r]
    row["conflict_rate"] = sum(rates) / len(rates) if rates else None
    for key in _LEAK:
        row[key] = grads.get(key, {}).get("mean")
    row["n"] = max((s.get("n", 0) for s in grads.values()), default=0)
    guess = summary.get("random_guess") or {}
    row["random_pesq_nb"] = guess.get("pesq_nb")
    row["random_stoi"] = guess.get("stoi")
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }


def run_variant(
    variant: Variant, folder: Path, audit_flags: list[str], on_cluster: bool = False
) -> dict[str, Any]:
    """Utility run, leakage run, audit, then ``row.json``: one variant, start to end.

    Returns the row; with ``on_cluster`` (a Ray task) it also names the node it ran on
    (``node``, in ``row.json`` only).
    """
    folder.mkdir(parents=True, exist_ok=True)
    _simulate(variant.utility, folder / "utility", folder / "utility.log")
    _simulate(variant.leakage, folder / "leakage", folder / "leakage.log")
    row = audit_variant(variant, folder, audit_flags)
    if on_cluster:
        import ray

        row["node"] = ray.get_runtime_context().get_node_id()
        atomic_write_json(folder / "row.json", row, indent=1)
    return row


def audit_variant(variant: Variant, folder: Path, audit_flags: list[str]) -> dict[str, Any]:
    """Audit the variant's leakage run, then write and return its ``row.json``.

    The audit resumes what it can (a capture's stage-1 result made with the same settings
    is reused), so after a change to the scoring only stage 2 and the scores are redone.
    """
    cmd = [sys.executable, "-m", "fedspeech", "audit", str(folder / "leakage"), "--quiet"]
    _run([*cmd, *audit_flags], folder / "audit.log")
    row = _row(variant, folder)
    atomic_write_json(folder / "row.json", row, indent=1)
    return row


def run_sweep(
    sweep: Sweep,
    out: Path,
    *,
    stream: TextIO | None = sys.stderr,
    ray_address: str | None = None,
    cpus_per_variant: float = 1.0,
    reaudit: bool = False,
) -> list[dict[str, Any]]:
    """Run every variant not done yet, then write the frontier files; return the rows.

    With ``ray_address`` the variants run as Ray tasks of ``cpus_per_variant`` CPUs across
    that cluster (every node needs fedspeech and ``out`` at the same path); each variant's
    runs then start their own local Ray on the node that took it. With ``reaudit``, the
    variants done before are audited again (here, one after another) and their rows
    rewritten, their two runs kept: what a change to the audit needs.
    """
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.toml", sweep.path.read_text(encoding="utf-8"))
    atomic_write_text(out / "variants.toml", sweep_toml(sweep))

    def say(msg: str) -> None:
        if stream is not None:
            print(msg, file=stream, flush=True)

    total = len(sweep.variants)
    rows: dict[str, dict[str, Any]] = {}
    todo: list[tuple[int, Variant]] = []
    again: list[tuple[int, Variant]] = []
    for i, variant in enumerate(sweep.variants, 1):
        done = out / variant.name / "row.json"
        if done.is_file():
            rows[variant.name] = json.loads(done.read_text(encoding="utf-8"))
            if reaudit:
                again.append((i, variant))
            else:
                say(f"[{i}/{total}] {variant.name}: done before")
        else:
            todo.append((i, variant))
    flags = _audit_flags(sweep.audit)

    def finished(i: int, variant: Variant, row: dict[str, Any], seconds: float) -> None:
        rows[variant.name] = row
        write_frontier(out, [rows[v.name] for v in sweep.variants if v.name in rows])
        where = f" on node {str(row['node'])[:8]}" if "node" in row else ""
        say(
            f"[{i}/{total}] {variant.name}: accuracy {_fmt(row['accuracy'])}, PESQ-NB "
            f"{_fmt(row['pesq_nb'])}, STOI {_fmt(row['stoi'])}, epsilon "
            f"{_fmt(row['epsilon'])} ({seconds:.0f} s{where})"
        )

    if ray_address and todo:
        _fan_out(todo, out, flags, ray_address, cpus_per_variant, total, say, finished)
    else:
        for i, variant in todo:
            t0 = time.perf_counter()
            say(f"[{i}/{total}] {variant.name}: utility run, leakage run, audit")
            row = run_variant(variant, out / variant.name, flags)
            finished(i, variant, row, time.perf_counter() - t0)
    for i, variant in again:
        t0 = time.perf_counter()
        say(f"[{i}/{total}] {variant.name}: audit again")
        row = audit_variant(variant, out / variant.name, flags)
        finished(i, variant, row, time.perf_counter() - t0)
    ordered = [rows[v.name] for v in sweep.variants if v.name in rows]
    write_frontier(out, ordered)
    say(f"frontier of {len(ordered)} variants in {out / 'frontier.csv'}")
    return ordered


def _fan_out(
    todo: list[tuple[int, Variant]],
    out: Path,
    flags: list[str],
    ray_address: str,
    cpus: float,
    total: int,
    say: Callable[[str], None],
    finished: Callable[[int, Variant, dict[str, Any], float], None],
) -> None:
    """The variants as Ray tasks across the cluster at ``ray_address``, gathered as they end."""
    import logging

    import ray

    check_reachable(ray_address)  # Ray itself would retry for minutes
    ray.init(address=ray_address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cpus)(run_variant)
        start = time.perf_counter()
        pending = {}
        for i, variant in todo:
            ref = task.remote(variant, out / variant.name, flags, True)
            pending[ref] = (i, variant)
            say(f"[{i}/{total}] {variant.name}: sent to the cluster")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i, variant = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.as_instanceof_cause()
                raise FedspeechError(f"variant {variant.name!r}: {cause}") from None
            finished(i, variant, row, time.perf_counter() - start)
    finally:
        ray.shutdown()


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def write_frontier(out: Path, rows: list[dict[str, Any]]) -> None:
    """``frontier.csv``, ``frontier.md`` and ``frontier.png`` from the rows."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FRONTIER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in FRONTIER_COLUMNS})
    atomic_write_text(out / "frontier.csv", buf.getvalue())
    shown = SWEEP_COLUMNS
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = []
        for k in shown:
            v = row.get(k)
            cells.append("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(out / "frontier.md", "\n".join(lines) + "\n")
    _plot(out / "frontier.png", rows)


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["defense"]), []).append(row)
    for ax, metric, label in ((axes[0], "stoi", "STOI"), (axes[1], "pesq_nb", "PESQ-NB")):
        for name, members in groups.items():
            pts = sorted(  # along the leakage axis: one line from weakest to strongest
                (r[metric], r["accuracy"])
                for r in members
                if r.get(metric) is not None and r.get("accuracy") is not None
            )
            if not pts:
                continue
            if name == "none":
                ax.scatter(
                    *zip(*pts, strict=True),
                    marker="*",
                    s=180,
                    color="black",
                    label="undefended",
                    zorder=3,
                )
            else:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        guesses = [r[f"random_{metric}"] for r in rows if r.get(f"random_{metric}") is not None]
        if guesses:
            level = sum(guesses) / len(guesses)
            ax.axvline(level, ls="--", color="grey", label="random guess")
        ax.set_xlabel(f"{label} from the shared update (higher: more leakage)")
        ax.set_ylabel("final test accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Privacy-utility frontier: each defense against the same attack")
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def sweep_toml(sweep: Sweep) -> str:
    """The resolved settings of every variant (what ran), as TOML."""
    return tomli_w.dumps(
        {
            v.name: {"utility": v.utility.to_dict(), "leakage": v.leakage.to_dict()}
            for v in sweep.variants
        }
    )
