"""The package layout: what an install claims at top level, and the README's first screen reaching the installed
commands."""

import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

TOP_LEVEL = {"ret2", "modeling_ret2", "configuration_ret2"}


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
