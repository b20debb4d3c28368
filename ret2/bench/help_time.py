"""How long every installed command's `--help` takes, as a whole process, against `python -c "import torch"`.

    python -m ret2.bench.help_time                 # best of 5 each, a markdown table
    python -m ret2.bench.help_time --repeats 3 --json help.json

Each command is its installed script beside this Python (`ret2-train --help`, ...), started in turn with the torch
import, so a drift of the machine's speed touches both alike; the table gives each command's best and median wall time
and its best as a multiple of the best `import torch`. It also prints the machine (cores, CPU flags, load average).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ret2.commands._common import ArgumentParser, run_cli

TORCH = "python -c 'import torch'"


def installed_commands() -> list[str]:
    """The `ret2-*` console scripts of this install (its entry points)."""
    from importlib.metadata import distribution

    return sorted(ep.name for ep in distribution("ret2").entry_points if ep.group == "console_scripts")


def wall_times(argv: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def machine() -> dict:
    flags = ""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        pass
    simd = [f for f in flags if f.startswith(("avx", "sse4", "amx")) or f in ("fma", "f16c")]
    return {"cores": os.cpu_count(), "simd_flags": simd, "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each command (the best is reported)")
    parser.add_argument("--commands", nargs="+", help="the commands to time (default: every installed ret2-* command)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    commands = args.commands or installed_commands()
    wall_times([sys.executable, "-c", "import torch"], 1)  # warm the file cache once
    rows, torch_times = [], []
    for name in commands:
        torch_times += wall_times([sys.executable, "-c", "import torch"], args.repeats)
        times = wall_times([str(bin_dir / name), "--help"], args.repeats)
        rows.append({"command": f"{name} --help", "best_s": min(times), "median_s": statistics.median(times)})
    best_torch = min(torch_times)
    rows.append({"command": TORCH, "best_s": best_torch, "median_s": statistics.median(torch_times)})
    for row in rows:
        row["x_import_torch"] = row["best_s"] / best_torch
    where = machine()
    print(f"{where['cores']} cores, CPU flags {' '.join(where['simd_flags']) or 'unknown'}, load average "
          f"{' '.join(f'{x:.2f}' for x in where['load_average'])}; best of {args.repeats}\n")  # fmt: skip
    print("| command | best (s) | median (s) | best / best `import torch` |\n|---|---|---|---|")
    for row in rows:
        print(f"| `{row['command']}` | {row['best_s']:.2f} | {row['median_s']:.2f} | {row['x_import_torch']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": where, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    run_cli(main)
