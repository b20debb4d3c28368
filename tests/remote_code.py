"""Load a saved ReT-2 folder the way a Hub user does, in a fresh process where our packages are not importable.

`load_in_clean_process(workdir, script)` runs `script` through `ret2.publish.run_in_clean_process` (the same check the
upload CLI runs before pushing): `python -I` with cwd elsewhere, HF_HUB_OFFLINE=1, a private modules cache, and an
import hook that refuses our packages (they are installed in editable mode here, so without the hook they would be
importable and hide a broken remote-code folder).
"""

import sys
import textwrap
from pathlib import Path

from ret2.publish import run_in_clean_process


# Prepended to every script: the process must not see our packages, or it would not test the remote code.
GUARD = """
try:
    import modeling_ret2
    raise SystemExit("modeling_ret2 is importable: this process would not test the remote code")
except ModuleNotFoundError:
    pass
"""


def load_in_clean_process(workdir: Path, script: str, *args: str, timeout: int = 300, python: str = sys.executable) -> str:
    """Run `script` (dedented, `sys.argv[1:] == args`) in a clean process of `python` (default: this interpreter);
    returns its stdout, raises AssertionError if it fails."""
    result = run_in_clean_process(workdir, GUARD + textwrap.dedent(script), *args, timeout=timeout, python=python)
    if result.returncode != 0:
        raise AssertionError(f"clean process failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout
