"""A first run on one machine: build only what this machine's pools need, serve it, and
bring the distilled student in once it has passed its gates.

``sluiceway serve --artifacts DIR --build-from MODEL`` (what ``make serve`` runs):

1. the artifacts the pools here need and ``DIR`` lacks (``int8`` for the CPU pool, ``fp16``
   where CUDA is usable) are built first, in the foreground, with progress;
2. serving starts;
3. ``student-int8`` is built in a background process at low priority; when it passes its
   gates the app is redeployed with it on the CPU pool (a change of variants only: the
   running CPU replica loads it beside ``int8`` and swaps in place, nothing restarts, no
   request fails), and a line says so. When it
   fails its gates, the CPU pool keeps ``int8``.

Builds run ``sluiceway optimize --add`` in a child process: serving never imports torch.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from optimize.errors import ArtifactError
from optimize.manifest import read_manifest
from serving.defaults import POOL_ARTIFACTS, STUDENT, cpu_artifact
from serving.errors import BuildFailed

logger = logging.getLogger(__name__)

# The background build yields the cores to serving: inference runs at nice 19 too (its
# share stays), the proxy and the ingress above both.
BACKGROUND_NICE = 19
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C


def _present(directory: Path, variant: str) -> bool:
    return (directory / variant / "manifest.json").is_file()


def _accepted(directory: Path, variant: str) -> bool:
    try:
        return _present(directory, variant) and read_manifest(directory / variant).accepted
    except ArtifactError:
        return False


def missing_for_pools(directory: Path, *, gpu: bool) -> list[str]:
    """The variants the pools here need and ``directory`` lacks: ``int8`` for the CPU pool
    (none when an accepted student is there), ``fp16`` for the GPU pool (``gpu`` only)."""
    missing = []
    if gpu and not _present(directory, POOL_ARTIFACTS["gpu"]):
        missing.append(POOL_ARTIFACTS["gpu"])
    if not _accepted(directory, STUDENT) and not _present(directory, POOL_ARTIFACTS["cpu"]):
        missing.append(POOL_ARTIFACTS["cpu"])
    return missing


def student_pending(directory: Path) -> bool:
    """Whether the student is still to be built (a rejected one stays: rebuilding the same
    seeded recipe would fail again)."""
    return not _present(directory, STUDENT)


def optimize_command(
    model: str, directory: Path, variants: Sequence[str], extra: str = ""
) -> list[str]:
    """``sluiceway optimize --add`` for ``variants`` (``extra``: more options, shell-quoted)."""
    return [
        sys.executable,
        "-m",
        "sluiceway",
        "optimize",
        "--model",
        model,
        "--output",
        str(directory),
        "--variants",
        ",".join(variants),
        "--add",
        *shlex.split(extra),
    ]


def build_now(command: list[str], variants: Sequence[str]) -> None:
    """Run a build in the foreground (its progress on this terminal); raise if it fails."""
    code = subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
    if code in (INTERRUPTED, -signal.SIGINT):  # Ctrl-C reached the build too: stop here
        raise KeyboardInterrupt
    if code != 0:
        raise BuildFailed(
            f"building {', '.join(variants)} failed (exit status {code}; the lines above say "
            f"why); the command was: {shlex.join(command)}"
        )


class StudentHandover:
    """Builds the student in a background process; once it passes its gates, ``redeploy``
    (given to ``start``) puts it on the CPU pool. ``say`` prints a line for the user;
    ``finished`` is set when it is all over (``outcome`` says how)."""

    def __init__(self, command: list[str], directory: Path, say: Callable[[str], None]) -> None:
        self._command = command
        self._directory = directory
        self._redeploy: Callable[[], object] = lambda: None
        self._say = say
        self._process: subprocess.Popen[str] | None = None
        self._stopping = threading.Event()
        self.finished = threading.Event()
        self.outcome = ""

    def start(self, redeploy: Callable[[], object]) -> None:
        self._redeploy = redeploy
        self._process = subprocess.Popen(
            self._command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # its own session: Ctrl-C on the terminal reaches serve, which stops it here
            start_new_session=True,
            preexec_fn=lambda: os.nice(BACKGROUND_NICE),
        )
        self._say(
            f"building {STUDENT} in the background (pid {self._process.pid}, its lines are "
            f"prefixed '{STUDENT}:'); the CPU pool serves {POOL_ARTIFACTS['cpu']} meanwhile"
        )
        threading.Thread(target=self._watch, name="student-handover", daemon=True).start()

    def _watch(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            if line.strip():
                self._say(f"{STUDENT}: {line.rstrip()}")
        code = self._process.wait()
        try:
            if self._stopping.is_set():
                self.outcome = "stopped"
            elif code == 0 and cpu_artifact(self._directory) == STUDENT:
                self._say(
                    f"{STUDENT} passed its gates: rolling it onto the cpu pool "
                    f"({POOL_ARTIFACTS['cpu']} -> {STUDENT})"
                )
                self._redeploy()
                self.outcome = "handed over"
                self._say(f"the cpu pool now serves {STUDENT}")
            else:
                self.outcome = f"failed (exit status {code})"
                self._say(
                    f"{STUDENT} was not built or did not pass its gates (exit status {code}): "
                    f"the cpu pool keeps {POOL_ARTIFACTS['cpu']}"
                )
        except Exception as exc:  # a failed redeploy leaves the old app serving
            self.outcome = f"redeploy failed: {exc}"
            logger.exception("rolling %s onto the cpu pool failed", STUDENT)
            self._say(f"rolling {STUDENT} out failed ({exc}): the cpu pool keeps serving")
        finally:
            self.finished.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop a build still running (an interrupted distillation resumes next time)."""
        self._stopping.set()
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)  # the build removes its work directory
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
