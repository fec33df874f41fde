"""The real helm binary, run as a subprocess; what it says becomes a DeployError.

The binary is ``.tools/helm/helm`` under the repository root (``make install`` puts it
there), else ``helm`` on PATH. Release commands talk to the cluster of the kubeconfig and
context given to :class:`Helm` (helm's own defaults when none are); ``template`` never
does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy.errors import DeployError, HelmFailed, HelmMissing, NoClusterContext, ReleaseNotFound

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHART = REPO_ROOT / "charts" / "sluiceway"
BUNDLED_HELM = Path(".tools") / "helm" / "helm"
# What helm (v3 and v4) writes to stderr when a release is missing, and when it has no
# usable cluster: no kubeconfig, a context that does not exist, or an unreachable server.
_NOT_FOUND = "release: not found"
_UNREACHABLE = "kubernetes cluster unreachable"


class Helm:
    """One helm binary, and the kubeconfig and context its release commands use."""

    def __init__(
        self,
        binary: Path,
        *,
        kubeconfig: Path | None = None,
        context: str | None = None,
        command_timeout_s: float = 120.0,
    ) -> None:
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise HelmMissing(
                f"{binary} is not an executable helm binary: run `make install` (it installs "
                "helm into .tools/helm/) or point at another helm"
            )
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.context = context
        self.command_timeout_s = command_timeout_s
        self._dry_run_flags: dict[str, str] = {}

    @classmethod
    def find(
        cls,
        *,
        root: Path = REPO_ROOT,
        search_path: str | None = None,
        kubeconfig: Path | None = None,
        context: str | None = None,
    ) -> Helm:
        """``root/.tools/helm/helm``, else ``helm`` on ``search_path`` (default: PATH)."""
        bundled = root / BUNDLED_HELM
        if bundled.is_file():
            return cls(bundled, kubeconfig=kubeconfig, context=context)
        found = shutil.which("helm", path=search_path)
        if found is None:
            raise HelmMissing(
                f"helm is neither at {bundled} nor on PATH: run `make install` (it installs "
                "helm into .tools/helm/), or install helm v3.13+ and put it on PATH"
            )
        return cls(Path(found), kubeconfig=kubeconfig, context=context)

    def template(
        self, release: str, chart: Path, values_files: Sequence[Path], namespace: str
    ) -> str:
        """The chart rendered with these values (``helm template``); no cluster needed."""
        args = ["template", release, str(chart), "--namespace", namespace]
        return self._run([*args, *_values_args(values_files)], release=release, namespace=namespace)

    def upgrade(
        self,
        release: str,
        chart: Path,
        values_files: Sequence[Path],
        namespace: str,
        *,
        dry_run: bool,
        timeout_s: float,
    ) -> str:
        """``helm upgrade --install``; its output (the manifests too, on a dry run).

        It does not wait for the RayService to become Ready (helm cannot tell);
        ``Cluster.wait_ready`` does. ``timeout_s`` bounds helm's own Kubernetes operations.
        """
        args = ["upgrade", "--install", release, str(chart), "--namespace", namespace]
        args += [*_values_args(values_files), "--timeout", f"{max(1, round(timeout_s))}s"]
        if dry_run:
            args.append(self.dry_run_flag("upgrade"))
        return self._run(
            args,
            release=release,
            namespace=namespace,
            cluster=True,
            timeout_s=timeout_s + self.command_timeout_s,
        )

    def rollback(self, release: str, revision: int, namespace: str, *, dry_run: bool) -> str:
        """``helm rollback`` to ``revision`` (0: the previous one)."""
        args = ["rollback", release, str(revision), "--namespace", namespace]
        if dry_run:
            args.append(self.dry_run_flag("rollback"))
        return self._run(args, release=release, namespace=namespace, cluster=True)

    def history(self, release: str, namespace: str) -> list[dict[str, Any]]:
        """The release's revisions as helm reports them (``revision``, ``status``, ...)."""
        args = ["history", release, "--namespace", namespace, "--output", "json"]
        parsed = self._json(args, release=release, namespace=namespace)
        if not isinstance(parsed, list):
            raise HelmFailed(f"`helm history {release}` did not print a JSON list: {parsed!r}")
        return parsed

    def get_values(self, release: str, namespace: str) -> dict[str, Any]:
        """The values the release was installed or upgraded with (user-supplied only)."""
        args = ["get", "values", release, "--namespace", namespace, "--output", "json"]
        parsed = self._json(args, release=release, namespace=namespace)
        if parsed is None:  # a release installed with the chart's defaults only
            return {}
        if not isinstance(parsed, dict):
            raise HelmFailed(f"`helm get values {release}` did not print a JSON object")
        return parsed

    def dry_run_flag(self, subcommand: str) -> str:
        """``--dry-run=client`` where this helm's ``<subcommand> --help`` offers it (helm
        v3.13+ and v4), else the older boolean ``--dry-run``."""
        if subcommand not in self._dry_run_flags:
            help_text = self._run([subcommand, "--help"], release="", namespace="")
            client = '"client"' in help_text or "--dry-run string" in help_text
            self._dry_run_flags[subcommand] = "--dry-run=client" if client else "--dry-run"
        return self._dry_run_flags[subcommand]

    def _json(self, args: list[str], *, release: str, namespace: str) -> Any:
        out = self._run(args, release=release, namespace=namespace, cluster=True)
        try:
            return json.loads(out)
        except json.JSONDecodeError as exc:
            raise HelmFailed(f"`helm {args[0]}` printed no JSON ({exc}): {out[:200]!r}") from exc

    def _run(
        self,
        args: list[str],
        *,
        release: str,
        namespace: str,
        cluster: bool = False,
        timeout_s: float | None = None,
    ) -> str:
        if cluster:
            if self.kubeconfig is not None:
                args = [*args, "--kubeconfig", str(self.kubeconfig)]
            if self.context is not None:
                args = [*args, "--kube-context", self.context]
        timeout = timeout_s if timeout_s is not None else self.command_timeout_s
        logger.debug("running %s %s", self.binary, " ".join(args))
        try:
            done = subprocess.run(
                [str(self.binary), *args],
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
            )
        except FileNotFoundError as exc:
            raise HelmMissing(
                f"{self.binary} disappeared: run `make install` to reinstall helm"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise HelmFailed(
                f"`helm {args[0]}` did not finish in {timeout:g} s; check the cluster's "
                "health, or give it a longer timeout"
            ) from exc
        if done.returncode != 0:
            raise self._failure(args[0], done.returncode, done.stderr, release, namespace)
        return done.stdout

    def _failure(
        self, subcommand: str, returncode: int, stderr: str, release: str, namespace: str
    ) -> DeployError:
        said = stderr.strip()
        lowered = said.lower()
        if _UNREACHABLE in lowered:
            where = f"kubeconfig {self.kubeconfig}" if self.kubeconfig else "the default kubeconfig"
            if self.context:
                where += f", context {self.context!r}"
            return NoClusterContext(
                f"helm cannot reach a Kubernetes cluster with {where} ({said}): set KUBECONFIG "
                "or pass --kubeconfig, and --context, for a cluster you can reach"
            )
        if _NOT_FOUND in lowered:
            return ReleaseNotFound(
                f"helm release {release!r} does not exist in namespace {namespace!r}: check the "
                f"release name and --namespace (`helm list -n {namespace}` lists releases)"
            )
        return HelmFailed(f"`helm {subcommand}` failed (exit {returncode}): {said}", stderr=said)


def _values_args(values_files: Sequence[Path]) -> list[str]:
    return [arg for path in values_files for arg in ("--values", str(path))]
