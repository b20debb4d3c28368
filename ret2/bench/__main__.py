"""Run a benchmark suite, print markdown tables and write a JSON report.

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
import logging
import os
import sys
import time
from pathlib import Path

import torch

from ret2.cli import ArgumentParser, run_cli

from . import encode, index, report, train
from .common import machine_info
from .suites import SUITES

logger = logging.getLogger("bench")
SECTIONS = ("encode", "index", "train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu", help="which cases to run (default: cpu)")
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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        print(render(result))
        return result
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every instruction set it tries
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device.")
    suite = SUITES[args.suite]()
    threads = args.threads or suite.threads
    if threads:
        torch.set_num_threads(threads)
    start = time.monotonic()
    deadline = start + args.time_budget if args.time_budget else None
    result = {"suite": args.suite, "description": suite.description, "command": "python -m ret2.bench " + " ".join(
        sys.argv[1:] if argv is None else argv), "machine": machine_info(device), "rows": [], "checks": []}  # fmt: skip

    for section, work in suite.phases:
        if section not in args.sections:
            continue
        if args.sizes is not None and section != "index":
            work = [case for case in work if case.size in args.sizes]
        if section == "encode":
            rows, checks = encode.run(work, device, suite.warmup, suite.repeats, deadline)
            result["checks"] += checks
        elif section == "train":
            rows = train.run(work, device, suite.warmup, suite.train_repeats, deadline)
        elif deadline is not None and time.monotonic() > deadline:
            rows = [{"section": "index", "skipped": "time budget"}]
        else:
            try:
                rows = index.run(device, **work)
            except Exception as error:
                logger.exception("index failed")
                rows = [{"section": "index", "skipped": f"error: {error!r}"[:500]}]
        result["rows"] += rows
        result["targets"] = report.targets(result["rows"], result["checks"])
        result["wall_s"] = time.monotonic() - start
        write_json(result, args.json)  # after every phase: a run cut short still leaves its numbers

    print(render(result))
    logger.info("wrote %s (%.0f s)", args.json, result["wall_s"])
    return result


def render(result: dict) -> str:
    machine = result["machine"]
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['cpu_cores']} cores, {machine['torch_threads']} threads"
    parts = [f"# {result['description']}", f"{where}; torch {machine['torch']}, transformers {machine['transformers']}"]
    rows = result["rows"]
    for section, table in (("encode", report.encode_table), ("index", report.index_table), ("train", report.train_table)):
        section_rows = [r for r in rows if r["section"] == section]
        if section_rows and not all("skipped" in r for r in section_rows):
            parts.append(f"## {section}\n\n{table([r for r in section_rows if section != 'index' or 'skipped' not in r])}")
    if result.get("targets"):
        parts.append(f"## targets\n\n{report.targets_table(result['targets'])}")
    return "\n\n".join(parts)


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    run_cli(main)
