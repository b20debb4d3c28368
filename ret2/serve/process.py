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


PORT_ATTEMPTS = 3  # ports tried when the one picked is taken before the server binds it


class PortTaken(OSError):
    """The server could not bind its port: another process took it after `free_port` had picked it."""


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
        attempt = 1
        while True:
            try:
                return self._start()
            except PortTaken:
                if attempt == PORT_ATTEMPTS:
                    raise
                attempt += 1
                self.port = free_port()  # taken between free_port() and the server's bind: another port
                self.url = f"http://127.0.0.1:{self.port}"

    def _start(self) -> ServerProcess:
        command = [sys.executable, "-m", "ret2.serve", *self.args, "--port", str(self.port)]
        with open(self.log, "wb") as out:
            # a session of its own: stop() can end whatever the server starts (a Milvus Lite server) with it
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env}, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "address already in use" in self.output().lower():
                    raise PortTaken(self.port)
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
        """SIGTERM, then the exit status (SIGKILL after `timeout` seconds); what the server started in its session
        and left running is killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:  # the session is empty: nothing was left behind
            pass
        return self.process.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
