"""The `sluiceway` command: assembles one command group per package and maps errors.

Our errors and invalid configuration print as one ``Error: ...`` line on stderr with exit
status 1; ``SLUICEWAY_DEBUG=1`` adds the traceback. Anything else is a bug and re-raised.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from pydantic import ValidationError

from deploy.cli import register as register_deploy
from deploy.errors import DeployError
from optimize.cli import register as register_optimize
from optimize.errors import OptimizeError
from serving.cli import register as register_serving
from serving.errors import ServingError
from simulate.cli import register as register_simulate
from sluiceway import __version__

app = typer.Typer(
    name="sluiceway",
    help="Optimize models to ONNX artifacts, serve them on GPU and CPU pools, simulate "
    "clusters, deploy them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
register_optimize(app)
register_serving(app)
register_simulate(app)
register_deploy(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sluiceway {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log lifecycle events to stderr."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"invalid value for {where}: {first['msg']} (got {first.get('input')!r})"


_KNOWN: tuple[type[BaseException], ...] = (
    OptimizeError,
    ServingError,
    DeployError,
    ValidationError,
)


def main() -> None:
    """Console entry point."""
    try:
        app()  # usage errors are typer's: it prints them with the usage line, exit 2
    except _KNOWN as exc:
        if os.environ.get("SLUICEWAY_DEBUG") == "1":
            raise
        message = _validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
        print(f"Error: {message}", file=sys.stderr)
        print("(set SLUICEWAY_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
