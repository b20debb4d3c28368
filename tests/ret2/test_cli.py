"""The commands: every one has `--help` showing each default, installed commands show the command to type, a failing
command ends in one line, and the DataLoader workers default to what the cores allow."""

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COMMANDS as INSTALLED
from conftest import REPO

from ret2.distributed import default_num_workers

# Every installed command (`ret2.commands.<name>`), then the scripts of the demo and the benchmarks (`python -m ...`).
COMMANDS = sorted(INSTALLED.values()) + [
    "ret2.demo.ablation", "ret2.demo.matryoshka", "ret2.bench.train_tiny", "ret2.bench.eval_pool", "ret2.bench.profile",
    "ret2.bench.encode_raw", "ret2.bench.search_index", "ret2.bench.sorting", "ret2.bench.serve",
    "ret2.bench.trec_agreement", "ret2.bench.help_time", "ret2.bench.index_engines", "ret2.bench.filtered_search",
]  # fmt: skip


def command_main(module: str):
    return importlib.import_module(module).main


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_has_help(module, capsys):
    """`--help` of every command runs and lists `--traceback`; every flag has help text (the shared ArgumentParser
    refuses a flag without one)."""
    main = command_main(module)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "--traceback" in out


@pytest.mark.parametrize("module", COMMANDS)
def test_help_shows_every_default_zero_and_false_included(module, monkeypatch, capsys):
    """Every option of every command's parsers (sub-commands included) whose default is not None says its default in
    `--help`: a default of 0 or False is a value to show, not a missing one. Only switches (off unless given) show
    none."""
    parsers = []
    init = argparse.ArgumentParser.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        parsers.append(self)

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", recording_init)
    main = command_main(module)
    with pytest.raises(SystemExit):
        main(["--help"])
    capsys.readouterr()
    hidden = [
        (parser.prog, action.option_strings[-1], action.default)
        for parser in parsers for action in parser._actions
        if action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS)
        and "default" not in parser._get_formatter()._get_help_string(action).lower()
    ]  # fmt: skip
    assert parsers and not hidden


@pytest.mark.parametrize(("command", "shown"), [
    (["ret2-index", "build", "--help"], "DataLoader workers opening images (default: 0)"),
    (["ret2-index", "train", "--help"], "random seed (default: 0)"),
    (["ret2-eval-mbeir", "--help"], f"DataLoader workers loading images (default: {default_num_workers()})"),
])  # fmt: skip
def test_installed_commands_show_zero_defaults_and_the_workers_the_cores_allow(command, shown):
    out = subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:]], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "300"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert shown in " ".join(out.stdout.split())


def test_default_workers_follow_the_cores_this_process_may_use(monkeypatch):
    """More DataLoader workers than cores only make PyTorch warn ("suggested max number of worker ... is 2")."""
    for cores, workers in (({0}, 1), ({0, 1}, 2), (set(range(16)), 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=cores: cores)
        assert default_num_workers() == workers


@pytest.mark.parametrize(("command", "usage"), [
    (["-m", "eval.mbeir"], "usage: python -m eval.mbeir [-h] [--traceback] --model MODEL"),
    (["hub_upload.py"], "usage: python hub_upload.py [-h] [--traceback]"),
])  # fmt: skip
def test_usage_shows_the_command_to_type(command, usage):
    out = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(usage)


def test_cli_errors_end_in_one_line(tmp_path):
    """A failing command prints one line naming what is wrong, exits 1, and shows the traceback only on request."""
    command = [sys.executable, "-m", "ret2.eval.mbeir", "--model", str(tmp_path / "missing-model"), "--data_root",
               str(tmp_path), "--output-dir", str(tmp_path / "out"), "--tasks", "no_such_task"]  # fmt: skip
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown task(s) ['no_such_task']" in lines[0] and "Traceback" not in out.stderr
    out = subprocess.run([*command, "--traceback"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" in out.stderr
