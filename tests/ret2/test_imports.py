"""The dependency direction a newcomer can see: remote code <- the `ret2` library <- training <- commands (CLIs,
demo, bench). Pinned on the source's import statements (module level and inside functions alike): no cycle, no
library module importing training, remote code importing only itself; and `import ret2` stays light."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

OURS = ("ret2", "modeling_ret2", "configuration_ret2")
REMOTE = ("modeling_ret2", "configuration_ret2")


def _module_files() -> dict[str, Path]:
    """Installed module name -> source file (the checkout's eval/ installs as ret2.eval)."""
    files = {}
    for folder in ("ret2", "eval", *REMOTE):
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            parts = ["ret2", *parts] if parts[0] == "eval" else parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `module` imports anywhere in its file (`from x import name` counts `x.name` when that is a
    module, else `x`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in OURS and n != module}
    return found


def _graph() -> dict[str, set[str]]:
    files = _module_files()
    return {m: {d for d in _imports(m, p, set(files)) if d in files} for m, p in files.items()}


def _is_training(module: str) -> bool:
    return module == "ret2.training" or module.startswith("ret2.training.")


def _is_command(module: str) -> bool:
    return module == "ret2.cli" or module.startswith(("ret2.bench", "ret2.demo")) or module.endswith(".__main__")


def test_no_import_cycle():
    graph, cycles = _graph(), []
    # Tarjan's strongly connected components: a component of two or more modules is a cycle
    index, low, stack, on_stack, counter = {}, {}, [], set(), [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_only_training_and_commands_import_training():
    offenders = sorted(f"{m} imports {d}" for m, deps in _graph().items() for d in deps
                       if _is_training(d) and not (_is_training(m) or _is_command(m)))  # fmt: skip
    assert offenders == []


def test_remote_code_imports_only_remote_code():
    offenders = sorted(f"{m} imports {d}" for m, deps in _graph().items() if m.startswith(REMOTE) for d in deps
                       if not d.startswith(REMOTE))  # fmt: skip
    assert offenders == []


def test_the_checks_see_a_cycle_and_a_library_import_of_training(tmp_path):
    """The graph reader itself: relative and absolute imports, inside functions too."""
    package = tmp_path / "ret2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from .b import g\n")
    (package / "b.py").write_text("from ret2 import a\nimport ret2.training.train\n")
    files = {"ret2": package / "__init__.py", "ret2.a": package / "a.py", "ret2.b": package / "b.py",
             "ret2.training.train": package / "a.py"}  # fmt: skip
    assert _imports("ret2.a", files["ret2.a"], set(files)) == {"ret2.b"}
    assert _imports("ret2.b", files["ret2.b"], set(files)) == {"ret2.a", "ret2.training.train"}


def test_import_ret2_is_light():
    """`import ret2` loads no model code, datasets, pyarrow or the index; names load on first use."""
    code = ("import sys, ret2; heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'pyarrow', 'ret2.index')"
            " if m in sys.modules); print(heavy); print(ret2.Ret2Index.__module__)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "ret2.index.ret2_index"]


# Every command's module (a package runs its __main__); `--help` of each must not load these.
COMMANDS = ["ret2.eval.mbeir", "ret2.eval.m2kr", "ret2.training.train", "ret2.training.mining", "ret2.index.__main__",
            "ret2.rag", "ret2.data.synthetic", "ret2.conversion", "ret2.publish", "ret2.demo.__main__", "ret2.demo.ablation",
            "ret2.demo.matryoshka", "ret2.bench.__main__", "ret2.serve.__main__"]  # fmt: skip
HEAVY = ("datasets", "pyarrow", "ret2.index.ret2_index")


@pytest.mark.slow
def test_help_of_every_command_loads_neither_datasets_nor_pyarrow_nor_the_index():
    """One process runs each command's `--help` in turn; the first command after which a heavy module is loaded is
    the one that loaded it (the set of loaded modules only grows)."""
    code = f"""
import contextlib, importlib, io, json, sys
found = {{}}
for module in {COMMANDS!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        importlib.import_module(module).main(["--help"])
    found[module] = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps(found))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {module: [] for module in COMMANDS}
