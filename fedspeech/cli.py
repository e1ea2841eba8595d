"""Command-line interface: ``fedspeech simulate``, ``fedspeech data synth``.

Bad input ends with one line ``fedspeech: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from fedspeech.config import SimConfig, read_toml
from fedspeech.errors import FedspeechError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the message names the problem.
        self.exit(2, f"{self.prog}: error: {message}\n")


# flag, type, help; every flag is a SimConfig key, so TOML files can set it too.
_SIM_FLAGS: list[tuple[str, Any, str]] = [
    ("--task", str, "task: kws (keyword spotting) or sdd (speech-deepfake detection)"),
    (
        "--dataset",
        str,
        "kws: synth (built-in), speech_commands, fsdd; sdd: builtin, asvspoof2019_la, "
        "asvspoof2021_df, asvspoof2021_la, in_the_wild, fake_or_real",
    ),
    ("--data-root", str, "dataset folder (built-in corpus: built and cached if omitted)"),
    ("--words", str, "comma-separated words, or 'all' (Speech Commands)"),
    ("--normalize", str, "per-clip gain before the front-end: peak or none"),
    ("--frontend", str, "front-end: mel or mfcc"),
    ("--model", str, "model name (kws: kws-cnn; sdd: aasist-xs, aasist-l, aasist)"),
    ("--activation", str, "model activation: relu, sigmoid, tanh"),
    ("--clients", int, "number of simulated clients"),
    ("--fraction", float, "fraction of clients sampled per round, in (0, 1]"),
    ("--rounds", int, "federated rounds"),
    ("--partition", str, "speaker (non-IID), iid, or dirichlet"),
    ("--alpha", float, "Dirichlet concentration for --partition dirichlet"),
    ("--share", str, "what clients send: update (weights) or gradient (one step)"),
    ("--local-epochs", int, "local epochs per round (share=update)"),
    ("--local-steps", int, "exact local steps per round; overrides --local-epochs"),
    ("--batch-size", int, "local batch size (1 = the leakage study's threat model)"),
    ("--lr", float, "client learning rate"),
    ("--momentum", float, "client SGD momentum"),
    ("--strategy", str, "fedavg, fedprox or fedadam"),
    ("--proximal-mu", float, "FedProx proximal term"),
    ("--server-lr", float, "FedAdam server learning rate"),
    ("--capture-clients", str, "clients captured per round: a number or 'all'"),
    ("--seed", int, "seed for data, partition, sampling and initial weights"),
    ("--out", str, "run folder (default runs/<timestamp>)"),
    ("--ray-address", str, "address of an existing Ray cluster (default: start one)"),
    ("--cpus-per-client", float, "Ray CPUs reserved per client"),
    ("--synth-speakers", int, "speakers in the built-in corpus"),
    ("--synth-takes", int, "takes per word and speaker in the built-in corpus"),
    ("--augment", str, "sdd: augmentation of the second path, rawboost:N (N = 1-8)"),
    ("--alignment", str, "sdd: none, pcgrad, gradvac, cagrad, upgrad, or roga"),
    ("--optimizer", str, "sdd: local optimizer, adam or sgd"),
    ("--clip-samples", int, "sdd: clip length in samples at 16 kHz"),
    ("--test-clips", int, "sdd: test clips scored each round (fixed random subset; 0 = all)"),
    ("--bonafide-root", str, "sdd: build the built-in spoof corpus from this speech folder"),
    ("--roga-rho", float, "sdd: RoGA ascent radius"),
    ("--roga-alpha", float, "sdd: RoGA alignment weight"),
    (
        "--roga-domains",
        str,
        "sdd: RoGA's domains: attack (attack id, bona fide its own), speaker, or path "
        "(clean vs augmented)",
    ),
    ("--audit-iterations", int, "--audit: stage-1 steps per restart (cap; stops when converged)"),
    ("--audit-threads", int, "--audit: torch threads of the attack (0 = every core)"),
]


def build_parser() -> argparse.ArgumentParser:
    """The ``fedspeech`` argument parser."""
    parser = _Parser(prog="fedspeech", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sim = sub.add_parser("simulate", help="run a federated simulation with capture")
    sim.add_argument("--config", help="TOML file with any of the flags below as keys")
    for flag, typ, text in _SIM_FLAGS:
        sim.add_argument(flag, type=typ, default=None, help=text)
    sim.add_argument(
        "--audit",
        action="store_true",
        default=None,
        help="attack the captured clients (--capture-clients) after each round; "
        "leakage per round in metrics.json, accuracy.png and audit/",
    )
    sim.add_argument(
        "--no-dropout",
        dest="dropout",
        action="store_false",
        default=None,
        help="sdd: train AASIST without dropout (the audit's best case: the server can then "
        "reproduce the client's network exactly)",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress output")

    data = sub.add_parser("data", help="datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    synth = dsub.add_parser("synth", help="build the built-in eSpeak NG keyword corpus")
    synth.add_argument("--out", default=None, help="folder (default: the cache)")
    synth.add_argument("--speakers", type=int, default=200)
    synth.add_argument("--takes", type=int, default=3)
    synth.add_argument("--seed", type=int, default=0)

    _add_audit_parser(sub)
    return parser


def _add_audit_parser(sub: Any) -> None:
    """``fedspeech audit RUN_DIR``: the honest-but-curious server's attack, scored."""
    aud = sub.add_parser(
        "audit", help="attack a run's captures and score the speech leakage (RUN_DIR/audit)"
    )
    aud.add_argument("run_dir", metavar="RUN_DIR", help="run folder of fedspeech simulate")
    aud.add_argument(
        "--round",
        dest="rounds",
        type=int,
        action="append",
        metavar="R",
        help="audit only round R (repeat for several)",
    )
    aud.add_argument(
        "--client",
        dest="clients",
        type=int,
        action="append",
        metavar="C",
        help="audit only client C (repeat for several)",
    )
    aud.add_argument("--max-samples", type=int, help="stop after N reconstructed samples")
    aud.add_argument("--iterations", type=int, default=8000, help="stage-1 steps per restart")
    aud.add_argument("--restarts", type=int, default=2, help="stage-1 restarts")
    aud.add_argument("--lr", type=float, default=0.01, help="stage-1 Adam step size")
    aud.add_argument(
        "--lr-start",
        type=float,
        default=None,
        help="start each restart at this larger step size, divided by 3.3 at each plateau "
        "down to --lr (faster than the study's constant step; e.g. 0.1)",
    )
    aud.add_argument(
        "--extra-restarts",
        type=int,
        default=0,
        help="restarts beyond --restarts, from new random starts, for a capture none of whose "
        "restarts converged, within --restarts x --iterations steps (not the study's)",
    )
    aud.add_argument("--distance", choices=["l2", "cosine"], default="l2", help="gradient distance")
    aud.add_argument("--tv-weight", type=float, default=1e-3, help="total-variation weight")
    aud.add_argument(
        "--tv-reduction",
        choices=["mean", "sum"],
        default="mean",
        help="total variation as a mean over entries (inversefed's, the default) or a sum",
    )
    aud.add_argument(
        "--griffin-lim-iters", type=int, default=32, help="stage-2 Griffin-Lim iterations"
    )
    aud.add_argument(
        "--speaker-model",
        choices=["resemblyzer", "ecapa"],
        default="resemblyzer",
        help="speaker encoder for re-identification",
    )
    aud.add_argument("--no-speaker", action="store_true", help="skip speaker re-identification")
    aud.add_argument("--no-content", action="store_true", help="skip the content classifier")
    aud.add_argument(
        "--chunk",
        type=int,
        default=32,
        help="captures reconstructed together in one batched optimisation",
    )
    aud.add_argument(
        "--ray-address",
        help="run stage 1 as Ray tasks on this cluster "
        "('auto', HOST:PORT, or 'local' for a private one)",
    )
    aud.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    aud.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes stage 1 is split over, one torch thread each (default 1)",
    )
    aud.add_argument("--seed", type=int, default=0, help="seed of starts, phases and scorers")
    aud.add_argument("--quiet", action="store_true", help="no progress output")


