"""The dependency direction a newcomer can see: remote code <- the `ret2` library <- training <- commands
(`ret2.commands`, the demo and the benchmarks). Pinned on the source's import statements (module level and inside
functions alike; a module's `if __name__ == "__main__":` block runs it as a script, and is checked apart): no cycle, no
library module importing training or the command layer, no command importing another's private names, remote code
importing only itself; and `import ret2` and every command's `--help` stay light."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COMMANDS as INSTALLED
from conftest import REPO

OURS = ("ret2", "modeling_ret2", "configuration_ret2")
REMOTE = ("modeling_ret2", "configuration_ret2")
COMMAND_LAYER = "ret2.commands"
# The checkout's top-level entry points the package keeps (`python -m eval.mbeir`, `torchrun -m ret2.eval.mbeir`): their
# `__main__` block may start a command.
ENTRY_POINTS = ("ret2.eval.mbeir", "ret2.eval.m2kr")


def _module_files() -> dict[str, Path]:
    """Installed module name -> source file (the checkout's eval/ installs as ret2.eval)."""
    files = {}
    for folder in ("ret2", "eval", *REMOTE):
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            parts = ["ret2", *parts] if parts[0] == "eval" else parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`"""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and any(getattr(c, "value", None) == "__main__" for c in test.comparators))  # fmt: skip


def _import_nodes(tree: ast.AST, main_guard: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module (`main_guard=False`) or of its `__main__` blocks only (True)."""
    found, todo = [], [(tree, False)]
    while todo:
        node, guarded = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)) and guarded == main_guard:
            found.append(node)
        todo += [(child, guarded or _is_main_guard(node)) for child in ast.iter_child_nodes(node)]
    return found


def _imported(module: str, path: Path, known: set[str], main_guard: bool = False) -> list[tuple[str, list[str]]]:
    """(our module, the names taken from it) for each import of `module` (`from x import name` counts `x.name` when
    that is a module, else `x`); `main_guard`: the imports of its `if __name__ == "__main__":` blocks instead."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")), main_guard):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        for a in node.names:
            found.append((f"{base}.{a.name}", []) if f"{base}.{a.name}" in known else (base, [a.name]))
    return [(name, names) for name, names in found if name.split(".")[0] in OURS and name != module]


def _imports(module: str, path: Path, known: set[str], main_guard: bool = False) -> set[str]:
    """Our modules that `module` imports anywhere in its file (outside its `__main__` blocks, or only there)."""
    return {name for name, _ in _imported(module, path, known, main_guard)}


def _graph() -> dict[str, set[str]]:
    files = _module_files()
    return {m: {d for d in _imports(m, p, set(files)) if d in files} for m, p in files.items()}


def _is_training(module: str) -> bool:
    return module == "ret2.training" or module.startswith("ret2.training.")


def _is_command(module: str) -> bool:
    return (module == COMMAND_LAYER or module.startswith((f"{COMMAND_LAYER}.", "ret2.bench", "ret2.demo"))
            or module.endswith(".__main__"))  # fmt: skip


def _command_modules(files: dict[str, Path]) -> set[str]:
    """The modules of the command layer that are commands (not its shared `_common` / `flags`)."""
    return {m for m in files if m.startswith(f"{COMMAND_LAYER}.") and m.rpartition(".")[2] not in ("_common", "flags")}


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


def _library_imports_of_the_command_layer(files: dict[str, Path]) -> list[str]:
    offenders = []
    for m, path in files.items():
        body = _imports(m, path, set(files))
        guard = _imports(m, path, set(files), main_guard=True)
        offenders += [f"{m} imports {d}" for d in sorted(body) if not _is_command(m) and d.startswith(COMMAND_LAYER)]
        offenders += [f"{m} starts {d} in its __main__ block" for d in sorted(guard)
                      if d.startswith(COMMAND_LAYER) and not (_is_command(m) or m in ENTRY_POINTS)]  # fmt: skip
    return offenders


def _private_imports_across_commands(files: dict[str, Path]) -> list[str]:
    commands = _command_modules(files)
    return [f"{m} imports {', '.join(private)} from {d}" for m, path in sorted(files.items())
            for d, names in _imported(m, path, set(files)) + _imported(m, path, set(files), main_guard=True)
            if d in commands and d != m and (private := [n for n in names if n.startswith("_")])]  # fmt: skip


def test_no_library_module_imports_the_command_layer():
    """The library (core, training, remote code, evaluation) never imports `ret2.commands`; only the checkout's
    entry points (`eval/`) start a command, from their `__main__` block."""
    assert _library_imports_of_the_command_layer(_module_files()) == []


def test_no_command_imports_another_commands_private_names():
    """What commands share lives in `ret2.commands.flags` / `_common`, not in another command's `_name`."""
    assert _private_imports_across_commands(_module_files()) == []


def test_the_command_layer_checks_see_their_offenders(tmp_path):
    """The two checks above fail on a library module importing a command (also from a `__main__` block) and on a
    command (or a demo script) taking another command's private name; an entry point's `__main__` block passes."""
    files = {}
    for name, text in {
        "ret2.rag": "def f():\n    from ret2.commands.rag import main\n",
        "ret2.conversion": "if __name__ == '__main__':\n    import ret2.commands.convert_ret1\n",
        "ret2.eval.mbeir": "if __name__ == '__main__':\n    from ret2.commands.eval_mbeir import main\n",
        "ret2.commands.mine": "from ret2.commands.train import _path\nfrom ret2.commands.flags import add_model\n",
        "ret2.commands.train": "from ret2.commands._common import run_cli\n",
        "ret2.demo.ablation": "from ret2.commands.demo import _private, add_run_arguments\n",
        "ret2.commands.demo": "",
        "ret2.commands.flags": "",
        "ret2.commands._common": "",
    }.items():
        files[name] = tmp_path / f"{name}.py"
        files[name].write_text(text)
    assert _library_imports_of_the_command_layer(files) == [
        "ret2.rag imports ret2.commands.rag", "ret2.conversion starts ret2.commands.convert_ret1 in its __main__ block"]
    assert _private_imports_across_commands(files) == [
        "ret2.commands.mine imports _path from ret2.commands.train",
        "ret2.demo.ablation imports _private from ret2.commands.demo"]


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


# Every installed command, then the demo's scripts that share its flags; `--help` of each must load none of these.
COMMANDS = sorted(INSTALLED.values())
HEAVY = ("torch", "modeling_ret2", "transformers", "datasets", "pyarrow", "numpy", "ret2.index.ret2_index")
# `ret2-train` parses dataclasses with transformers' HfArgumentParser: its --help loads transformers (not torch)
ALLOWED = {"ret2.commands.train": ("transformers", "numpy")}


def test_help_of_every_command_loads_no_torch_model_code_or_data_library():
    """Each command's `--help` in a fresh process: torch, the model code, datasets, pyarrow and the index stay
    unloaded (and transformers, except for ret2-train's argument parser)."""
    code = f"""
import contextlib, importlib, io, json, sys
module = sys.argv[1]
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    importlib.import_module(module).main(["--help"])
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    found = {}
    for module in COMMANDS:
        out = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, check=True).stdout
        found[module] = [m for m in json.loads(out) if m not in ALLOWED.get(module, ())]
    assert found == {module: [] for module in COMMANDS}
