"""Fetching artifacts into a local content-addressed cache.

A serving config names each artifact by ``uri`` and its digest (``sha256``: of its
``manifest.json``, which records every file's sha256, so it pins the whole artifact). A path
or ``file://`` URI is used where it lies (a volume provides it). An ``http://`` or ``https://``
URL names the artifact *directory*; it is fetched into ``<cache>/<sha256>``:

1. ``manifest.json``, refused unless its sha256 is the expected one (nothing else is
   downloaded from a URL that serves another artifact, or an edited manifest);
2. every file the manifest lists, streamed to disk and hashed on the way, refused unless it
   matches the manifest's sha256 and size;
3. the whole directory checked by `verify_artifact` (hashes, gates), then renamed into place.

Downloads go to a hidden temporary sibling that is removed on failure, so ``<cache>/<sha256>``
is either absent or complete and verified. An entry already there is verified again and
reused without network. Fetched files are bytes on disk: nothing here unpickles or runs them.

The Helm chart's init container fills a pool's cache before Ray starts::

    python -m serving.fetch --config /etc/sluiceway/serving.yaml --pool cpu --cache-dir DIR

and replicas find the same entries through ``$SLUICEWAY_ARTIFACT_CACHE``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from optimize.errors import ArtifactError, ArtifactHashMismatch, OptimizeError
from optimize.manifest import (
    MANIFEST_FILE,
    FileDigest,
    Manifest,
    check_digest,
    read_pinned,
    verify_artifact,
)
from serving.config import ArtifactRef, load_config
from serving.errors import ArtifactFetchError, ConfigError, ServingError

logger = logging.getLogger(__name__)

CACHE_ENV = "SLUICEWAY_ARTIFACT_CACHE"
REMOTE_SCHEMES = frozenset({"http", "https"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 16 * 2**20
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def default_cache_dir() -> Path:
    """``$SLUICEWAY_ARTIFACT_CACHE``, else ``~/.cache/sluiceway/artifacts``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "sluiceway" / "artifacts"


def uri_scheme(uri: str) -> str:
    """The URI's scheme in lower case (``https``, ``file``); ``""`` for a plain path."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else ""


def resolve_artifact(ref: ArtifactRef, cache_dir: Path | None = None) -> Path:
    """The local directory of an artifact: where it lies, or where it was fetched to."""
    scheme = uri_scheme(ref.uri)
    if scheme in ("", "file"):
        return ref.local_path()
    if scheme in REMOTE_SCHEMES:
        cache = default_cache_dir() if cache_dir is None else cache_dir
        return fetch_artifact(ref.uri, ref.sha256, cache)
    raise ConfigError(
        f"artifact uri {_redact(ref.uri)!r}: {scheme}:// is not supported; supported are a path, "
        "file:// and http(s)://. Give a presigned or otherwise HTTP(S)-reachable URL of the "
        "artifact directory, or mount the artifacts from a volume (PVC) and give their path"
    )


def artifact_manifest(ref: ArtifactRef) -> Manifest:
    """An artifact's manifest, checked against the config's sha256, without its model file.

    The ingress needs only the manifest (labels, sample rate, input names); for an http(s)
    URI it downloads ``manifest.json`` alone, so the head pod never holds a model.
    """
    try:
        if uri_scheme(ref.uri) in REMOTE_SCHEMES:
            with tempfile.TemporaryDirectory(prefix="sluiceway-manifest-") as tmp:
                with _client() as client:
                    _get(client, _file_url(ref.uri, MANIFEST_FILE), Path(tmp) / MANIFEST_FILE, None)
                return _pinned_manifest(Path(tmp), ref.sha256, _redact(ref.uri))
        # the replicas verify the same bytes against the same digest: one manifest for all
        return _pinned_manifest(resolve_artifact(ref), ref.sha256, _redact(ref.uri))
    except ArtifactError as exc:
        raise ArtifactFetchError(f"{_redact(ref.uri)}: no usable manifest: {exc}") from exc


def _pinned_manifest(directory: Path, sha256: str, shown: str) -> Manifest:
    """``directory``'s manifest, refused unless its digest is ``sha256``."""
    manifest, digest = read_pinned(directory)
    check_digest(shown, manifest, digest, sha256)
    return manifest


