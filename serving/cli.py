"""`sluiceway serve`.

Examples::

    sluiceway serve --artifacts artifacts/wav2vec2-base   # the embedded default config
    sluiceway serve --config serving.yaml                 # local Ray cluster on this machine
    sluiceway serve --config serving.yaml --address auto  # join a running Ray cluster
    sluiceway serve --artifacts artifacts/wav2vec2-base --build-from wav2vec2-base
        # build what this machine's pools lack first, the student in the background

Serves until Ctrl-C, then shuts down cleanly. Ray and the serving code are imported inside
the command so that the CLI root starts fast.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

from cli_output import stderr, stdout

if TYPE_CHECKING:
    from serving.config import ArtifactRef
    from serving.local import StudentHandover


def serve(
    config: Path | None = typer.Option(None, "--config", "-c", help="Serving config YAML."),
    artifacts: Path | None = typer.Option(
        None, "--artifacts", "-a", help="Serve one `sluiceway optimize` output with defaults."
    ),
    port: int = typer.Option(8000, help="HTTP port (with --artifacts)."),
    address: str | None = typer.Option(None, help="Join this Ray cluster instead of starting one."),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray cluster (default: all)."),
    build_from: str | None = typer.Option(
        None,
        help="With --artifacts: build what this machine's pools need from this preset or "
        "checkpoint when missing, serve, then build the distilled student in the background "
        "and roll it onto the CPU pool once it passes its gates.",
    ),
    optimize_args: str = typer.Option(
        "", help="With --build-from: more `sluiceway optimize` options, e.g. '--seconds 1'."
    ),
) -> None:
    """Serve models over HTTP on Ray Serve (GPU pool first, CPU pool on spillover)."""
    from serving.config import load_config
    from serving.control import APP_NAME, UNPLACED_MARK
    from serving.defaults import config_for_artifacts, cuda_usable
    from serving.server import deploy, start, stop

    if (config is None) == (artifacts is None):
        raise typer.BadParameter("give exactly one of --config or --artifacts")
    if build_from is not None and artifacts is None:
        raise typer.BadParameter("--build-from builds into --artifacts: give it too")
    handover: StudentHandover | None = None
    if config is not None:
        settings = load_config(config)
    else:
        assert artifacts is not None
        gpu = cuda_usable()
        if build_from is not None:
            handover = _build_first(build_from, artifacts, gpu=gpu, extra=optimize_args)
        settings = config_for_artifacts(artifacts, gpu=gpu, port=port)
    stopped = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    def _on_signals() -> None:
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)

    # Ctrl-C while Ray starts is held until the app is up, then shuts it all down cleanly.
    _on_signals()
    stderr.print("starting Ray and deploying (first start takes a little while)...")
    unplaced = start(settings, address=address, num_cpus=num_cpus)
    _on_signals()  # again: ray.init sets a SIGTERM handler of its own
    base = f"http://{settings.http.host}:{settings.http.port}"
    stdout.print(f"Sluiceway is serving on {base}")
    for name, model in settings.models.items():
        variant = next(iter(model.variants.values()))
        verb = _verb(variant.artifacts[model.routing.pools[0]])
        stdout.print(
            f"  {name}: POST {base}/v2/models/{name}/infer"
            + (f"   POST {base}/v1/models/{name}:{verb}" if verb else "")
        )
    for deployment, message in unplaced.items():
        reason = message[message.find(UNPLACED_MARK) :] if UNPLACED_MARK in message else message
        stderr.print(
            f"[yellow]{deployment}: no replica can be placed, so it serves nothing until one "
            f"can: {reason}[/yellow]"
        )
    stdout.print(
        f"  models: GET {base}/v1/models   docs: {base}/docs   "
        f"metrics: http://127.0.0.1:{settings.metrics.export_port}/metrics"
    )
    sys.stdout.flush()  # piped (a log, a supervisor), the endpoints must show now, not at exit
    if handover is not None and not stopped.is_set():
        assert artifacts is not None
        handover.start(lambda: deploy(config_for_artifacts(artifacts, gpu=gpu, port=port)))
    stopped.wait()
    stderr.print("shutting down..." if address is None else f"removing {APP_NAME!r}...")
    if handover is not None:
        handover.stop()
    stop(joined=address is not None)


def _verb(artifact: ArtifactRef) -> str | None:
    """The v1 verb a model answers: classify (audio, text classifiers), embed, or none."""
    from serving.fetch import artifact_manifest
    from serving.tasks import task_of

    return task_of(artifact_manifest(artifact).input).verb


def _build_first(model: str, artifacts: Path, *, gpu: bool, extra: str) -> StudentHandover | None:
    """Build what the pools here lack (foreground); the student's build, if still to do."""
    from serving.defaults import STUDENT
    from serving.local import (
        StudentHandover,
        build_now,
        missing_for_pools,
        optimize_command,
        student_pending,
    )

    missing = missing_for_pools(artifacts, gpu=gpu)
    if missing:
        stderr.print(
            f"building {', '.join(missing)} of {model} into {artifacts}: what the pools of "
            "this machine need first (`make artifacts` builds every variant)"
        )
        lines = "" if sys.stderr.isatty() else " --progress-lines"  # a log gets lines, not bars
        build_now(optimize_command(model, artifacts, missing, extra + lines), missing)
    if not student_pending(artifacts):
        return None
    command = optimize_command(model, artifacts, [STUDENT], f"{extra} --progress-lines")
    return StudentHandover(command, artifacts, say=_say)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root app."""
    app.command("serve")(serve)
