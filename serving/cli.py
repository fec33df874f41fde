"""`sluiceway serve`.

Examples::

    sluiceway serve --artifacts artifacts/wav2vec2-base   # the embedded default config
    sluiceway serve --config serving.yaml                 # local Ray cluster on this machine
    sluiceway serve --config serving.yaml --address auto  # join a running Ray cluster

Serves until Ctrl-C, then shuts down cleanly. Ray and the serving code are imported inside
the command so that the CLI root starts fast.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import typer

from sluiceway._output import stderr, stdout


def serve(
    config: Path | None = typer.Option(None, "--config", "-c", help="Serving config YAML."),
    artifacts: Path | None = typer.Option(
        None, "--artifacts", "-a", help="Serve one `sluiceway optimize` output with defaults."
    ),
    port: int = typer.Option(8000, help="HTTP port (with --artifacts)."),
    address: str | None = typer.Option(None, help="Join this Ray cluster instead of starting one."),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray cluster (default: all)."),
) -> None:
    """Serve models over HTTP on Ray Serve (GPU pool first, CPU pool on spillover)."""
    from serving.app import APP_NAME
    from serving.config import load_config
    from serving.defaults import config_for_artifacts, cuda_usable
    from serving.server import start, stop

    if (config is None) == (artifacts is None):
        raise typer.BadParameter("give exactly one of --config or --artifacts")
    if config is not None:
        settings = load_config(config)
    else:
        assert artifacts is not None
        settings = config_for_artifacts(artifacts, gpu=cuda_usable(), port=port)
    stderr.print("starting Ray and deploying (first start takes a little while)...")
    start(settings, address=address, num_cpus=num_cpus)
    base = f"http://{settings.http.host}:{settings.http.port}"
    stdout.print(f"Sluiceway is serving on {base}")
    for model in settings.models:
        stdout.print(
            f"  {model}: POST {base}/v2/models/{model}/infer   "
            f"POST {base}/v1/models/{model}:classify"
        )
    stdout.print(
        f"  models: GET {base}/v1/models   docs: {base}/docs   "
        f"metrics: http://127.0.0.1:{settings.metrics.export_port}/metrics"
    )
    sys.stdout.flush()  # piped (a log, a supervisor), the endpoints must show now, not at exit
    stopped = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    stopped.wait()
    stderr.print("shutting down..." if address is None else f"removing {APP_NAME!r}...")
    stop(joined=address is not None)


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root app."""
    app.command("serve")(serve)
