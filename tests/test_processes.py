"""The tests' process runner (tests/processes.py): a hung tree is stopped whole with its stacks, a process left
behind is found and stopped, even one in a session of its own whose parent has exited (as torchrun's ranks)."""

import sys
import textwrap

import psutil
import pytest
from processes import run

# a child that starts a grandchild in a session of its own (as torchrun starts its ranks), then both wait
SPAWNS = textwrap.dedent("""
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time\\ndef hang():\\n    time.sleep(600)\\nhang()"],
                                  start_new_session=True)
    print(grandchild.pid, flush=True)
    time.sleep({parent_sleep})
""")


def _pid_from(message: str) -> int:
    return int(message.split("--- stdout\n", 1)[1].split()[0])


def test_a_timeout_stops_the_whole_tree_and_shows_the_stacks():
    with pytest.raises(pytest.fail.Exception) as failure:
        run([sys.executable, "-c", SPAWNS.format(parent_sleep=600)], timeout=5)
    message = str(failure.value)
    assert "timed out after 5 s" in message
    assert "in hang" in message and "Current thread" in message  # the grandchild's stack, dumped by faulthandler
    assert not psutil.pid_exists(_pid_from(message)) or psutil.Process(_pid_from(message)).status() == "zombie"


def test_a_process_left_behind_by_an_exited_parent_is_named_and_stopped():
    with pytest.raises(pytest.fail.Exception) as failure:
        run([sys.executable, "-c", SPAWNS.format(parent_sleep=1)], timeout=60)
    message = str(failure.value)
    assert "exited with 0 but left processes running" in message
    grandchild = _pid_from(message)
    assert f"pid {grandchild}:" in message
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie"


def test_output_status_and_check():
    done = run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
               timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    with pytest.raises(pytest.fail.Exception, match="exited with 3"):
        run([sys.executable, "-c", "import sys; sys.exit(3)"], timeout=60, check=True)
