"""Write ``docs/reliability.md``: every bad input of the CLI tests, with its actual answer.

Each case of ``tests/test_cli_errors.py`` (``CASES``) runs as ``python -m fedspeech ARGS``
in a fresh folder holding the cases' paths; the table shows the command, the last line the
process wrote to stderr and its exit code, as they came out. Run from the repository root:

    python -m experiments.reliability [--out docs/reliability.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from fedspeech.fileio import atomic_write_text
from tests.test_cli_errors import CASES, PLACEHOLDERS, make_paths

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python -m experiments.reliability"


def run_case(args: list[str]) -> tuple[str, int]:
    """The last stderr line and the exit code of ``fedspeech ARGS`` in a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        make_paths(Path(tmp))
        # This tree's fedspeech, whichever copy is installed.
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "fedspeech", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp,
            env=env,
        )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return (lines[-1] if lines else ""), proc.returncode


def _cell(text: str) -> str:
    """Markdown table cell: code, with the pipe escaped."""
    return "`" + text.replace("|", "\\|") + "`"


def table() -> str:
    """The Markdown table of every case, run now."""
    rows = ["| input | message (stderr) | exit code |", "|---|---|---|"]
    for args, _ in CASES:
        line, code = run_case(args)
        rows.append(f"| {_cell('fedspeech ' + ' '.join(args))} | {_cell(line)} | {code} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


def document(rows: str, today: str) -> str:
    """``docs/reliability.md`` around the table ``rows``."""
    names = "\n".join(f"* `{name}`: {what}" for name, what in PLACEHOLDERS.items())
    return f"""# Bad input

Every number a flag takes is checked for NaN, infinity and its range when the settings are
built, before any data is read or Ray starts; names behind a registry are checked by the task;
the run folder is claimed before the data are prepared. Each bad input below ends with one
line `fedspeech: error: ...` on stderr and exit code 2, never a traceback. The cases are those
of `tests/test_cli_errors.py`, which checks the same in every test run.

Measured {today} with `{COMMAND}`: each case ran as
`python -m fedspeech ARGS` in a fresh folder holding these paths:

{names}

{rows}

Beyond the table: `--out` that holds a run (a `metrics.json`, `config.toml` or `captures/`)
is replaced only with `--overwrite`, which removes that run's own files (`captures/`,
`truth/`, `audit/`, `data/`, `state/`, `metrics.json`, `config.toml`, `run.json`, plots) and nothing
else. Default folders `runs/<timestamp>` of runs started in the same second get `-1`, `-2`.
A mean client training loss or an evaluation loss that becomes NaN or infinite is recorded
as `diverged` in `metrics.json` and ends the run, after saving what it has, with one line
`fedspeech: error: training diverged in round R: evaluation loss is nan (a smaller --lr may
help); ...` and exit code 1 (not 2: the input was valid, the run failed). A round in which
every sampled client failed ends the run the same way, with exit code 1. `metrics.json`, `run.json`,
`data/*.json` and the audit's JSON files are strict JSON (NaN and infinities as `null`).
SIGINT (Ctrl-C) or SIGTERM during `simulate` writes every capture received (truth after
capture), removes temporary files, saves `metrics.json` with `"interrupted": true` and ends
with one line `fedspeech: interrupted: ...` and exit code 130 or 143; `--resume RUN_DIR`
continues the run ([simulate.md](simulate.md#interrupting-and-resuming)).
`run.json` in each run folder records the command line, the versions of fedspeech, Python,
torch, numpy, Flower and Ray, the git commit of the source tree (when it is a checkout), the
start time and the host (a `--token` value, as in the command line of `flwr run`'s
ServerApp process, is written as `***`).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    parser.add_argument("--date", default=date.today().isoformat(), help="date written")
    args = parser.parse_args()
    atomic_write_text(args.out, document(table(), args.date))
    print(args.out)


if __name__ == "__main__":
    main()
