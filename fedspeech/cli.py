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
    ("--task", str, "task: kws (keyword spotting)"),
    ("--dataset", str, "dataset name: synth (built-in), speech_commands, fsdd"),
    ("--data-root", str, "dataset folder (built-in corpus: built and cached if omitted)"),
    ("--words", str, "comma-separated words, or 'all' (Speech Commands)"),
    ("--normalize", str, "per-clip gain before the front-end: peak or none"),
    ("--frontend", str, "front-end: mel or mfcc"),
    ("--model", str, "model name (kws-cnn)"),
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
]


def build_parser() -> argparse.ArgumentParser:
    """The ``fedspeech`` argument parser."""
    parser = _Parser(prog="fedspeech", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sim = sub.add_parser("simulate", help="run a federated simulation with capture")
    sim.add_argument("--config", help="TOML file with any of the flags below as keys")
    for flag, typ, text in _SIM_FLAGS:
        sim.add_argument(flag, type=typ, default=None, help=text)
    sim.add_argument("--quiet", action="store_true", help="no progress output")

    data = sub.add_parser("data", help="datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    synth = dsub.add_parser("synth", help="build the built-in eSpeak NG keyword corpus")
    synth.add_argument("--out", default=None, help="folder (default: the cache)")
    synth.add_argument("--speakers", type=int, default=200)
    synth.add_argument("--takes", type=int, default=3)
    synth.add_argument("--seed", type=int, default=0)
    return parser


def _sim_config(args: argparse.Namespace) -> SimConfig:
    cfg = SimConfig()
    if args.config:
        cfg = cfg.updated(read_toml(args.config), args.config)
    flags = {
        flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
        for flag, _, _ in _SIM_FLAGS
    }
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
