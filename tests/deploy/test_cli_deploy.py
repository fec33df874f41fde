"""`sluiceway deploy` as a user runs it: the real CLI in a subprocess, the real helm binary.

No Kubernetes API server can run here: commands that need one are checked for the clear
error they give without a cluster, or run against tests/deploy/kube_standin.py (which says
what it answers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.values import PoolArtifact, add_variant
from serving.config import parse_config
from tests.deploy.kube_standin import running_standin

SLUICEWAY = Path(sys.executable).with_name("sluiceway")


def sluiceway(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [str(SLUICEWAY), *args], capture_output=True, text=True, check=False, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def values_file(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("values") / "values.yaml"
    done = sluiceway(
        "deploy",
        "values",
        "--artifacts",
        str(tiny_artifacts),
        "--model",
        "w2v",
        "--uri-prefix",
        "https://models.example.com/w2v",
        "--output",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_values_from_artifacts_are_chart_values_the_serving_config_accepts(
    values_file: Path,
) -> None:
    values = yaml.safe_load(values_file.read_text())
    config = parse_config(values["serving"])
    stable = config.models["w2v"].variants["stable"]
    assert stable.artifacts["gpu"].uri == "https://models.example.com/w2v/fp16"
    assert stable.artifacts["cpu"].uri == "https://models.example.com/w2v/int8"
    assert config.models["w2v"].routing.pools == ["gpu", "cpu"]
    assert values["workerGroups"]["gpu"]["gpus"] == 1


@pytest.mark.slow
def test_rollout_dry_run_prints_the_plan_and_renders_every_step(
    values_file: Path, tiny_artifacts: Path, tmp_path: Path
) -> None:
    values = yaml.safe_load(values_file.read_text())
    pools = {
        "gpu": PoolArtifact(artifact=tiny_artifacts / "fp16", device="cuda"),
        "cpu": PoolArtifact(artifact=tiny_artifacts / "int8", device="cpu"),
    }
    new = add_variant(values, "w2v", "v2", pools, 0, uri_prefix="https://models.example.com/v2")
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump(new))
    done = sluiceway(
        "deploy",
        "rollout",
        "--release",
        "sw",
        "-f",
        str(path),
        "--model",
        "w2v",
        "--canary",
        "v2",
        "--steps",
        "10,50,100",
        "--dry-run",
    )
    assert done.returncode == 0, done.stderr
    for step in (10, 50, 100):
        assert f"step {step:>3}%: helm upgrade sw with v2={step} stable={100 - step}" in done.stdout
        assert f"step {step:>3}%: values render with helm template" in done.stdout
    assert "nothing was changed" in done.stdout


@pytest.mark.slow
def test_rollout_without_a_cluster_is_one_clear_error(values_file: Path, tmp_path: Path) -> None:
    empty = tmp_path / "kubeconfig"
    empty.write_text("")
    done = sluiceway(
        "deploy",
        "rollout",
        "--release",
        "sw",
        "-f",
        str(values_file),
        "--model",
        "w2v",
        "--canary",
        "stable",
        "--baseline",
        "stable",
        "--steps",
        "50,100",
        kubeconfig=empty,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and "KUBECONFIG" in done.stderr, done.stderr


def test_bad_steps_are_refused_before_anything_happens(tmp_path: Path) -> None:
    done = sluiceway(
        "deploy",
        "rollout",
        "--release",
        "sw",
        "-f",
        str(tmp_path / "x.yaml"),
        "--model",
        "w2v",
        "--canary",
        "v2",
        "--steps",
        "50,20",
    )
    assert done.returncode == 1
    assert "--steps 50,20: give increasing canary weights" in done.stderr


def test_status_of_an_unknown_release_says_so(tmp_path: Path) -> None:
    with running_standin() as kube:
        config = kube.write_kubeconfig(tmp_path / "kubeconfig")
        done = sluiceway("deploy", "status", "--release", "nope", "-n", "ml", kubeconfig=config)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and "nope" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pool", "gpu=fp16"], "--pool 'gpu=fp16': write NAME=SUBDIR:DEVICE"),
        ([], "holds neither fp16/ nor int8/"),
    ],
)
def test_values_with_a_bad_pool_or_no_artifacts_says_what_to_pass(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = sluiceway("deploy", "values", "--artifacts", str(tmp_path), *args)
    assert done.returncode == 1
    assert message in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("steps", "message"), [("10,abc", "give integers"), ("50,100", "cannot read")]
)
def test_rollout_with_unparsable_steps_or_an_unreadable_values_file(
    tmp_path: Path, steps: str, message: str
) -> None:
    done = sluiceway(
        "deploy",
        "rollout",
        "--release",
        "sw",
        "-f",
        str(tmp_path / "missing.yaml"),
        "--model",
        "w2v",
        "--canary",
        "v2",
        "--steps",
        steps,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and message in done.stderr, done.stderr


@pytest.mark.slow
def test_values_add_a_second_model_to_the_same_file(
    values_file: Path, tiny_artifacts: Path, tmp_path: Path
) -> None:
    """Two models on one values file: a pool both use holds a replica of each, so its pods'
    CPUs and memory add up; each model's SLO note stays in the header."""
    out = tmp_path / "values.yaml"
    out.write_text(values_file.read_text())
    first = yaml.safe_load(out.read_text())
    done = sluiceway(
        "deploy", "values", "--artifacts", str(tiny_artifacts), "--model", "w2v-b",
        "--uri-prefix", "https://models.example.com/w2v-b", "--output", str(out), "--add",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    both = yaml.safe_load(out.read_text())
    assert set(both["serving"]["models"]) == {"w2v", "w2v-b"}
    cpu, cpu_before = both["workerGroups"]["cpu"], first["workerGroups"]["cpu"]
    limits, before = cpu["resources"]["limits"], cpu_before["resources"]["limits"]
    assert int(limits["cpu"]) == 2 * int(before["cpu"])
    assert limits["memory"] == f"{2 * int(before['memory'].removesuffix('Mi'))}Mi"
    header = [line for line in out.read_text().splitlines() if line.startswith("# w2v")]
    assert [line.split(":")[0] for line in header] == ["# w2v", "# w2v-b"]
    again = sluiceway(
        "deploy", "values", "--artifacts", str(tiny_artifacts), "--model", "w2v",
        "--output", str(out), "--add",
    )  # fmt: skip
    assert again.returncode == 1
    assert "model 'w2v' is already in the values" in again.stderr
    assert yaml.safe_load(out.read_text()) == both  # nothing lost


def test_values_add_without_a_file_to_add_to_says_so(tiny_artifacts: Path, tmp_path: Path) -> None:
    done = sluiceway(
        "deploy", "values", "--artifacts", str(tiny_artifacts), "--output",
        str(tmp_path / "none.yaml"), "--add",
    )  # fmt: skip
    assert done.returncode == 1
    assert "does not exist; write the first model without --add" in done.stderr


def test_boot_refuses_a_user_without_root_and_a_bad_claim(tmp_path: Path) -> None:
    values = tmp_path / "v.yaml"
    values.write_text("{}\n")
    done = sluiceway("deploy", "boot", "-f", str(values), "--claim", "no-directory")
    assert done.returncode == 1
    if os.geteuid() == 0:
        assert "--claim 'no-directory': write CLAIM=DIR" in done.stderr
    else:
        assert "booting needs root" in done.stderr