def fetch_artifact(
    uri: str, sha256: str, cache_dir: Path, *, client: httpx.Client | None = None
) -> Path:
    """Download the artifact directory at an http(s) ``uri`` into ``cache_dir/<sha256>``.

    Returns the cached directory, verified. An entry already cached and verifying is returned
    without network. Raises `ArtifactFetchError` naming the URL or file and what to do.
    """
    if uri_scheme(uri) not in REMOTE_SCHEMES:
        raise ConfigError(f"fetch_artifact needs an http:// or https:// URL, got {uri!r}")
    if not _SHA256.fullmatch(sha256):
        raise ConfigError(f"expected sha256 must be 64 lowercase hex digits, got {sha256!r}")
    final = cache_dir / sha256
    if final.exists() and _cached(final, sha256):
        logger.info("%s: cached in %s", _redact(uri), final)
        return final
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:16]}.", suffix=".part", dir=cache_dir))
    except OSError as exc:
        raise ArtifactFetchError(
            f"cannot write the artifact cache {cache_dir}: {exc.strerror}; point --cache-dir "
            f"or ${CACHE_ENV} at a writable directory"
        ) from exc
    try:
        logger.info("%s: fetching into %s", _redact(uri), final)
        if client is None:
            with _client() as own:
                _download(own, uri, sha256, staging)
        else:
            _download(client, uri, sha256, staging)
        try:
            verify_artifact(staging, expected_sha256=sha256)
        except ArtifactError as exc:
            raise ArtifactFetchError(f"{_redact(uri)}: the artifact is refused: {exc}") from exc
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from a replica running as another user
        _publish(staging, final, uri, sha256)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once published
    return final


def _client() -> httpx.Client:
    return httpx.Client(
        timeout=_TIMEOUT, follow_redirects=True, transport=httpx.HTTPTransport(retries=2)
    )


def _cached(final: Path, sha256: str) -> bool:
    """True if the cache entry verifies; a broken one is moved aside and removed."""
    try:
        verify_artifact(final, expected_sha256=sha256)
    except ArtifactError as exc:
        logger.warning("%s: cached artifact does not verify (%s); fetching it again", final, exc)
        try:
            trash = Path(tempfile.mkdtemp(prefix=".stale.", dir=final.parent))
            final.rename(trash / final.name)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError as move:
            logger.warning("%s: could not remove it (%s)", final, move.strerror)
        return False
    return True


def _publish(staging: Path, final: Path, uri: str, sha256: str) -> None:
    """Rename the verified download into place (atomic on one filesystem)."""
    try:
        staging.rename(final)
    except OSError as exc:
        # Another process (a second replica on this node) may have published it first.
        if final.is_dir() and _cached(final, sha256):
            return
        raise ArtifactFetchError(
            f"{_redact(uri)}: cannot move the download into {final}: {exc.strerror}; "
            "remove that path or choose another cache directory"
        ) from exc


def _download(client: httpx.Client, uri: str, sha256: str, staging: Path) -> None:
    _get(client, _file_url(uri, MANIFEST_FILE), staging / MANIFEST_FILE, None)
    manifest_url = _redact(_file_url(uri, MANIFEST_FILE))
    try:
        manifest = _pinned_manifest(staging, sha256, _redact(uri))
    except ArtifactHashMismatch as exc:
        raise ArtifactFetchError(f"{exc} (nothing else was downloaded)") from exc
    except ArtifactError as exc:
        raise ArtifactFetchError(f"{manifest_url}: not a usable artifact manifest: {exc}") from exc
    for entry in _checked_files(manifest, manifest_url):
        destination = staging / entry.path
        destination.parent.mkdir(parents=True, exist_ok=True)
        _get(client, _file_url(uri, entry.path), destination, entry)


