"""Boot a rendered RayService on this machine the way KubeRay runs it.

No Kubernetes API server can run here, so the kubelet's and the operators' parts are played
by this module, and everything they start is real:

- each pod is a Linux network namespace with its own IP on a bridge (so every pod has the
  ports the chart gives it, as on a cluster), its volumes bind-mounted where the template
  mounts them (emptyDirs fresh per pod, ConfigMaps from the render, a PersistentVolumeClaim
  from a host directory standing in for it), its user from the pod's securityContext, and
  the environment its template declares plus what KubeRay adds (``deploy.kuberay``);
- its init containers run in order, then the Ray container's command exactly as KubeRay
  writes it (``/bin/bash -c -- "ulimit ...; ray start ..."``), with the image's Python
  (``deploy.image``) first on PATH;
- the head Service's DNS name resolves to the head pod (``/etc/netns/<pod>/hosts``);
- as the RayService controller does, ``serveConfigV2`` is PUT to the Serve REST API on the
  head's dashboard port and polled until every application is RUNNING; the pods' probes run
  as the kubelet runs them; the serve Service's endpoints are the pods whose probes pass.

What still cannot run here: the API server (objects are not stored, RBAC is not checked),
the autoscaler's calls to it (worker groups stay at the pods started), GPUs. ``kuberay``'s
checks judge those statically. Needs root (network namespaces, mounts).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import random
import resource
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from dnslib import QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]
from dnslib.server import (  # type: ignore[import-untyped]
    BaseResolver,
    DNSHandler,
    DNSLogger,
    DNSServer,
)

from deploy.errors import BootFailed, DeployError
from deploy.kuberay import Cluster, Container, Pod, Probe, cluster, rayservice

logger = logging.getLogger(__name__)

SUBNETS = ipaddress.IPv4Network("10.200.0.0/13")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_TIMEOUT_S = 300.0
PROBE_POLL_S = 0.5
SERVE_PATH = "/api/serve/applications/"
IMAGE_HOME = "/home/ray"
# KubeRay raises the open-files limit to this (`ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}`)
KUBERAY_NOFILE = 65536


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise BootFailed(f"`{shlex.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass
class Network:
    """A bridge on the host and one namespace per pod, each with its own IP."""

    tag: str
    subnet: ipaddress.IPv4Network
    namespaces: dict[str, str] = field(default_factory=dict)  # pod -> namespace
    addresses: dict[str, str] = field(default_factory=dict)  # pod -> IP
    dns: DNSServer | None = None

    @classmethod
    def create(cls) -> Network:
        """A bridge with a /24 of 10.200.0.0/13 that no route of this machine overlaps."""
        tag = f"sw{random.randrange(16**4):04x}"
        routes = run(["ip", "-4", "route", "show"]).stdout.split()
        taken = []
        for word in routes:
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.ip_network(word, strict=False))
        free = [
            net
            for net in SUBNETS.subnets(new_prefix=24)
            if not any(net.overlaps(t) for t in taken if isinstance(t, ipaddress.IPv4Network))
        ]
        if not free:
            raise BootFailed(f"no free /24 in {SUBNETS} for the pods' network")
        subnet = random.choice(free)
        network = cls(tag, subnet)
        run(["ip", "link", "add", network.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{network.gateway}/24", "dev", network.bridge])
        run(["ip", "link", "set", network.bridge, "up"])
        return network

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def add(self, pod: str) -> str:
        """A namespace for ``pod`` with the next free address; returns the address."""
        if pod in self.addresses:
            return self.addresses[pod]
        index = len(self.namespaces) + 2
        namespace, host_side = f"{self.tag}-{index}", f"{self.tag}v{index}"
        address = str(self.subnet.network_address + index)
        run(["ip", "netns", "add", namespace])
        run(["ip", "link", "add", host_side, "type", "veth", "peer", "name", f"{self.tag}p{index}"])
        run(["ip", "link", "set", host_side, "master", self.bridge, "up"])
        run(["ip", "link", "set", f"{self.tag}p{index}", "netns", namespace])
        inside = ["ip", "-n", namespace]
        run([*inside, "link", "set", f"{self.tag}p{index}", "name", "eth0"])
        run([*inside, "addr", "add", f"{address}/24", "dev", "eth0"])
        run([*inside, "link", "set", "eth0", "up"])
        run([*inside, "link", "set", "lo", "up"])
        run([*inside, "route", "add", "default", "via", self.gateway])
        self.namespaces[pod], self.addresses[pod] = namespace, address
        return address

    def serve_dns(self, names: Mapping[str, str], search: Sequence[str]) -> None:
        """The cluster's DNS: ``names`` (Service names -> IPs) answered on the gateway,
        and each namespace's /etc/resolv.conf and /etc/hosts pointing at it as a pod's do
        (``ip netns exec`` mounts /etc/netns/<ns>/*). A server, not only hosts files: gRPC's
        own resolver (how Ray's processes reach the GCS) asks a DNS server."""
        self.dns = DNSServer(
            _ServiceResolver(names),
            port=53,
            address=self.gateway,
            logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False),
        )
        self.dns.start_thread()
        for pod, namespace in self.namespaces.items():
            folder = Path("/etc/netns") / namespace
            folder.mkdir(parents=True, exist_ok=True)
            hosts = ["127.0.0.1 localhost", f"{self.addresses[pod]} {pod}"]
            (folder / "hosts").write_text("\n".join(hosts) + "\n")
            resolv = [f"search {' '.join(search)}", f"nameserver {self.gateway}", "options ndots:5"]
            (folder / "resolv.conf").write_text("\n".join(resolv) + "\n")

    def pids(self, pod: str) -> list[int]:
        done = run(["ip", "netns", "pids", self.namespaces[pod]], check=False)
        return [int(p) for p in done.stdout.split()]

    def delete(self) -> None:
        if self.dns is not None:
            self.dns.stop()
        for namespace in self.namespaces.values():
            run(["ip", "netns", "del", namespace], check=False)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)
        run(["ip", "link", "del", self.bridge], check=False)


class _ServiceResolver(BaseResolver):  # type: ignore[misc]
    """A records for the cluster's Service names; NXDOMAIN for anything else (nothing
    outside the cluster is reachable from its pods here)."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = {name.rstrip(".").lower(): ip for name, ip in names.items()}

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name not in self.names:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(self.names[name]), ttl=5))
        return reply


@dataclass
class RunningPod:
    """A pod started on this machine: its namespace, address, folder and Ray container."""

    pod: Pod
    address: str
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0

    @property
    def name(self) -> str:
        return self.pod.name

    def url(self, port_name: str, path: str = "") -> str:
        return f"http://{self.address}:{self.pod.ports[port_name]}{path}"


class Boot:
    """One RayService's cluster, booted from a render (``helm template`` output).

    ``image_bin`` is the image's Python (``deploy.image.build_image_python``); ``claims``
    maps a PersistentVolumeClaim's name to the host directory standing in for it; ``secrets``
    gives the Secrets env entries read (name -> key -> value).
    """

    def __init__(
        self,
        docs: Sequence[Mapping[str, Any]],
        *,
        image_bin: Path,
        image_env: Mapping[str, str],
        workdir: Path,
        namespace: str = "default",
        claims: Mapping[str, Path] | None = None,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        replicas: Mapping[str, int] | None = None,
    ) -> None:
        self.docs = list(docs)
        self.cluster: Cluster = cluster(
            docs, namespace=namespace, secrets=secrets, replicas=replicas
        )
        self.image_bin = image_bin
        self.image_env = dict(image_env)
        self.workdir = workdir
        self.claims = dict(claims or {})
        self.secrets = secrets or {}
        self.config_maps = {
            str(d["metadata"]["name"]): dict(d.get("data") or {})
            for d in docs
            if d.get("kind") == "ConfigMap"
        }
        self.network: Network | None = None
        self.pods: dict[str, RunningPod] = {}
        self._made_dirs: list[Path] = []
        self.applied: str | None = None
        self.timings: dict[str, float] = {}  # seconds, for reports

    # -- lifecycle ---------------------------------------------------------------------

    def start(
        self, *, timeout_s: float = 300.0, on_event: Callable[[str], None] | None = None
    ) -> None:
        """Start the head, wait until it is ready, then every worker (each past its init
        containers and its raylet up)."""
        say = on_event or (lambda _: None)
        self.network = Network.create()
        for pod in self.cluster.pods:
            self.network.add(pod.name)
        head = self.cluster.head
        namespace = self.cluster.namespace
        self.network.serve_dns(
            {self.cluster.head_service: self.network.addresses[head.name]},
            [f"{namespace}.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        )
        deadline = time.monotonic() + timeout_s
        self._start_pod(head)
        say(f"pod {head.name} started ({self.network.addresses[head.name]})")
        self.wait_probe(head.name, head.readiness, deadline)
        say(f"pod {head.name} ready")
        for pod in self.cluster.workers:
            self._start_pod(pod)
            say(f"pod {pod.name} started ({self.network.addresses[pod.name]})")
        for pod in self.cluster.workers:
            self.wait_probe(pod.name, pod.liveness, deadline)
            say(f"pod {pod.name} live")

    def stop(self) -> None:
        """Kill every process of every pod (by PID, those in the pods' namespaces), unmount
        nothing (each pod's mounts die with its mount namespace), remove the network."""
        for name in list(self.pods):
            with contextlib.suppress(DeployError, OSError, subprocess.SubprocessError):
                self.kill_pod(name)
        if self.network is not None:
            self.network.delete()
        for path in reversed(self._made_dirs):
            with contextlib.suppress(OSError):
                path.rmdir()

    def __enter__(self) -> Boot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill_pod(self, name: str, timeout_s: float = 30.0) -> None:
        """What a lost node does: every process in the pod's namespace SIGKILLed."""
        assert self.network is not None
        running = self.pods[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = self.network.pids(name)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if running.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                running.process.wait(timeout=5)

    def replace_pod(self, name: str) -> None:
        """What KubeRay does for a lost worker pod: the same pod template started afresh
        (new emptyDirs; this boot keeps its address)."""
        self.kill_pod(name)
        pod = self.pods[name].pod
        self._start_pod(pod, generation=self.pods[name].generation + 1)

    # -- pods --------------------------------------------------------------------------

    def _start_pod(self, pod: Pod, generation: int = 0) -> None:
        assert self.network is not None
        folder = self.workdir / "pods" / f"{pod.name}.{generation}"
        folder.mkdir(parents=True)
        running = RunningPod(pod, self.network.addresses[pod.name], folder, generation=generation)
        self.pods[pod.name] = running
        volumes = self._volumes(pod, folder)
        for init in pod.init_containers:
            log = folder / f"{init.name}.log"
            with log.open("wb") as out:
                process = self._spawn(running, init, volumes, out)
                try:
                    code = process.wait(timeout=INIT_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.kill_pod(pod.name)
                    raise BootFailed(
                        f"pod {pod.name}: init container {init.name} ran over "
                        f"{INIT_TIMEOUT_S:g} s; see {log}"
                    ) from None
            if code != 0:
                raise BootFailed(
                    f"pod {pod.name}: init container {init.name} exited {code}: {_tail(log)}"
                )
        log = folder / f"{pod.ray.name}.log"
        running.process = self._spawn(running, pod.ray, volumes, log.open("wb"))

    def _volumes(self, pod: Pod, folder: Path) -> dict[str, Path]:
        """Host directories for the pod's volumes: emptyDirs made fresh, ConfigMaps written
        out from the render, claims from ``claims``."""
        paths: dict[str, Path] = {}
        for name, volume in pod.volumes.items():
            if "emptyDir" in volume:
                path = folder / "volumes" / name
                path.mkdir(parents=True)
            elif "configMap" in volume:
                source = str(volume["configMap"]["name"])
                if source not in self.config_maps:
                    raise BootFailed(
                        f"pod {pod.name}: volume {name} reads ConfigMap {source}, which the "
                        "render lacks"
                    )
                path = folder / "volumes" / name
                path.mkdir(parents=True)
                for key, text in self.config_maps[source].items():
                    (path / key).write_text(str(text))
            elif "persistentVolumeClaim" in volume:
                claim = str(volume["persistentVolumeClaim"]["claimName"])
                if claim not in self.claims:
                    raise BootFailed(
                        f"pod {pod.name}: volume {name} is claim {claim!r}; give a host directory "
                        f"standing in for it (claims={{'{claim}': DIR}})"
                    )
                path = self.claims[claim]
            else:
                raise BootFailed(
                    f"pod {pod.name}: volume {name}: {sorted(volume)} is not a kind this boot "
                    "mounts"
                )
            if pod.run_as and "persistentVolumeClaim" not in volume:
                for part in [path, *path.rglob("*")]:
                    os.chown(part, *pod.run_as)
            paths[name] = path
        return paths

    def _spawn(
        self, running: RunningPod, container: Container, volumes: Mapping[str, Path], out: Any
    ) -> subprocess.Popen[bytes]:
        assert self.network is not None
        pod = running.pod
        if pod.run_as and pod.run_as[0] != 0:
            for part in [self.image_bin, *self.image_bin.parents]:
                if not part.stat().st_mode & 0o001:
                    raise BootFailed(
                        f"the image's Python ({self.image_bin}) is out of reach of pod "
                        f"{pod.name}'s user {pod.run_as[0]}: {part} is not searchable by others; "
                        "make it elsewhere (SLUICEWAY_IMAGE_PYTHON=DIR python -m deploy.image)"
                    )
        for target in [*container.mounts, IMAGE_HOME]:
            if self.image_bin.resolve().is_relative_to(target):
                raise BootFailed(
                    f"the image's Python ({self.image_bin}) lies under {target}, which pod "
                    f"{pod.name} mounts over: make it elsewhere (SLUICEWAY_IMAGE_PYTHON=DIR "
                    "python -m deploy.image)"
                )
        home = running.folder / "home" / container.name
        home.mkdir(parents=True, exist_ok=True)
        if pod.run_as:
            os.chown(home, *pod.run_as)
        lines = ["set -e"]
        # the image's home and WORKDIR, per pod (/home/ray in the Ray images)
        self._mount_point(Path(IMAGE_HOME))
        lines.append(f"mount --bind {shlex.quote(str(home))} {IMAGE_HOME}")
        # /tmp last: a source under the host's /tmp must be bound before /tmp is replaced
        for target in sorted(container.mounts, key=lambda path: (path == "/tmp", path)):
            source = volumes[container.mounts[target]]
            self._mount_point(Path(target))
            lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
            if target in container.read_only:
                lines.append(f"mount -o remount,bind,ro {shlex.quote(target)}")
        env = {
            **_nofile_env(),
            "PATH": f"{self.image_bin}:{SYSTEM_PATH}",
            "HOME": IMAGE_HOME,
            "HOSTNAME": pod.name,
            **self.image_env,
            **container.env,
        }
        user: list[str] = []
        if pod.run_as:
            user = [
                "setpriv",
                f"--reuid={pod.run_as[0]}",
                f"--regid={pod.run_as[1]}",
                "--clear-groups",
                "--",
            ]
        lines.append(f"cd {IMAGE_HOME}")
        lines.append(
            "exec "
            + shlex.join(
                [*user, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *container.argv]
            )
        )
        script = running.folder / f"{container.name}.sh"
        script.write_text("\n".join(lines) + "\n")
        namespace = self.network.namespaces[pod.name]
        return subprocess.Popen(
            ["ip", "netns", "exec", namespace, "/bin/sh", str(script)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _mount_point(self, path: Path) -> None:
        """A bind mount needs its target to exist on the host (an empty directory, removed
        again at stop when this made it)."""
        missing = []
        for part in [path, *path.parents]:
            if part.exists():
                break
            missing.append(part)
        for part in reversed(missing):
            part.mkdir()
            self._made_dirs.append(part)

    # -- probes and Services -----------------------------------------------------------

    def probe(self, name: str, probe: Probe) -> bool:
        """One run of ``probe`` against pod ``name``, as the kubelet runs it."""
        assert self.network is not None
        running = self.pods[name]
        if running.process is None or running.process.poll() is not None:
            return False
        if probe.http_path is not None:
            try:
                answer = httpx.get(
                    f"http://{running.address}:{probe.http_port}{probe.http_path}",
                    timeout=probe.timeout_s,
                )
            except httpx.HTTPError:
                return False
            return 200 <= answer.status_code < 400
        done = subprocess.run(
            ["ip", "netns", "exec", self.network.namespaces[name], *probe.command],
            capture_output=True,
            timeout=probe.timeout_s * 3 + 5,
            env={"PATH": SYSTEM_PATH},
            check=False,
        )
        return done.returncode == 0

    def wait_probe(self, name: str, probe: Probe, deadline: float) -> None:
        running = self.pods[name]
        while time.monotonic() < deadline:
            if running.process is not None and running.process.poll() is not None:
                log = running.folder / f"{running.pod.ray.name}.log"
                raise BootFailed(
                    f"pod {name}: its Ray container exited {running.process.returncode}: "
                    f"{_tail(log)}"
                )
            if self.probe(name, probe):
                return
            time.sleep(PROBE_POLL_S)
        raise BootFailed(f"pod {name}: its probe did not pass in time; its log: {running.folder}")

    def serve_endpoints(self) -> list[str]:
        """The serve Service's endpoints: workers whose readiness probe passes, and the
        head when its Serve proxy answers (the RayService controller's head label)."""
        urls = []
        for name, running in self.pods.items():
            pod = running.pod
            if pod.node_type == "head":
                ok = self.probe(
                    name, Probe(http_path="/-/healthz", http_port=pod.ports["serve"], timeout_s=2)
                )
            else:
                ok = self.probe(name, pod.readiness)
            if ok:
                urls.append(running.url("serve"))
        return urls

    # -- the RayService controller's part ----------------------------------------------

    @property
    def dashboard(self) -> str:
        return self.pods[self.cluster.head.name].url("dashboard")

    def apply_serve_config(
        self, serve_config: str | None = None, *, timeout_s: float = 60.0
    ) -> None:
        """PUT ``serveConfigV2`` (the render's by default) to the Serve REST API, as the
        RayService controller does, retrying while the dashboard is not up yet."""
        text = self.cluster.serve_config if serve_config is None else serve_config
        body = json.dumps(yaml.safe_load(text))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = httpx.put(
                    self.dashboard + SERVE_PATH,
                    content=body,
                    timeout=30.0,
                    headers={"content-type": "application/json"},
                )
            except httpx.HTTPError as exc:
                error, refused = str(exc), False
            else:
                if answer.is_success:
                    self.applied = text
                    return
                error = f"{answer.status_code} {answer.text[:2000]}"
                refused = 400 <= answer.status_code < 500  # Serve read it and said no
            if refused or time.monotonic() > deadline:
                raise BootFailed(f"PUT {SERVE_PATH} on the head's dashboard failed: {error}")
            time.sleep(1.0)

    def upgrade(self, docs: Sequence[Mapping[str, Any]]) -> None:
        """What the operators do with a `helm upgrade` of this release: when only
        ``serveConfigV2`` changed, the RayService controller PUTs it to the running cluster.
        A changed cluster spec would make KubeRay build a new RayCluster and switch over,
        which this boot does not do: it says so instead."""
        new = rayservice(docs)["spec"]
        old = rayservice(self.docs)["spec"]
        if new["rayClusterConfig"] != old["rayClusterConfig"]:
            raise BootFailed(
                "the upgrade changes rayClusterConfig: KubeRay would start a new RayCluster "
                "and move traffic to it once it serves; boot the new render instead"
            )
        self.docs = list(docs)
        self.apply_serve_config(str(new.get("serveConfigV2", "")))

    def replica_ids(self) -> dict[str, set[str]]:
        """Each deployment's running replica ids, from Serve's REST API."""
        apps = self.serve_status().get("applications") or {}
        return {
            name: {
                r["replica_id"]
                for r in deployment.get("replicas") or []
                if r.get("state") == "RUNNING"
            }
            for app in apps.values()
            for name, deployment in (app.get("deployments") or {}).items()
        }

    def serve_status(self) -> dict[str, Any]:
        answer = httpx.get(
            self.dashboard + SERVE_PATH, params={"api_type": "declarative"}, timeout=30.0
        )
        answer.raise_for_status()
        details: dict[str, Any] = answer.json()
        return details

    def wait_running(self, timeout_s: float = 600.0) -> dict[str, Any]:
        """Poll the Serve applications until every one is RUNNING (the controller's
        ``isReady``); a DEPLOY_FAILED application ends it with Serve's message."""
        deadline = time.monotonic() + timeout_s
        statuses: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                details = self.serve_status()
            except httpx.HTTPError:
                time.sleep(1.0)
                continue
            apps = details.get("applications") or {}
            statuses = {name: str(app.get("status")) for name, app in apps.items()}
            failed = {
                n: a.get("message", "")
                for n, a in apps.items()
                if a.get("status") == "DEPLOY_FAILED"
            }
            if failed:
                raise BootFailed(f"Serve applications failed to deploy: {failed}")
            if apps and all(s == "RUNNING" for s in statuses.values()):
                return details
            time.sleep(1.0)
        raise BootFailed(f"Serve applications not RUNNING after {timeout_s:g} s: {statuses}")

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until every worker's readiness probe passes (its Serve proxy up)."""
        deadline = time.monotonic() + timeout_s
        for pod in self.cluster.workers:
            self.wait_probe(pod.name, pod.readiness, deadline)


def _nofile_env() -> dict[str, str]:
    """A container runtime gives containers a hard open-files limit above KubeRay's 65536;
    where this machine's is lower (and cannot be raised without CAP_SYS_RESOURCE), KubeRay's
    own knob asks for what there is instead of failing the `ulimit` in every pod."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= KUBERAY_NOFILE:
        return {}
    return {"RAY_START_ULIMIT_OPEN_FILES": str(hard)}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])


@contextlib.contextmanager
def booted(boot: Boot, **start: Any) -> Iterator[Boot]:
    try:
        boot.start(**start)
        yield boot
    finally:
        boot.stop()
