"""Artifacts behind http(s) URLs reach the replica checked, through a real HTTP server."""

from __future__ import annotations

import functools
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from optimize.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    artifact_digest,
    model_digest,
    read_manifest,
    verify_artifact,
)
from serving.config import ArtifactRef
from serving.errors import ArtifactFetchError, ConfigError
from serving.fetch import CACHE_ENV, artifact_manifest, fetch_artifact, resolve_artifact

REPO = Path(__file__).resolve().parents[2]


class _Server(ThreadingHTTPServer):
    requests: list[str]


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        server.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Site:
    """A directory of artifacts published over HTTP on localhost."""

    root: Path
    server: _Server

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    @property
    def requests(self) -> list[str]:
        return self.server.requests

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site(tiny_artifacts: Path, tmp_path: Path) -> Iterator[Site]:
    """A copy of the tiny artifacts (tests may corrupt it) served by http.server."""
    root = tmp_path / "site"
    shutil.copytree(tiny_artifacts, root)
    server = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    published = Site(root, server)
    yield published
    published.stop()
    thread.join()


def sha256_of(directory: Path) -> str:
    return artifact_digest(directory)


def cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.slow
@pytest.mark.integration
def test_an_http_artifact_lands_verified_in_the_cache_and_is_reused_offline(
    site: Site, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    expected = sha256_of(site.root / "int8")
    path = fetch_artifact(site.url("int8"), expected, cache)
    assert path == cache / expected
    assert cache_entries(cache) == [expected]  # no temporary directory left behind
    verify_artifact(path, expected_sha256=expected)
    assert (path / MODEL_FILE).read_bytes() == (site.root / "int8" / MODEL_FILE).read_bytes()
    assert site.requests == ["/int8/manifest.json", "/int8/model.onnx"]

    site.stop()
    assert fetch_artifact(site.url("int8"), expected, cache) == path
    assert len(site.requests) == 2


@pytest.mark.slow
@pytest.mark.integration
def test_resolve_artifact_fetches_urls_into_the_env_cache_and_keeps_local_paths(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    expected = sha256_of(site.root / "fp32")
    remote = ArtifactRef(uri=site.url("fp32") + "/", sha256=expected)
    assert resolve_artifact(remote) == tmp_path / "env-cache" / expected
    local = ArtifactRef(uri=f"file://{site.root / 'fp32'}", sha256=expected)
    assert resolve_artifact(local) == site.root / "fp32"
    assert len(site.requests) == 2  # the manifest and the model, once


@pytest.mark.slow
@pytest.mark.integration
def test_the_ingress_reads_an_http_artifacts_manifest_alone_checked(site: Site) -> None:
    expected = sha256_of(site.root / "int8")
    manifest = artifact_manifest(ArtifactRef(uri=site.url("int8"), sha256=expected))
    assert manifest == read_manifest(site.root / "int8")
    assert site.requests == ["/int8/manifest.json"]  # never the model
    local = artifact_manifest(ArtifactRef(uri=str(site.root / "int8"), sha256=expected))
    assert local == manifest
    wrong = sha256_of(site.root / "fp32")
    for uri in (site.url("int8"), str(site.root / "int8")):
        with pytest.raises(ArtifactFetchError, match=f"expected {wrong}"):
            artifact_manifest(ArtifactRef(uri=uri, sha256=wrong))


@pytest.mark.slow
@pytest.mark.integration
def test_a_url_serving_another_artifact_is_refused_after_its_manifest_alone(
    site: Site, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    expected, served = sha256_of(site.root / "fp32"), sha256_of(site.root / "int8")
    with pytest.raises(ArtifactFetchError) as caught:
        fetch_artifact(site.url("int8"), expected, cache)
    message = str(caught.value)
    assert site.url("int8") in message
    assert f"is {served}, expected {expected}" in message
    assert site.requests == ["/int8/manifest.json"]
    assert cache_entries(cache) == []


@pytest.mark.slow
@pytest.mark.integration
def test_a_file_corrupted_on_the_server_is_named_and_the_cache_is_untouched(
    site: Site, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    good = fetch_artifact(site.url("fp32"), sha256_of(site.root / "fp32"), cache)
    model = site.root / "int8" / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    expected = sha256_of(site.root / "int8")  # the manifest still records the good digest

    with pytest.raises(ArtifactFetchError, match=r"model\.onnx.*changed or corrupted"):
        fetch_artifact(site.url("int8"), expected, cache)
    assert cache_entries(cache) == [good.name]
    verify_artifact(good, expected_sha256=good.name)


@pytest.mark.slow
@pytest.mark.integration
def test_a_manifest_naming_a_file_outside_the_artifact_is_refused(
    site: Site, tmp_path: Path
) -> None:
    manifest_path = site.root / "int8" / MANIFEST_FILE
    raw = json.loads(manifest_path.read_text())
    raw["files"].append({"path": "../fp32/model.onnx", "sha256": "0" * 64, "size_bytes": 1})
    manifest_path.write_text(json.dumps(raw))
    cache = tmp_path / "cache"

    with pytest.raises(ArtifactFetchError, match=r"refusing file name '\.\./fp32/model\.onnx'"):
        fetch_artifact(site.url("int8"), sha256_of(site.root / "int8"), cache)
    assert not any("fp32" in r for r in site.requests)
    assert cache_entries(cache) == []


@pytest.mark.slow
@pytest.mark.integration
def test_a_missing_artifact_names_the_url_and_the_status(site: Site, tmp_path: Path) -> None:
    with pytest.raises(ArtifactFetchError) as caught:
        fetch_artifact(site.url("no-such-variant"), "a" * 64, tmp_path / "cache")
    message = str(caught.value)
    assert site.url("no-such-variant/manifest.json") in message
    assert "HTTP 404" in message
    assert cache_entries(tmp_path / "cache") == []


def test_an_unreachable_host_is_named(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ArtifactFetchError, match=r"cannot reach 127\.0\.0\.1"):
        fetch_artifact(f"http://127.0.0.1:{port}/int8", "a" * 64, tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


@pytest.mark.parametrize("uri", ["s3://models/tiny/int8", "gs://models/tiny/int8"])
def test_object_store_uris_are_refused_with_what_to_use_instead(uri: str, tmp_path: Path) -> None:
    ref = ArtifactRef(uri=uri, sha256="a" * 64)
    with pytest.raises(ConfigError, match=r"not supported.*file://.*http\(s\)://.*presigned.*PVC"):
        resolve_artifact(ref, tmp_path)


def _write_config(path: Path, pool_artifacts: dict[str, dict[str, str]]) -> Path:
    config = {
        "models": {
            "tiny": {
                "variants": {
                    name: {"weight": 100 if i == 0 else 0, "artifacts": {"cpu": ref}}
                    for i, (name, ref) in enumerate(pool_artifacts.items())
                },
                "routing": {"pools": ["cpu"]},
            }
        },
        "pools": {"cpu": {}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _fetch_cli(config: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.fetch",
            "--config",
            str(config),
            "--pool",
            "cpu",
            "--cache-dir",
            str(cache),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.integration
def test_the_init_container_cli_fetches_a_pools_http_artifacts(site: Site, tmp_path: Path) -> None:
    expected = sha256_of(site.root / "int8")
    local = site.root / "fp32"
    config = _write_config(
        tmp_path / "serving.yaml",
        {
            "stable": {"uri": site.url("int8"), "sha256": expected},
            "local": {"uri": str(local), "sha256": sha256_of(local)},
        },
    )
    cache = tmp_path / "cache"
    result = _fetch_cli(config, cache)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        f"tiny/local on cpu: {local} is local (a volume provides it), not fetched",
        f"tiny/stable on cpu: {site.url('int8')} -> {cache / expected}",
    ]
    verify_artifact(cache / expected, expected_sha256=expected)
    assert cache_entries(cache) == [expected]


@pytest.mark.slow
@pytest.mark.integration
def test_the_init_container_cli_fails_with_one_error_line_on_a_bad_digest(
    site: Site, tmp_path: Path
) -> None:
    wrong = sha256_of(site.root / "fp32")
    config = _write_config(
        tmp_path / "serving.yaml", {"stable": {"uri": site.url("int8"), "sha256": wrong}}
    )
    result = _fetch_cli(config, tmp_path / "cache")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert site.url("int8") in errors[0]
    assert f"expected {wrong}" in errors[0]
    assert cache_entries(tmp_path / "cache") == []


@pytest.mark.slow
@pytest.mark.integration
def test_an_edited_manifest_is_refused_though_the_model_file_is_the_same(
    site: Site, tmp_path: Path
) -> None:
    """Swapping two labels turns a detector's answers around: the digest pins the manifest."""
    expected = sha256_of(site.root / "int8")
    path = site.root / "int8" / MANIFEST_FILE
    original = path.read_text()
    raw = json.loads(original)
    raw["input"]["labels"] = raw["input"]["labels"][::-1]
    path.write_text(json.dumps(raw, indent=2))
    try:
        with pytest.raises(ArtifactFetchError, match=f"expected {expected}"):
            fetch_artifact(site.url("int8"), expected, tmp_path / "cache")
        assert site.requests == ["/int8/manifest.json"]
        for uri in (site.url("int8"), str(site.root / "int8")):  # the ingress's read too
            with pytest.raises(ArtifactFetchError, match="its manifest was changed"):
                artifact_manifest(ArtifactRef(uri=uri, sha256=expected))
    finally:
        path.write_text(original)
    # a config that still pins model.onnx alone (older sluiceway) is told what to pin now
    old = model_digest(read_manifest(site.root / "int8"))
    with pytest.raises(ArtifactFetchError, match=f"pin the whole artifact with {expected}"):
        artifact_manifest(ArtifactRef(uri=str(site.root / "int8"), sha256=old))