def _run_audit(args: argparse.Namespace) -> None:
    from pathlib import Path

    from fedspeech.audit import AUDIT_DIR, AuditSettings, audit_run, summary_table

    settings = AuditSettings(
        iterations=args.iterations,
        restarts=args.restarts,
        lr=args.lr,
        lr_start=args.lr_start,
        extra_restarts=args.extra_restarts,
        tv_weight=args.tv_weight,
        tv_reduction=args.tv_reduction,
        distance=args.distance,
        griffin_lim_iters=args.griffin_lim_iters,
        speaker_model=args.speaker_model,
        speaker=not args.no_speaker,
        content=not args.no_content,
        rounds=args.rounds,
        clients=args.clients,
        max_samples=args.max_samples,
        chunk=args.chunk,
        seed=args.seed,
        ray_address=args.ray_address,
        threads=args.threads,
        workers=args.workers,
    )
    summary = audit_run(Path(args.run_dir), settings, progress=not args.quiet)
    out = Path(args.run_dir) / AUDIT_DIR
    print(f"audited {summary['captures']} captures, {summary['samples']} samples")
    if summary["scored"]:
        print(summary_table(summary))
        if summary.get("speaker_eer") is not None:
            print(
                f"speaker verifier: EER {summary['speaker_eer']:.3f}, "
                f"threshold {summary['speaker_threshold']:.3f}"
            )
    else:
        print("no truth/ folder: reconstructions written, leakage not scored")
    print(f"results in {out}: leakage.csv, summary.json, wav/, spectrograms/")


def _sim_config(args: argparse.Namespace) -> SimConfig:
    cfg = SimConfig()
    if args.config:
        cfg = cfg.updated(read_toml(args.config), args.config)
    flags = {
        flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
        for flag, _, _ in _SIM_FLAGS
    }
    flags["audit"] = args.audit
    flags["dropout"] = args.dropout
    cfg = cfg.updated(flags, "the command line")
    if args.quiet:
        cfg = cfg.updated({"progress": False})
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "simulate":
            from fedspeech.federation.simulate import simulate

            simulate(_sim_config(args))
        elif args.command == "data" and args.data_command == "synth":
            from pathlib import Path

            from fedspeech.data.synth import synthesize_corpus

            root = synthesize_corpus(
                Path(args.out) if args.out else None,
                n_speakers=args.speakers,
                takes=args.takes,
                seed=args.seed,
            )
            print(root)
        elif args.command == "audit":
            _run_audit(args)
    except FedspeechError as exc:
        print(f"fedspeech: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedspeech: interrupted", file=sys.stderr)
        return 130
    return 0


def run() -> NoReturn:
    """Console-script entry point."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Ray and Flower can leave non-daemon threads behind; do not wait for them.
    os._exit(code)


if __name__ == "__main__":
    run()
