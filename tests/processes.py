"""The tests' child processes (torchrun, servers, commands): each starts in its own session, is watched for the
processes it spawns, and on a timeout or a failed check the whole tree is stopped, with every hung Python process's
stacks in the failure message.

torchrun starts its ranks in sessions of their own (`start_new_session=True` in torch.distributed.elastic), so
killing the launcher's process group does not reach them, and once the launcher has died they are reparented and no
longer its descendants. `run` therefore polls the tree while the command runs and remembers every descendant it has
seen (psutil's `Process` objects, which also guard against a reused pid).

Stacks: the children run with `PYTHONFAULTHANDLER=1`, so a SIGABRT makes each Python process write the traceback of
every thread to its stderr (which is ours) before it dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence

import psutil
import pytest

POLL = 0.2  # seconds between two looks at the tree
GRACE = 5.0  # seconds a child gets to exit by itself after its parent has, or to dump its stacks


def child_env(env: dict | None = None) -> dict:
    """The environment of a child: `env` (default: ours) with Python's fault handler on."""
    return {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}


def _alive(processes) -> list[psutil.Process]:
    living = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                living.append(process)
        except psutil.NoSuchProcess:
            pass
    return living


def _descendants(root: psutil.Process) -> set[psutil.Process]:
    try:
        return set(root.children(recursive=True))
    except psutil.NoSuchProcess:
        return set()


def _describe(processes) -> str:
    lines = []
    for process in processes:
        try:
            lines.append(f"  pid {process.pid}: {' '.join(process.cmdline())[:300]}")
        except psutil.Error:
            lines.append(f"  pid {process.pid}")
    return "\n".join(lines)


def stop_tree(processes, dump: bool = True) -> None:
    """SIGABRT (a stack dump under PYTHONFAULTHANDLER) to each of `processes` still alive if `dump`, then SIGKILL to
    what is left; returns once none is alive. The dumps go one process at a time: the processes share one stderr,
    and dumps written at once interleave line by line into an unreadable report."""
    if dump:
        for process in _alive(processes):
            try:
                process.send_signal(signal.SIGABRT)
            except psutil.NoSuchProcess:
                continue
            psutil.wait_procs([process], timeout=GRACE)
    for process in _alive(processes):
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(processes), timeout=GRACE)


class Run:
    """A child process started with `Run(command, ...)`: its tree watched until `wait` returns."""

    def __init__(self, command: Sequence[str], *, cwd=None, env: dict | None = None):
        self.command = [str(part) for part in command]
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command, cwd=cwd, env=child_env(env), stdout=self._out,
                                        stderr=self._err, start_new_session=True)  # fmt: skip
        self._root = psutil.Process(self.process.pid)
        self.seen: set[psutil.Process] = set()

    def poll(self) -> int | None:
        """The exit status, or None while the command runs; remembers the processes it has spawned so far."""
        self.seen |= _descendants(self._root)
        return self.process.poll()

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Waits for the command; on a timeout stops its whole tree (stacks dumped) and fails the test. A process
        of the tree still alive `GRACE` seconds after the command has exited is killed and fails the test too."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                stop_tree([*self.seen, self._root])
                pytest.fail(f"{self._name()} timed out after {timeout:.0f} s; its processes were stopped (their "
                            f"stacks are in stderr, 'Current thread' / 'Thread' blocks):\n{self._report()}")
            time.sleep(POLL)
        left = _alive(self.seen)
        if left:
            psutil.wait_procs(left, timeout=GRACE)
            left = _alive(left)
        if left:
            described = _describe(left)
            stop_tree(left)
            pytest.fail(f"{self._name()} exited with {self.process.returncode} but left processes running, now "
                        f"stopped:\n{described}\n{self._report()}")
        return subprocess.CompletedProcess(self.command, self.process.returncode, self._read(self._out),
                                           self._read(self._err))  # fmt: skip

    def kill(self) -> None:
        """Stops the command and every process it has spawned, without a stack dump."""
        self.poll()
        stop_tree([*self.seen, self._root], dump=False)

    def _name(self) -> str:
        return " ".join(self.command)[:500]

    @staticmethod
    def _read(file) -> str:
        file.seek(0)
        return file.read().decode(errors="replace")

    def _report(self, limit: int = 20_000) -> str:
        return f"--- stdout\n{self._read(self._out)[-limit:]}\n--- stderr\n{self._read(self._err)[-limit:]}"


def run(command: Sequence[str], *, timeout: float, cwd=None, env: dict | None = None,
        check: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    """`subprocess.run(command, capture_output=True, text=True)` for a test: in a session of its own, its whole tree
    stopped on a timeout (with the hung processes' stacks in the failure) or when it leaves processes behind.
    `check`: fail the test (with both outputs) when the command exits non-zero."""
    child = Run(command, cwd=cwd, env=env)
    try:
        result = child.wait(timeout)
    finally:
        child.kill()
    if check and result.returncode != 0:
        pytest.fail(f"{child._name()} exited with {result.returncode}\n--- stdout\n{result.stdout[-10_000:]}\n"
                    f"--- stderr\n{result.stderr[-10_000:]}")
    return result
