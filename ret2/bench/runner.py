"""Running a benchmark suite (`ret2-bench`, `ret2.commands.bench`): its phases in order, the JSON report written after
each, and the markdown tables of a report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from . import encode, index, report, train
from .common import machine_info
from .suites import SUITES

logger = logging.getLogger("bench")


def run_suite(args: argparse.Namespace, command: str) -> dict:
    """Run the suite `args` names (the `ret2-bench` flags, parsed by `ret2.commands.bench`), print its tables and
    write its JSON report after every phase; returns the report. `command`: how it was started, kept in the report."""
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
    result = {"suite": args.suite, "description": suite.description, "command": command, "machine": machine_info(device), "rows": [], "checks": []}  # fmt: skip

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
