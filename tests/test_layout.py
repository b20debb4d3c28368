"""The package layout: what an install claims at top level, one RGB conversion for every image path, the commands."""

import argparse
import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pattern
from PIL import Image

from ret2.data.images import ImageLoader
from ret2.distributed import default_num_workers

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"ret2", "modeling_ret2", "configuration_ret2"}
COMMANDS = ["ret2.eval.mbeir", "ret2.eval.m2kr", "ret2.training.train", "ret2.index", "ret2.rag", "ret2.data.synthetic",
            "ret2.conversion", "ret2.publish", "ret2.demo", "ret2.demo.ablation", "ret2.bench",
            "ret2.bench.train_tiny", "ret2.bench.eval_pool", "ret2.bench.profile", "ret2.bench.encode_raw",
            "ret2.bench.search_index", "ret2.bench.sorting"]  # fmt: skip


def command_main(module: str):
    """The `main` of a command module; a command that is a package runs its `__main__`."""
    packages = ("ret2.demo", "ret2.bench", "ret2.index")
    return importlib.import_module(f"{module}.__main__" if module in packages else module).main


@pytest.mark.slow
def test_wheel_installs_exactly_the_ret2_namespace(tmp_path):
    """Pins the layout: a built wheel holds `ret2` (with `ret2.eval` from the checkout's eval/) and the two remote-code
    modules, and nothing else at top level (no `eval`, `training`, `bench`, `demo`, `conversion`, `data`)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("ret2-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top == TOP_LEVEL
    for module in ("ret2/eval/mbeir.py", "ret2/eval/m2kr.py", "ret2/data/mbeir.py", "ret2/data/images.py",
                   "ret2/training/train.py", "ret2/metrics/ret2_retrieval/ret2_retrieval.py"):  # fmt: skip
        assert module in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("ret2-eval-mbeir", "ret2-eval-m2kr", "ret2-train", "ret2-index", "ret2-synthetic",
                    "ret2-convert-ret1", "ret2-publish", "ret2-demo", "ret2-bench"):  # fmt: skip
        assert f"{command} = ret2.cli:" in scripts


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "I;16", "LA"])
def test_one_rgb_conversion_for_the_loader_and_the_processor(tmp_path, tiny, mode):
    """The same file gives identical pixel values through the dataset loader (training, evaluation) and through
    the Hub processor given the opened file."""
    _, processor = tiny
    if mode == "I;16":
        image = Image.fromarray((np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 37))
    else:
        image = pattern(3).convert("RGBA")
        image.putalpha(Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1))))  # a real alpha ramp
        image = image.convert(mode) if mode != "RGBA" else image
    path = tmp_path / ("image.tiff" if mode in ("CMYK", "I;16") else "image.png")
    image.save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode
        direct = processor(images=[opened], return_tensors="pt")["pixel_values"]
    loaded = processor(images=[ImageLoader(tmp_path)(path.name, "doc-1")], return_tensors="pt")["pixel_values"]
    assert torch.equal(direct, loaded)


def test_exif_rotated_file_gets_the_same_pixels_through_the_loader_and_encode(tmp_path, tiny):
    """A phone photo stored sideways with an EXIF orientation: with the same rule, the dataset / index loader and
    `Ret2Model.encode`'s loader read the same pixels, so a document indexed from disk (upright) matches the same file
    given as a query (docs/images.md)."""
    from modeling_ret2.processing_ret2 import load_image

    _, processor = tiny
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    pattern(5, size=48).crop((0, 0, 48, 30)).save(tmp_path / "photo.jpg", exif=exif)
    for orientation, size in (("upright", (30, 48)), ("stored", (48, 30))):  # upright: the stored 48 x 30 turned
        loaded = ImageLoader(tmp_path, orientation)("photo.jpg", "doc-1")
        assert loaded.size == size
        direct = processor(images=[load_image(tmp_path / "photo.jpg", orientation)], return_tensors="pt")
        assert torch.equal(processor(images=[loaded], return_tensors="pt")["pixel_values"], direct["pixel_values"])


def test_truncated_image_names_the_file_and_the_record(tmp_path):
    pattern(1).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"image 'cut.png' of record 'q7' at .*cut.png cannot be read"):
        ImageLoader(tmp_path)("cut.png", "q7")


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


def test_readme_first_screen_reaches_the_installed_commands_and_names_a_model_a_new_user_has():
    """After the two opening commands, the README says how to put the installed `ret2-*` commands on the PATH
    (before any of them is used), installs extras from the checkout (the package is not on PyPI), and its examples (and
    those of the guides in docs/ it links to) use the model the demo saves by default, not a placeholder."""
    from ret2.demo.__main__ import parse_args

    readme = (REPO / "README.md").read_text()
    activate = readme.index("source .venv/bin/activate")
    assert readme.index("./run.sh test") < activate < readme.index("## What ReT-2 is")
    commands = ("ret2-demo", "ret2-train", "ret2-eval-mbeir", "ret2-index")
    assert activate < min(readme.index(f"{name} ") for name in commands)
    assert 'pip install "ret2[' not in readme and 'pip install -e ".[milvus,sentence-transformers]"' in readme
    args = parse_args([])
    demo_model = f"{args.output_dir}/seed-{args.seeds[0]}/ret2-model"
    guides = [(REPO / "docs" / name).read_text() for name in ("using.md", "your-collection.md", "evaluation.md")]
    assert "path/or/hub-id" not in readme and readme.count(demo_model) >= 4
    assert all(guide.count(demo_model) >= 3 for guide in guides)  # the guides' examples use it too
