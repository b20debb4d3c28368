"""The package layout: what an install claims at top level, and the README's first screen reaching the installed
commands."""

import subprocess
import sys
import zipfile
from pathlib import Path

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
    for package in REPO.glob("ret2/**/__init__.py"):  # every package of the checkout (a new one must be listed)
        assert str(package.relative_to(REPO)) in names, f"{package.parent} is missing from pyproject's packages"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("ret2-eval-mbeir", "ret2-eval-m2kr", "ret2-train", "ret2-index", "ret2-synthetic",
                    "ret2-convert-ret1", "ret2-publish", "ret2-demo", "ret2-bench"):  # fmt: skip
        assert f"{command} = ret2.commands.{command.removeprefix('ret2-').replace('-', '_')}:main" in scripts


def test_readme_first_screen_reaches_the_installed_commands_and_names_a_model_a_new_user_has():
    """After the two opening commands, the README says how to put the installed `ret2-*` commands on the PATH
    (before any of them is used), installs extras from the checkout (the package is not on PyPI), and its examples (and
    those of the guides in docs/ it links to) use the model the demo saves by default, not a placeholder."""
    from ret2.commands.demo import parse_args

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


def test_what_the_readme_examples_write_is_ignored_by_git():
    """Every folder the README's examples write into the checkout (`--output-dir X`, `--output X`, `ret2-index build
    X`, `Ret2Index.build("X"`, in code blocks and prose) is in .gitignore, so following the README leaves `git status` clean."""
    import re
    import shutil

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    readme = (REPO / "README.md").read_text()
    written = re.findall(r"--output(?:-dir)? (\S+)|ret2-index build (\S+)|Ret2Index\.build\(\"([^\"]+)\"", readme)
    tops = {Path(next(filter(None, groups)).strip("`")).parts[0] for groups in written}
    assert {"data", "runs", "results", "photos-index", "my-photos"} <= tops, tops  # the parse found the examples
    for top in sorted(tops):
        check = subprocess.run(["git", "check-ignore", "-q", f"{top}/x"], cwd=REPO)
        assert check.returncode == 0, f"{top}/ (written by a README example) is not ignored by git"


@pytest.mark.processes
def test_a_checkout_named_ret2_does_not_shadow_the_install(tmp_path):
    """A clone in a folder named `ret2/`, a script run from its parent, after the README's `ret2-synthetic` has written
    `data/` into the clone: with setuptools' default editable finder, Python takes the clone as a namespace package
    `ret2` and `ret2.data` as its data/ folder, so `import ret2.data.images` fails. run.sh installs the strict editable
    mode, whose path entry holds the real package and wins. (Run here in its own folder: the tests' own sys.path puts
    the checkout first.)"""
    from processes import run

    clone = tmp_path / "ret2"
    synthetic = [str(Path(sys.executable).parent / "ret2-synthetic"), "--output-dir", str(clone / "data" / "synthetic"),
                 "--n-per-task", "1", "--pool-size", "4", "--n-train-per-task", "1", "--no-m2kr"]  # fmt: skip
    run(synthetic, timeout=300, cwd=tmp_path, check=True)
    assert (clone / "data" / "synthetic").is_dir()
    (tmp_path / "use.py").write_text("import ret2.data.images, ret2.index\nprint(ret2.data.images.__file__)\n")
    result = run([sys.executable, "use.py"], timeout=300, cwd=tmp_path)
    assert result.returncode == 0, (
        "the folder ret2/ shadows the installed package; install it as run.sh does "
        f"(pip install -e . --config-settings editable_mode=strict):\n{result.stderr[-3000:]}")
    assert Path(result.stdout.strip()).resolve() == (REPO / "ret2" / "data" / "images.py").resolve()


@pytest.mark.processes
def test_from_the_checkout_root_its_ret2_imports_with_eval(tmp_path):
    """Run from the checkout's root (`python -m ...`, the tests), the checkout's own `ret2/` comes first on sys.path,
    ahead of the strict install's link tree, so it must hold `ret2.eval` itself: `ret2/eval` is a link to the top-level
    eval/ (which pyproject installs as `ret2.eval`)."""
    from processes import run

    assert (REPO / "ret2" / "eval").is_symlink() and (REPO / "ret2" / "eval").resolve() == (REPO / "eval").resolve()
    script = "import ret2, ret2.eval.mbeir\nprint(ret2.__file__)\nprint(ret2.eval.mbeir.__file__)\n"
    result = run([sys.executable, "-c", script], timeout=300, cwd=REPO, check=True)
    package, mbeir = (Path(line).resolve() for line in result.stdout.split())
    assert (package, mbeir) == ((REPO / "ret2" / "__init__.py").resolve(), (REPO / "eval" / "mbeir.py").resolve())
