"""`sluiceway simulate`.

Examples::

    sluiceway simulate scenarios/gpu-cpu-150.yaml                 # report in simulation/<name>
    sluiceway simulate my.yaml --output out --policy sluiceway    # one policy only

Runs the scenario under Sluiceway's routing and each baseline on the same arrivals; prints
the Markdown report and writes report.md, report.json and plots to --output.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli_output import ProgressBar, stderr, stdout


def simulate(
    scenario: Path = typer.Argument(..., help="Scenario YAML (see scenarios/)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Report directory (default simulation/<scenario name>)."
    ),
    policy: list[str] | None = typer.Option(
        None, "--policy", help="Run only these (sluiceway, gpu-only, static-split, pow2)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Simulate a cluster: Sluiceway's routing at scale, beside the baselines."""
    from serving.errors import ScenarioError
    from simulate import POLICIES, load_scenario, run_scenario

    settings = load_scenario(scenario)
    unknown = sorted(set(policy or []) - set(POLICIES))
    if unknown:
        raise ScenarioError(f"--policy {unknown}: unknown; policies: {sorted(POLICIES)}")
    directory = output or Path("simulation") / settings.name
    chosen = policy or list(POLICIES)
    with ProgressBar(quiet=quiet) as bar:

        def advance(name: str, fraction: float) -> None:
            bar(f"simulating {name} (% of simulated time)", round(fraction * 100), 100)

        text = run_scenario(settings, directory, policies=chosen, progress=advance)
    stdout.print(text, markup=False, highlight=False)
    stderr.print(f"report: {directory / 'report.md'}")


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root app."""
    app.command("simulate")(simulate)
