"""Command-line interface: ``fedspeech simulate``, ``audit``, ``report``, ``data synth``.

The flags are derived from the settings' declarations (:mod:`fedspeech.config` for
``simulate``, the audit's settings dataclasses for ``audit``): name, type, default, help,
allowed values and group come from there and are written nowhere else.

Bad input ends with one line ``fedspeech: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from fedspeech import __version__
from fedspeech.audit import AUDIT_DIR, AuditSettings, audit_run, summary_table
from fedspeech.audit.settings import GROUPS as AUDIT_GROUPS
from fedspeech.config import GROUPS, SettingInfo, SimConfig, read_toml, settings_of
from fedspeech.data.synth import synthesize_corpus
from fedspeech.errors import ConfigError, FedspeechError, Interrupted

# Imported here, not lazily: ``--help`` lists the names behind each registry.
from fedspeech.tasks.registries import known_names

_SIM_EXAMPLES = """\
examples:
  fedspeech simulate --clients 50
      the main job: 50 clients train a keyword spotter on the built-in eSpeak NG corpus
  fedspeech simulate --dataset fsdd --data-root ../shared/data/fsdd --clients 6 --audit
      real digits, and the server attacks the captured client after every round
  fedspeech simulate --share gradient --batch-size 1 --capture-clients all
      the leakage study's threat model: every client shares one gradient of one clip
  fedspeech simulate --task sdd --clients 50 --alignment roga
      speech-deepfake detection (AASIST) with RoGA local training
  fedspeech simulate --config experiments/fsdd.toml --rounds 5
      settings from a TOML file; flags override it
  fedspeech simulate --config experiments/fsdd.toml --dp local --dp-clip 5 --dp-noise 0.1
      local differential privacy: each client clips its update to norm 5 and adds noise;
      epsilon per round in metrics.json (also --prune-ratio, --quantize-bits, --secagg)
"""

_AUDIT_EXAMPLES = """\
examples:
  fedspeech audit runs/my-run
      attack every capture of the run and score the leakage (RUN_DIR/audit/)
  fedspeech audit runs/my-run --round 5 --max-samples 20 --workers 2
      only round 5, at most 20 samples, stage 1 split over 2 processes
"""


_REPORT_EXAMPLES = """\
examples:
  fedspeech report runs/my-run
      RUN_DIR/report/index.html: settings, utility and leakage per round, one card per
      audited sample with its audio (open it in a browser, from disk)
  fedspeech report runs/my-run --embed
      the same page with audio and images inside it: one file to send
"""

_SWEEP_EXAMPLES = """\
examples:
  fedspeech sweep experiments/defenses.toml --out runs/defenses
      every defense of the file: utility (accuracy, epsilon) and leakage (PESQ, STOI,
      labels, speakers) side by side in runs/defenses/frontier.csv, .md and .png
