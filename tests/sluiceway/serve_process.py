"""`sluiceway serve` as a user runs it: a real subprocess with its own Ray cluster, its
output in files, stopped with Ctrl-C; only the processes it started are ever killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil


class ServeProcess:
    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc = proc
        self._out, self._err = out, err
        self.left_running: list[str] = []

    def stdout(self) -> str:
        return self._out.read_text()

    def stderr(self) -> str:
        return self._err.read_text()

    def wait_for(self, text: str, deadline_s: float, *, stream: str = "stdout") -> None:
        """Poll until ``text`` shows in the output; fail if the process ends first."""
        read = self.stdout if stream == "stdout" else self.stderr
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and self.proc.poll() is None:
            if text in read():
                return
            time.sleep(0.5)
        raise AssertionError(
            f"{text!r} never showed (exit status {self.proc.poll()}):\n{self.stderr()[-3000:]}"
        )

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def interrupt(self, timeout_s: float = 120) -> int:
        """Ctrl-C, then its exit status; what it started and left running is stopped (and
        kept in ``left_running`` for a test to look at)."""
        started = self.children()
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=timeout_s)
        _, alive = psutil.wait_procs(started, timeout=30)
        self.left_running = [p.name() for p in alive if p.is_running()]
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        return code


@contextlib.contextmanager
def serving(args: list[str], tmp_path: Path) -> Iterator[ServeProcess]:
    """Run ``sluiceway serve ARGS``; whatever happens, stop it and what it started."""
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sluiceway", "serve", *args],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
    process = ServeProcess(proc, out, err)
    try:
        yield process
    finally:
        if proc.poll() is None:
            started = process.children()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            for p in started:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
