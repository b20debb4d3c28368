"""A `ret2-serve` in a child process on a free loopback port: what the tests and the benchmark talk to."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m ret2.serve ARGS --port <free port>` started on entering, waited for until `/health` answers, and
    stopped with SIGTERM on leaving. `url` is its address; `log` the file holding its output.

    Args:
        args: the command's arguments (`--model PATH` or `--index FOLDER`, flags).
        log: where its stdout and stderr go.
        env: extra environment variables.
        timeout: seconds to wait for `/health`.
    """

    def __init__(self, args: list[str], log: Path, env: dict | None = None, timeout: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args, self.log, self.env, self.timeout = args, Path(log), env or {}, timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        command = [sys.executable, "-m", "ret2.serve", *self.args, "--port", str(self.port)]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env})  # fmt: skip
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ret2-serve exited with status {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"ret2-serve did not answer /health within {self.timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (SIGKILL after `timeout` seconds)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