"""

_METAVARS: dict[type, str] = {int: "N", float: "X"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block, and the same prefix as every other error.
        self.exit(2, f"fedspeech: error: {message}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout; wider help column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def _describe(info: SettingInfo) -> str:
    """Help text with the allowed values and the default(s)."""
    text = info.help
    names: Sequence[str] | None = info.choices
    if names is None and info.registry is not None:
        names = known_names(info.registry)
    if names:
        text += f" {{{', '.join(names)}}}"
    if info.type is bool:
        return text
    defaults = [f"default {info.default}"] if info.default is not None else []
    defaults += [f"{task}: {value}" for task, value in info.task_defaults.items()]
    if defaults:
        text += f" ({'; '.join(defaults)})"
    return text


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    groups: dict[str, Any] | None = None,
    skip: Sequence[str] = (),
) -> None:
    """Add one flag per declared setting of the dataclass ``cls`` (default ``None``: unset).

    Booleans become switches: ``--name`` for a setting off by default, the declared ``flag``
    (``--no-dropout``, ``--quiet``) for one on by default.
    """
    for info in settings_of(cls):
        if info.name in skip:
            continue
        target: Any = parser
        if groups is not None and info.group is not None:
            target = groups[info.group]
        help_text = _describe(info)
        if info.type is bool:
            action = "store_false" if info.default else "store_true"
            target.add_argument(
                info.flag, dest=info.name, action=action, default=None, help=help_text
            )
            continue
        if typing.get_origin(info.type) is list:
            (item,) = typing.get_args(info.type)
            target.add_argument(
                info.flag,
                dest=info.name,
                type=item,
                action="append",
                default=None,
                metavar=info.metavar or _METAVARS.get(item, "NAME"),
                help=help_text,
            )
            continue
        kind: Callable[[str], Any] = info.type if info.type in (int, float) else str
        target.add_argument(
            info.flag,
            dest=info.name,
            type=kind,
            default=None,
            metavar=info.metavar or _METAVARS.get(info.type, "NAME"),
            help=help_text,
        )


def settings_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags given on the command line, as ``{setting: value}`` (unset ones omitted).

    Raises
    ------
    ConfigError
        A number flag given as NaN or infinity (argparse's ``float`` accepts both).
    """
    given = {
        info.name: getattr(args, info.name)
        for info in settings_of(cls)
        if getattr(args, info.name, None) is not None
    }
    for info in settings_of(cls):
        value = given.get(info.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{info.flag} must be a finite number, got {value}")
    return given


def build_parser() -> argparse.ArgumentParser:
    """The ``fedspeech`` argument parser."""
    parser = _Parser(prog="fedspeech", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"fedspeech {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sim = sub.add_parser(
        "simulate",
        help="run a federated simulation with capture",
        description="Run a federated simulation on Flower (Ray backend); the server keeps\n"
        "what the captured clients send.",
        epilog=_SIM_EXAMPLES,
        formatter_class=_Formatter,
    )
    sim.add_argument(
        "--config", metavar="FILE", help="TOML file with any of the settings below as keys"
    )
    groups = {key: sim.add_argument_group(title) for key, title in GROUPS.items()}
    add_settings(sim, SimConfig, groups=groups)

    data = sub.add_parser("data", help="datasets", formatter_class=_Formatter)
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    synth = dsub.add_parser(
        "synth", help="build the built-in eSpeak NG keyword corpus", formatter_class=_Formatter
    )
    defaults = {info.name: info.default for info in settings_of(SimConfig)}
    synth.add_argument("--out", default=None, metavar="DIR", help="folder (default: the cache)")
    synth.add_argument(
        "--speakers",
        type=int,
        default=defaults["synth_speakers"],
        help=f"speakers (default {defaults['synth_speakers']})",
    )
    synth.add_argument(
        "--takes",
        type=int,
        default=defaults["synth_takes"],
        help=f"takes per word and speaker (default {defaults['synth_takes']})",
    )
    synth.add_argument(
        "--seed", type=int, default=defaults["seed"], help=f"seed (default {defaults['seed']})"
    )

    _add_audit_parser(sub)
    _add_report_parser(sub)
    _add_sweep_parser(sub)
    _add_evaluate_parser(sub)
    return parser


_EVALUATE_EXAMPLES = """\
examples:
  fedspeech evaluate --init-weights runs/my-sdd-run --out runs/my-sdd-run/evaluation
      the run's global model on the test split of its own dataset settings: scores.txt,
      evaluation.json (EER, per attack), det.png
  fedspeech evaluate --task sdd --model aasist-l --clip-samples 64600 \\
      --init-weights ../shared/models/aasist/AASIST-L.pth --out runs/aasist-l-builtin
      the published AASIST-L on the built-in spoof corpus
  fedspeech evaluate --init-weights runs/my-kws-run --out runs/my-kws-run/evaluation
      keyword spotting: accuracy and a confusion matrix
"""


def _add_evaluate_parser(sub: Any) -> None:
    """``fedspeech evaluate``: a model's weights scored on a dataset's split."""
    ev = sub.add_parser(
        "evaluate",
        help="score saved weights on a dataset split: EER, scores.txt and a DET plot (sdd), "
        "accuracy and a confusion matrix (kws)",
        description="Score a model's weights (a run folder, a model.safetensors, a published\n"
        "AASIST .pth) on a split of a dataset, and write plain files in --out.",
        epilog=_EVALUATE_EXAMPLES,
        formatter_class=_Formatter,
    )
    from fedspeech.report.evaluate import EVALUATE_SETTINGS

    skip = [i.name for i in settings_of(SimConfig) if i.name not in EVALUATE_SETTINGS]
    add_settings(ev, SimConfig, skip=skip)
    ev.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    ev.add_argument("--split", default="test", help="the split scored (default test)")
    ev.add_argument(
        "--max-clips",
        type=int,
        default=0,
        metavar="N",
        help="score a fixed random N clips (0: all)",
    )
    ev.add_argument(
        "--asv-scores",
        metavar="FILE",
        help="ASVspoof 2019 ASV score file (source key score per line): adds min t-DCF",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_evaluate(args: argparse.Namespace) -> None:
    from fedspeech.report.evaluate import (
        EvaluateRequest,
        evaluate,
        settings_from_weights,
        summary_lines,
    )

    if args.max_clips < 0:
        raise ConfigError(f"--max-clips must be at least 0, got {args.max_clips}")
    given = settings_from_weights(settings_from_args(args, SimConfig))
    cfg = SimConfig.from_mapping({**given, "progress": not args.quiet}, source="flags")
    request = EvaluateRequest(
        out=Path(args.out),
        split=args.split,
        max_clips=args.max_clips,
        asv_scores=Path(args.asv_scores) if args.asv_scores else None,
    )
    result = evaluate(cfg, request, stream=None if args.quiet else sys.stderr)
    for line in summary_lines(result):
        print(line)
    print(f"results in {request.out}")


def _add_sweep_parser(sub: Any) -> None:
    """``fedspeech sweep SWEEP.toml --out DIR``: defenses against utility and leakage."""
    swp = sub.add_parser(
        "sweep",
        help="run a grid of defenses, each trained for utility and audited for leakage",
        description="Run every variant of a sweep file (simulate for utility, simulate and\n"
        "audit for leakage) and write DIR/frontier.csv, frontier.md and frontier.png.\n"
        "Variants already done (DIR/NAME/row.json) are skipped.",
        epilog=_SWEEP_EXAMPLES,
        formatter_class=_Formatter,
    )
    swp.add_argument("sweep_file", metavar="SWEEP.toml", help="the sweep file")
    swp.add_argument("--out", required=True, metavar="DIR", help="sweep folder")
    swp.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the variants as Ray tasks across this cluster (every node needs "
        "fedspeech, the data and DIR at the same paths)",
    )
    swp.add_argument(
        "--cpus-per-variant",
        type=float,
        default=1.0,
        metavar="N",
        help="Ray CPUs a variant reserves with --ray-address (default 1)",
    )
    swp.add_argument(
        "--reaudit",
        action="store_true",
        help="audit the variants done before again (their runs kept; each capture's stage-1 "
        "result reused when the attack's settings are unchanged) and rewrite their rows",
    )
    swp.add_argument("--quiet", action="store_true", help="no progress output")


def _add_audit_parser(sub: Any) -> None:
    """``fedspeech audit RUN_DIR``: the honest-but-curious server's attack, scored."""
    aud = sub.add_parser(
        "audit",
        help="attack a run's captures and score the speech leakage (RUN_DIR/audit)",
        description="Play the honest-but-curious server on a run's captures: recover labels,\n"
        "features and waveforms, and score them against the truth.",
        epilog=_AUDIT_EXAMPLES,
        formatter_class=_Formatter,
    )
    _add_run_dir(aud)
    groups = {key: aud.add_argument_group(title) for key, title in AUDIT_GROUPS.items()}
    add_settings(aud, AuditSettings, groups=groups)
    aud.add_argument("--quiet", action="store_true", help="no progress output")


def _add_run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder of fedspeech simulate")


def _add_report_parser(sub: Any) -> None:
    """``fedspeech report RUN_DIR``: the run's HTML page."""
    rep = sub.add_parser(
        "report",
        help="write RUN_DIR/report/index.html: the run and its audit, to read and listen to",
        description="Write one HTML page about a run: settings, utility and leakage per round,\n"
        "and every audited sample with its audio. It opens from disk, offline.",
        epilog=_REPORT_EXAMPLES,
        formatter_class=_Formatter,
    )
    _add_run_dir(rep)
    rep.add_argument(
        "--embed",
        action="store_true",
        help="put audio and images inside the page (one file to send; larger)",
    )


def _run_audit(args: argparse.Namespace) -> None:
    settings = AuditSettings(**settings_from_args(args, AuditSettings))
    summary = audit_run(Path(args.run_dir), settings, progress=not args.quiet)
    out = Path(args.run_dir) / AUDIT_DIR
    print(f"audited {summary['captures']} captures, {summary['samples']} samples")
    if summary["scored"]:
        print(summary_table(summary))
        clips = summary.get("clips") or {}
        if clips.get("text"):
            print(f"clips: {clips['text']}" + (f" ({clips['note']})" if clips.get("note") else ""))
        if summary.get("speaker_eer") is not None:
            print(
                f"speaker verifier: EER {summary['speaker_eer']:.3f}, "
                f"threshold {summary['speaker_threshold']:.3f}"
            )
    else:
        print("no truth/ folder: reconstructions written, leakage not scored")
    print(f"results in {out}: leakage.csv, summary.json, wav/, spectrograms/")
    _auto_report(Path(args.run_dir))


def _auto_report(run_dir: Path) -> None:
    """The run's report after ``audit`` and ``simulate --audit``; a failure only warns (the
    results it would show are already saved)."""
    from fedspeech.report.html import write_report

    try:
        print(f"report: {write_report(run_dir)}")
    except FedspeechError as exc:
        print(f"fedspeech: warning: report not written: {exc}", file=sys.stderr)


# ``fedspeech data synth`` flag -> the simulate setting whose declaration checks it.
_SYNTH_FLAGS = {"speakers": "synth_speakers", "takes": "synth_takes", "seed": "seed"}


def _run_synth(args: argparse.Namespace) -> None:
    """``fedspeech data synth``: its numbers checked by the simulate settings' declarations."""
    infos = {info.name: info for info in settings_of(SimConfig)}
    for dest, name in _SYNTH_FLAGS.items():
        dataclasses.replace(infos[name], flag=f"--{dest}").check(getattr(args, dest))
    root = synthesize_corpus(
        Path(args.out) if args.out else None,
        n_speakers=args.speakers,
        takes=args.takes,
        seed=args.seed,
    )
    print(root)


def sim_config(args: argparse.Namespace) -> SimConfig:
    """The configuration of ``simulate``: defaults, then ``--config``, then flags.

    With ``--resume RUN_DIR``: the run's own ``RUN_DIR/config.toml`` (only ``--quiet`` may
    be added).
    """
    if args.resume is not None:
        return resume_config(args)
    cfg = SimConfig()
    if args.config:
        cfg = cfg.updated(read_toml(args.config), args.config)
    flags = settings_from_args(args, SimConfig)
    progress = flags.pop("progress", None)
    cfg = cfg.updated(flags, "the command line")
    if progress is not None:
        cfg = cfg.updated({"progress": progress})
    return cfg


def resume_config(args: argparse.Namespace) -> SimConfig:
    """The settings of the run ``--resume`` continues: its ``config.toml``.

    Raises
    ------
    FedspeechError
        Other flags were given (but ``--quiet``), or the folder is not a run folder.
    """
    run_dir = Path(args.resume)
    flags = settings_from_args(args, SimConfig)
    progress = flags.pop("progress", None)
    flags.pop("resume")
    infos = {info.name: info for info in settings_of(SimConfig)}
    given = [infos[name].flag for name in flags] + (["--config"] if args.config else [])
    if given:
        raise ConfigError(
            f"--resume takes the run's settings from {run_dir / 'config.toml'}; no other "
            f"flags but --quiet (got {', '.join(given)})"
        )
    if not run_dir.is_dir():
        raise FedspeechError(f"--resume {run_dir}: no such run folder")
    if not (run_dir / "config.toml").is_file():
        raise FedspeechError(f"--resume {run_dir}: no config.toml, not a run folder")
    cfg = SimConfig.from_toml(run_dir / "config.toml")
    cfg = cfg.updated({"resume": str(run_dir), "out": str(run_dir)}, "--resume")
    if progress is not None:
        cfg = cfg.updated({"progress": progress})
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "simulate":
            cfg = sim_config(args)
            # Flower and Ray load only once the settings are known to be good: bad input
            # is reported in a second, and the other commands never load them.
            from fedspeech.federation.simulate import simulate

            run_dir, _ = simulate(cfg)
            if cfg.audit:
                _auto_report(run_dir)
        elif args.command == "data" and args.data_command == "synth":
            _run_synth(args)
        elif args.command == "audit":
            _run_audit(args)
        elif args.command == "sweep":
            from fedspeech.federation.sweep import load_sweep, run_sweep

            if not (math.isfinite(args.cpus_per_variant) and args.cpus_per_variant >= 1e-4):
                raise ConfigError(
                    f"--cpus-per-variant must be at least 0.0001, got {args.cpus_per_variant}"
                )
            sweep = load_sweep(args.sweep_file)
            run_sweep(
                sweep,
                Path(args.out),
                stream=None if args.quiet else sys.stderr,
                ray_address=args.ray_address,
                cpus_per_variant=args.cpus_per_variant,
                reaudit=args.reaudit,
            )
            print(Path(args.out) / "frontier.csv")
        elif args.command == "evaluate":
            _run_evaluate(args)
        elif args.command == "report":
            from fedspeech.report.html import write_report

            print(write_report(Path(args.run_dir), embed=args.embed))
    except FedspeechError as exc:
        print(f"fedspeech: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        # Raised once the run's captures and metrics.json are saved.
        print(f"fedspeech: interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fedspeech: interrupted", file=sys.stderr)
        return 130
    return 0


def run() -> NoReturn:
    """Console-script entry point."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Ray and Flower can leave non-daemon threads behind; do not wait for them. Everything
    # a run writes is on disk by now: simulate() waits for the capture writer before it
    # returns or raises, interrupted or not.
    os._exit(code)


if __name__ == "__main__":
    run()
