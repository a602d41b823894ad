"""Child processes of a run (stream job, serving, monitor): started with logs, checked, stopped.

Each long-running stage gets its own process so a Spark JVM, the HTTP server and the faust
worker do not share an interpreter, and a crash in one is reported with its log tail.
"""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from contracts import StreamrlError


class ServiceError(StreamrlError):
    """A child process died or did not become ready."""

    def __init__(self, message: str, *, service: str, log_path: Path):
        super().__init__(message)
        self.service = service
        self.log_path = log_path


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ServiceError(
                f"{self.name} exited with code {code}; log {self.log_path}:\n{self.log_tail()}",
                service=self.name,
                log_path=self.log_path,
            )

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `probe` every 0.5 s until it is true; fail early if the process dies."""

        def alive_and_ready() -> bool:
            self.check_alive()  # a ServiceError is not retried: it ends the wait at once
            return probe()

        polling = Retrying(
            retry=retry_if_result(operator.not_), stop=stop_after_delay(timeout_s), wait=wait_fixed(0.5)
        )
        try:
            polling(alive_and_ready)
        except RetryError:
            raise ServiceError(
                f"{self.name} did not become ready ({what}) within {timeout_s:.0f}s; log {self.log_path}:\n"
                f"{self.log_tail()}",
                service=self.name,
                log_path=self.log_path,
            ) from None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (the child shuts down cleanly), then SIGKILL if it does not."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)


def start_process(
    name: str, args: Sequence[str], log_path: Path, *, cwd: Path | None = None
) -> ManagedProcess:
    """Run `python -m …` style `args` with this interpreter, output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    popen = subprocess.Popen(
        [sys.executable, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    log.close()
    return ManagedProcess(name=name, popen=popen, log_path=log_path)
