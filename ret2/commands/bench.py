"""`ret2-bench` (`python -m ret2.bench`): run a benchmark suite, print markdown tables and write a JSON report.

    python -m ret2.bench                                 # CPU suite: encode, index, train (about 13 min on 2 cores)
    python -m ret2.bench --sections encode               # one section of it
    python -m ret2.bench --quick                         # tiny models, seconds: checks that everything runs
    python -m ret2.bench --suite gpu --device cuda       # the GPU run (see ret2/bench/gpu.sh)
    python -m ret2.bench --render bench-gpu.json         # print the tables of a saved report

The JSON report (`--json`, default `bench-<suite>.json`, or `$OUT/bench-<suite>.json` when `$OUT` is set) holds the
machine, every row (all timings, not only the best), the equality checks and the target ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ret2.commands._common import ArgumentParser, run_cli

SECTIONS = ("encode", "index", "train")
SUITE_NAMES = ("cpu", "gpu", "quick")  # `ret2.bench.suites.SUITES` (tests/ret2/commands keep the two equal)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=list(SUITE_NAMES), default="cpu", help="which cases to run (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="same as --suite quick")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for the gpu suite, else cpu)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--sizes", default=None, help="comma-separated backbone sizes to keep (e.g. b32); default all")
    parser.add_argument("--json", type=Path, default=None, help="where to write the report")
    parser.add_argument("--render", type=Path, default=None, help="print the tables of a saved report and exit")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the suite's; cpu: 1)")
    parser.add_argument(
        "--time-budget", type=float, default=None,
        help="seconds; cases not started within it are left out (marked skipped) and the report is still written",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.suite = "quick"
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; valid: {list(SECTIONS)}")
    args.sizes = None if args.sizes is None else {s.strip() for s in args.sizes.split(",") if s.strip()}
    if args.device is None:
        args.device = "cuda" if args.suite == "gpu" else "cpu"
    if args.json is None:
        out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(".")
        args.json = out_dir / f"bench-{args.suite}.json"
    return args


def run(argv: list[str] | None = None) -> dict:
    """Parse; print the tables of a saved report (`--render`), or run the suite; returns the report."""
    args = parse_args(argv)
    from ret2.bench.runner import render, run_suite

    if args.render:
        result = json.loads(args.render.read_text())
        print(render(result))
        return result
    return run_suite(args, "python -m ret2.bench " + " ".join(sys.argv[1:] if argv is None else argv))


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-bench`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