def _checked_files(manifest: Manifest, manifest_url: str) -> list[FileDigest]:
    """The manifest's files, refusing any name that could land outside the artifact."""
    seen: set[str] = set()
    for entry in manifest.files:
        parts = entry.path.split("/")
        if (
            entry.path in seen
            or entry.path == MANIFEST_FILE
            or "\\" in entry.path
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise ArtifactFetchError(
                f"{manifest_url}: refusing file name {entry.path!r}: manifest files must be "
                "distinct relative paths inside the artifact (no '/' prefix, '..', or "
                f"{MANIFEST_FILE}); rebuild the artifact"
            )
        seen.add(entry.path)
    return list(manifest.files)


def _get(client: httpx.Client, url: str, destination: Path, expected: FileDigest | None) -> None:
    """Stream ``url`` into ``destination``, checking size and sha256 against ``expected``."""
    shown = _redact(url)
    limit = _MAX_MANIFEST_BYTES if expected is None else expected.size_bytes
    digest = hashlib.sha256()
    size = 0
    try:
        with client.stream("GET", url) as response:
            if response.status_code != httpx.codes.OK:
                raise ArtifactFetchError(_status_message(shown, response))
            with destination.open("wb") as handle:
                for chunk in response.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise ArtifactFetchError(
                            f"{shown}: longer than the {limit} bytes "
                            f"{'the manifest records' if expected else 'a manifest may have'}; "
                            "the file on the server is not the one the artifact was built with: "
                            "publish the artifact again"
                        )
                    digest.update(chunk)
                    handle.write(chunk)
    except httpx.TimeoutException as exc:
        raise ArtifactFetchError(
            f"{shown}: timed out ({type(exc).__name__}); check the server, then retry"
        ) from exc
    except (httpx.ConnectError, httpx.ProxyError) as exc:
        host = urlsplit(url).hostname
        raise ArtifactFetchError(
            f"{shown}: cannot reach {host} ({exc}); check the URL, DNS and that this pod may "
            "connect to it (network policy, proxy)"
        ) from exc
    except httpx.HTTPError as exc:
        raise ArtifactFetchError(
            f"{shown}: download failed ({type(exc).__name__}: {exc}); retry"
        ) from exc
    except OSError as exc:
        raise ArtifactFetchError(
            f"{shown}: cannot write {destination}: {exc.strerror}; free space in the cache "
            "or point --cache-dir elsewhere"
        ) from exc
    if expected is not None:
        actual = digest.hexdigest()
        if actual != expected.sha256 or size != expected.size_bytes:
            raise ArtifactFetchError(
                f"{shown}: file {expected.path!r} has sha256 {actual} ({size} bytes), the "
                f"manifest records {expected.sha256} ({expected.size_bytes} bytes): the copy on "
                "the server was changed or corrupted; publish the artifact again"
            )


def _status_message(shown: str, response: httpx.Response) -> str:
    status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if response.status_code == httpx.codes.NOT_FOUND:
        hint = (
            "the uri must be the URL of the artifact directory, which holds "
            f"{MANIFEST_FILE} and the files it lists: check it and that the artifact is published"
        )
    elif response.status_code in (httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN):
        hint = "the server wants credentials: give a presigned or public URL"
    elif response.is_redirect:
        hint = f"redirected to {response.headers.get('location')!r}: give the final URL"
    elif response.is_server_error:
        hint = "the server failed: retry later"
    else:
        hint = "check the URL"
    return f"{shown}: {status}; {hint}"


def _file_url(uri: str, name: str) -> str:
    """``name`` inside the directory URL ``uri`` (its query, e.g. a signature, kept)."""
    parts = urlsplit(uri)
    directory = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit(parts._replace(path=directory + quote(name), fragment=""))


def _redact(url: str) -> str:
    """``url`` without credentials or query (presigned URLs carry secrets there)."""
    parts = urlsplit(url)
    return urlunsplit(
        parts._replace(
            netloc=parts.netloc.rpartition("@")[2],
            query="<redacted>" if parts.query else "",
            fragment="",
        )
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.fetch",
        description="Fetch the http(s) artifacts one pool serves into the local cache, "
        "checked against the config's sha256 (the Helm chart's init container runs this).",
        epilog="example: python -m serving.fetch --config serving.yaml --pool cpu",
    )
    parser.add_argument("--config", type=Path, required=True, help="serving config YAML")
    parser.add_argument("--pool", required=True, help="fetch the artifacts of this pool")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache directory (default: ${CACHE_ENV}, else ~/.cache/sluiceway/artifacts)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch one pool's artifacts; one line per artifact on stdout, ``Error: ...`` on failure."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines print query secrets
    cache_dir: Path = args.cache_dir or default_cache_dir()
    try:
        config = load_config(args.config)
        if args.pool not in config.pools:
            raise ConfigError(
                f"{args.config}: no pool {args.pool!r}; defined pools: {sorted(config.pools)}"
            )
        with _client() as client:
            for model_name, model in config.models.items():
                for variant_name, variant in model.variants.items():
                    ref = variant.artifacts.get(args.pool)
                    if ref is None:
                        continue
                    label = f"{model_name}/{variant_name} on {args.pool}"
                    if uri_scheme(ref.uri) in REMOTE_SCHEMES:
                        path = fetch_artifact(ref.uri, ref.sha256, cache_dir, client=client)
                        print(f"{label}: {_redact(ref.uri)} -> {path}", flush=True)
                    else:
                        path = resolve_artifact(ref)  # refuses unsupported schemes
                        print(f"{label}: {path} is local (a volume provides it), not fetched")
    except (ServingError, OptimizeError) as exc:
        if os.environ.get("SLUICEWAY_DEBUG") == "1":
            raise
        print(f"Error: {exc}", file=sys.stderr)
        print("(set SLUICEWAY_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
