"""Load a saved ReT-2 folder the way a Hub user does, in a fresh process where our packages are not importable.

`load_in_clean_process(folder, script)` runs `script` in `python -I` with cwd elsewhere, HF_HUB_OFFLINE=1, a private
modules cache, and an import hook that refuses `configuration_ret2`, `modeling_ret2`, `training`, `eval` (they are
installed in editable mode here, so without the hook they would be importable and hide a broken remote-code folder).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKER = """
import importlib.abc, sys
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"configuration_ret2", "modeling_ret2", "training", "eval", "bench"}:
            raise ModuleNotFoundError(f"{name} must not be importable in this process")
sys.meta_path.insert(0, _Refuse())
"""


def load_in_clean_process(workdir: Path, script: str, timeout: int = 300) -> str:
    workdir = Path(workdir)
    (workdir / "cwd").mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(workdir / "hf_home"),
        "OMP_NUM_THREADS": "1",
    }
    code = BLOCKER + textwrap.dedent(script)
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=workdir / "cwd", env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"clean process failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout
