"""deploy.helm against the real helm binary (v4, installed by `make install`).

No Kubernetes API server can run on these machines, so the release commands meet either
no cluster at all (a kubeconfig pointing at 127.0.0.1:1, where nothing listens) or the
small local stand-in of tests/deploy/kube_standin.py, which answers only helm's
reachability check and its release-storage list (always empty: no releases).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from deploy.errors import HelmFailed, HelmMissing, NoClusterContext, ReleaseNotFound
from deploy.helm import BUNDLED_HELM, DEFAULT_CHART, REPO_ROOT, Helm
from deploy.values import PoolArtifact, chart_values, write_values
from tests.deploy.kube_standin import KubeStandIn, running_standin


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm.find()


@pytest.fixture(scope="module")
def values_file(tiny_artifacts: Path, helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    values = chart_values(
        "w2v",
        {
            "gpu": PoolArtifact(artifact=tiny_artifacts / "fp16", device="cuda"),
            "cpu": PoolArtifact(artifact=tiny_artifacts / "int8", device="cpu"),
        },
        uri_prefix="/artifacts/w2v",
    )
    return write_values(values, tmp_path_factory.mktemp("values") / "values.yaml", helm)


@pytest.fixture
def unreachable(tmp_path: Path) -> Path:
    """A kubeconfig whose server is 127.0.0.1:1: nothing listens there."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "gone",
            }
        )
    )
    return path


@pytest.fixture
def kube() -> Iterator[KubeStandIn]:
    with running_standin() as standin:
        yield standin


def test_find_prefers_the_bundled_binary() -> None:
    assert Helm.find().binary == REPO_ROOT / BUNDLED_HELM


def test_a_missing_binary_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(HelmMissing, match=r"run `make install`"):
        Helm.find(root=tmp_path, search_path=str(tmp_path))
    with pytest.raises(HelmMissing, match=r"not an executable helm binary"):
        Helm(tmp_path / "helm")


def test_find_falls_back_to_helm_on_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "helm").symlink_to(REPO_ROOT / BUNDLED_HELM)
    found = Helm.find(root=tmp_path, search_path=str(bin_dir))
    assert found.binary == bin_dir / "helm"
    assert found.binary.stat().st_mode & stat.S_IXUSR


@pytest.mark.slow
def test_template_renders_generated_values(helm: Helm, values_file: Path) -> None:
    docs = [
        d for d in yaml.safe_load_all(helm.template("demo", DEFAULT_CHART, [values_file], "ml"))
    ]
    kinds = {d["kind"] for d in docs if d}
    assert "RayService" in kinds
    service = next(d for d in docs if d and d["kind"] == "RayService")
    assert service["metadata"]["name"] == "demo-sluiceway"


@pytest.mark.parametrize(
    ("release", "overrides"),
    [
        ("demo", {}),
        ("sluiceway-prod", {}),  # the chart's name already in the release: not repeated
        ("demo", {"nameOverride": "asr"}),
        ("asr-eu", {"nameOverride": "asr"}),
        ("demo", {"fullnameOverride": "speech-serving"}),
        ("r" * 53, {"nameOverride": "abcdefgh-z"}),  # cut at 63 characters, then its "-"
    ],
)
def test_the_cli_finds_the_rayservice_the_chart_names(
    helm: Helm, values_file: Path, tmp_path: Path, release: str, overrides: dict[str, str]
) -> None:
    """`deploy rollout` / `status` wait on the RayService by name: the same name as the
    chart renders, whatever name overrides the release was installed with."""
    from deploy.cli import rayservice_name

    extra = tmp_path / "overrides.yaml"
    extra.write_text(yaml.safe_dump(overrides))
    rendered = helm.template(release, DEFAULT_CHART, [values_file, extra], "ml")
    service = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "RayService")
    assert rayservice_name(release, overrides) == service["metadata"]["name"]


def test_template_failure_carries_helms_stderr(helm: Helm) -> None:
    with pytest.raises(HelmFailed, match=r"serving.models is empty") as caught:
        helm.template("demo", DEFAULT_CHART, [], "ml")  # the chart's defaults have no model
    assert "serving.models is empty" in caught.value.stderr


def test_this_helm_dry_runs_client_side(helm: Helm) -> None:
    assert helm.dry_run_flag("upgrade") == "--dry-run=client"
    assert helm.dry_run_flag("rollback") == "--dry-run=client"


@pytest.mark.slow
def test_release_commands_without_a_reachable_cluster_say_so(
    unreachable: Path, values_file: Path
) -> None:
    helm = Helm.find(kubeconfig=unreachable)
    with pytest.raises(NoClusterContext, match=r"127\.0\.0\.1:1.*set KUBECONFIG or pass"):
        helm.upgrade("demo", DEFAULT_CHART, [values_file], "ml", dry_run=True, timeout_s=30)
    with pytest.raises(NoClusterContext):
        helm.history("demo", "ml")
    with pytest.raises(NoClusterContext):
        helm.get_values("demo", "ml")
    with pytest.raises(NoClusterContext):
        helm.rollback("demo", 1, "ml", dry_run=True)


def test_a_kubeconfig_or_context_that_does_not_exist_is_no_cluster_context(
    tmp_path: Path, unreachable: Path
) -> None:
    missing = Helm.find(kubeconfig=tmp_path / "nope", context="prod")
    with pytest.raises(NoClusterContext, match=r"context 'prod'.*--context"):
        missing.history("demo", "ml")
    wrong_context = Helm.find(kubeconfig=unreachable, context="prod")
    with pytest.raises(NoClusterContext, match=r'context "prod" does not exist'):
        wrong_context.history("demo", "ml")


def test_an_unknown_release_is_release_not_found(kube: KubeStandIn, tmp_path: Path) -> None:
    helm = Helm.find(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"))
    with pytest.raises(ReleaseNotFound, match=r"'demo' does not exist in namespace 'ml'"):
        helm.history("demo", "ml")
    with pytest.raises(ReleaseNotFound):
        helm.get_values("demo", "ml")
    with pytest.raises(ReleaseNotFound):
        helm.rollback("demo", 0, "ml", dry_run=True)
    assert "/api/v1/namespaces/ml/secrets?labelSelector=name%3Ddemo%2Cowner%3Dhelm" in (
        kube.requests
    )


@pytest.mark.slow
def test_a_dry_run_upgrade_installs_nothing_and_prints_the_manifests(
    kube: KubeStandIn, tmp_path: Path, values_file: Path
) -> None:
    helm = Helm.find(kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"))
    out = helm.upgrade("demo", DEFAULT_CHART, [values_file], "ml", dry_run=True, timeout_s=30)
    assert "Dry run complete" in out
    assert "kind: RayService" in out
    assert all(
        r.split("?")[0] in {"/version", "/api/v1/namespaces/ml/secrets"} for r in kube.requests
    )
