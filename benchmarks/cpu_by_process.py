"""CPU time of every process of a simulation (driver, Ray's, clients) over its middle rounds.

Runs ``fedspeech simulate`` with the given arguments (``--quiet`` must not be among them: the
round lines mark the window), reads ``/proc/PID/stat`` of the whole process tree when round
``--from`` and round ``--to`` are printed, and prints each process's user and system CPU
seconds in between, then the total per round against the wall time per round.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/cpu_by_process.py --from 3 --to 9 -- \\
        --clients 50 --rounds 10 --capture-clients 0 --out /tmp/cpurun --overwrite
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

Sample = dict[int, tuple[int, int, str]]  # pid -> (user ticks, system ticks, command line)


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children[pid])
    return out


def sample(root: int) -> Sample:
    out: Sample = {}
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        out[pid] = (int(fields[11]), int(fields[12]), cmd[:70])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="first", type=int, default=3, help="window starts at round")
    ap.add_argument("--to", dest="last", type=int, default=9, help="window ends at round")
    ap.add_argument("simulate_args", nargs=argparse.REMAINDER, help="-- then simulate's flags")
    args = ap.parse_args()
    sim_args = [a for a in args.simulate_args if a != "--"]
    exe = Path(sys.executable).parent / "fedspeech"
    proc = subprocess.Popen([str(exe), "simulate", *sim_args], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    start: Sample | None = None
    end: Sample | None = None
    t0 = t1 = 0.0
    for line in proc.stderr:
        if line.startswith(f"round {args.first}/"):
            start, t0 = sample(proc.pid), time.perf_counter()
        elif line.startswith(f"round {args.last}/"):
            end, t1 = sample(proc.pid), time.perf_counter()
    if proc.wait() != 0 or start is None or end is None:
        raise SystemExit("the simulation failed or did not print the window's round lines")
    hz = os.sysconf("SC_CLK_TCK")
    rounds = args.last - args.first
    total = 0.0
    for pid, (user, system, cmd) in end.items():
        user0, system0, _ = start.get(pid, (0, 0, ""))
        seconds = (user - user0 + system - system0) / hz
        total += seconds
        if seconds >= 0.05:
            print(
                f"{seconds:7.2f} s (user {(user - user0) / hz:6.2f}, "
                f"system {(system - system0) / hz:5.2f})  {cmd}"
            )
    print(
        f"{total:.2f} CPU-s over {t1 - t0:.2f} s ({rounds} rounds): "
        f"{total / rounds:.2f} CPU-s and {(t1 - t0) / rounds:.2f} s a round"
    )


if __name__ == "__main__":
    main()
