"""A stand-in for the Kubernetes API server, answering only the few calls deploy makes.

No Kubernetes API server can run on these machines (no cluster, no etcd, no container
runtime), so tests reach this ``http.server`` thread on 127.0.0.1 through a kubeconfig
that points at it. It answers, with JSON shaped like the real server's:

- ``GET /version`` (helm asks it to see that the cluster is reachable);
- ``GET /apis/ray.io/v1/namespaces/{ns}/rayservices/{name}``: the objects a test stored,
  one per call, the last one repeated (so a RayService can turn Ready after N calls);
- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=k=v,...``: stored pods matching the
  equality selector;
- ``GET /api/v1/namespaces/{ns}/secrets?labelSelector=...``: always empty (helm keeps
  its releases in Secrets: here there are none);

and a 404 ``Status`` object for anything else, as the real server does for unknown names.
Nothing else of Kubernetes (watches, writes, auth, protobuf) is imitated.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

_RAYSERVICE = re.compile(r"^/apis/ray\.io/v1/namespaces/([^/]+)/rayservices/([^/]+)$")
_LIST = re.compile(r"^/api/v1/namespaces/([^/]+)/(pods|secrets)$")
VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2025-04-23T00:00:00Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class KubeStandIn:
    """The stand-in's state: RayServices (a sequence per name), pods, requests seen."""

    def __init__(self) -> None:
        self.rayservices: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.pods: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self.url = ""

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        url = urlsplit(path)
        with self._lock:
            self.requests.append(path)
            if url.path == "/version":
                return 200, VERSION
            if match := _RAYSERVICE.match(url.path):
                namespace, name = match.groups()
                states = self.rayservices.get((namespace, name))
                if not states:
                    return 404, not_found("rayservices", "ray.io", name)
                return 200, states.pop(0) if len(states) > 1 else states[0]
            if match := _LIST.match(url.path):
                namespace, resource = match.groups()
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
                items = self.pods.get(namespace, []) if resource == "pods" else []
                chosen = [
                    i for i in items if wanted.items() <= i["metadata"].get("labels", {}).items()
                ]
                kind = "PodList" if resource == "pods" else "SecretList"
                return 200, {
                    "kind": kind,
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "1"},
                    "items": chosen,
                }
            return 404, not_found("", "", url.path)

    def write_kubeconfig(self, path: Path, namespace: str = "ml") -> Path:
        """A kubeconfig whose only context, ``standin``, points at this server."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "not-checked"}}],
                    "contexts": [
                        {
                            "name": "standin",
                            "context": {
                                "cluster": "standin",
                                "user": "tester",
                                "namespace": namespace,
                            },
                        }
                    ],
                    "current-context": "standin",
                }
            )
        )
        return path


def not_found(plural: str, group: str, name: str) -> dict[str, Any]:
    """The Status object the API server answers a GET of a missing object with."""
    what = f"{plural}.{group}" if group else (plural or "the server")
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{what} "{name}" not found',
        "reason": "NotFound",
        "details": {"name": name, "group": group, "kind": plural},
        "code": 404,
    }


@contextmanager
def running_standin() -> Iterator[KubeStandIn]:
    """Start the stand-in on a free port of 127.0.0.1; stop it on exit."""
    state = KubeStandIn()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, body = state.answer(self.path)
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
