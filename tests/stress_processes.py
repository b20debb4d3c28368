"""Stress check of the process-launching tests (`-m processes`: torchrun, servers, commands): two pytest sessions run
them at the same time, `--rounds` times in a row; after each round no process either started may be left.

    python tests/stress_processes.py --rounds 5      # from the checkout, with the project's venv active

Prints one row per round (both sessions' summary lines, wall time, processes left behind) and exits 1 if any session
failed or left a process. Not part of the suite: it takes minutes per round.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def session(basetemp: Path, log: Path) -> tuple[subprocess.Popen, object]:
    out = open(log, "w")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "processes",
               f"--basetemp={basetemp}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT), out


def summary(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if " in " in line and ("passed" in line or "failed" in line)]
    return lines[-1].strip("= ") if lines else "(no summary line: see " + str(log) + ")"


def tree_of(processes: list[psutil.Process], seen: set[psutil.Process]) -> None:
    for process in processes:
        try:
            seen.update(process.children(recursive=True))
        except psutil.NoSuchProcess:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stress-processes-"))
    print(f"| round | session A | session B | wall (s) | left behind |\n|---|---|---|---|---|", flush=True)
    bad = 0
    for round_ in range(1, args.rounds + 1):
        start = time.monotonic()
        runs = [session(work / f"r{round_}{name}", work / f"r{round_}{name}.log") for name in "AB"]
        roots = [psutil.Process(proc.pid) for proc, _ in runs]
        seen: set[psutil.Process] = set()
        while any(proc.poll() is None for proc, _ in runs):
            tree_of(roots, seen)  # the sessions' children and grandchildren, remembered before they exit
            time.sleep(0.5)
        for _, out in runs:
            out.close()
        psutil.wait_procs(list(seen), timeout=10)
        left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        described = "; ".join(f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in left) or "none"
        for process in left:
            process.kill()
        lines = [summary(work / f"r{round_}{name}.log") for name in "AB"]
        failed = any(proc.returncode != 0 for proc, _ in runs) or bool(left)
        bad += failed
        print(f"| {round_} | {lines[0]} | {lines[1]} | {time.monotonic() - start:.0f} | {described} |", flush=True)
    print(f"\n{args.rounds - bad} of {args.rounds} rounds clean (logs in {work})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
