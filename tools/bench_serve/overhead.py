"""What serving adds to one request: Sluiceway against raw ONNX Runtime, a no-op Serve app
and a no-op relay (the same two Serve hops as Sluiceway, with nothing of ours in them).

Batch-1 v2 binary requests (one clip) go to each in turn, round by round, so that the
machine's drift cancels in the paired differences.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from optimize.manifest import artifact_digest
from serving.config import PoolConfig, parse_config
from serving.control import APP_NAME, direct
from serving.replica import inference_executor
from serving.server import QUIET_LOGS, build_app

HEADER = "inference-header-content-length"
# How long the relay's no-op model holds the call, and how long it did: a call that waits as
# long as the model ran costs more to return than one answered at once (idle processes wake
# slower), and that is no part of what Sluiceway adds.
HOLD_HEADER = "x-relay-hold-seconds"
HELD_HEADER = "x-relay-held-seconds"
NICE = 19  # below the proxy and ingress, which Ray runs at 15
OVERHEAD_GOAL_S = 0.005
SHED_GOAL_S = 0.050


class NoOp:
    """A Serve deployment that reads the body and answers a fixed small v2 response."""

    async def __call__(self, request: Request) -> Response:
        await request.body()
        return Response(b'{"model_name":"noop","outputs":[]}', media_type="application/json")


class NoModel:
    """Shaped like a replica with no model: tensors in, a small output out; it holds the
    call ``hold_s`` (idle, as a process waiting on a model is) and says how long it did."""

    async def infer(
        self, variant: str, inputs: dict[str, np.ndarray], hold_s: float = 0.0
    ) -> tuple[dict[str, np.ndarray], float]:
        start = time.perf_counter()
        if hold_s > 0:
            await asyncio.sleep(hold_s)
        return {"logits": np.zeros((1, 2), dtype=np.float32)}, time.perf_counter() - start


class Relay:
    """The same two Serve hops as Sluiceway (HTTP proxy -> ingress -> replica, over the same
    transport, with the same tensor) and nothing else: no routing, checks, model or encoding.
    The floor that one deployment per (model, pool) behind an ingress sets on this machine.
    """

    def __init__(self, model: DeploymentHandle) -> None:
        self._model = direct(model)

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        tensor = np.frombuffer(body, dtype="<f4", offset=int(request.headers[HEADER]))
        hold = float(request.headers.get(HOLD_HEADER, 0.0))
        _, held = await self._model.infer.remote("v", {"input_values": tensor[None, :]}, hold)
        return Response(
            b'{"model_name":"relay","outputs":[]}',
            media_type="application/json",
            headers={HELD_HEADER: repr(held)},
        )


def v2_body(clip: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = np.ascontiguousarray(clip[None, :], dtype="<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_values",
                    "shape": [1, clip.shape[0]],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return head + raw, {HEADER: str(len(head)), "content-type": "application/octet-stream"}


def artifact(path: Path) -> dict[str, str]:
    return {"uri": str(path.resolve()), "sha256": artifact_digest(path)}


def config(
    artifacts: Path, port: int, pools: list[str], slo_s: float, ingresses: int = 2
) -> dict[str, Any]:
    files = {"fast": artifacts / "int8", "slow": artifacts / "fp32"}
    return {
        "models": {
            "w2v": {
                "variants": {
                    "v": {"weight": 100, "artifacts": {p: artifact(files[p]) for p in pools}}
                },
                "routing": {"pools": pools, "slo_p99_seconds": slo_s, "min_spill_seconds": 1.0},
                "limits": {"deadline_seconds": 30.0},
            }
        },
        # Both pools share this machine's cores with the proxy, the ingress and the load
        # generator; `nice` keeps the request path ahead of inference, as separate nodes
        # would on a cluster (`make serve` does the same for its CPU pool).
        # One request at a time and no queue: under this load one queued behind another
        # ends past an SLO of 3x the unloaded p50. Past one in flight, a request spills or
        # is shed.
        "pools": {
            pool: {
                "num_cpus": 1,
                "threads": 1,
                "nice": NICE,
                "max_ongoing_requests": 1,
                "max_queued_requests": 0,
                "resources": {f"pool-{pool}": 1},
            }
            for pool in ("fast", "slow")
        },
        "ingress": {"replicas": {"min": ingresses, "max": ingresses}},
        "http": {"host": "127.0.0.1", "port": port},
    }


def deploy(cfg: dict[str, Any]) -> None:
    from ray import serve

    serve.run(
        build_app(parse_config(cfg)), name=APP_NAME, route_prefix="/", logging_config=QUIET_LOGS
    )


def wait_healthy(base: str, pools: int, deadline_s: float = 120.0) -> None:
    """Poll until the router reports ``pools`` healthy pools (a redeploy swaps replicas)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        listing = httpx.get(f"{base}/v1/models", timeout=10).json()["models"][0]["pools"]
        if len(listing) == pools and all(p["healthy"] for p in listing):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the pools did not become healthy within {deadline_s:g} s")


def median_interval(samples: Any, z: float = 1.96) -> tuple[float, float]:
    """A distribution-free 95 % confidence interval of the median: the order statistics
    ``z`` standard deviations of a binomial(n, 1/2) either side of the middle."""
    ordered = np.sort(np.asarray(samples, dtype=float))
    n = len(ordered)
    half = z * np.sqrt(n) / 2
    low = max(0, int(np.floor(n / 2 - half)))
    high = min(n - 1, int(np.ceil(n / 2 + half)))
    return float(ordered[low]), float(ordered[high])


def overhead(base: str, model: Path, clip: np.ndarray, rounds: int) -> dict[str, Any]:
    """p50s of raw ONNX Runtime, Sluiceway, the no-op app and the relay, interleaved round
    by round. The relay goes twice a round: answered at once, and holding the call as long
    as Sluiceway's replica ran that round's request (the floor Sluiceway is measured on).

    Raw ONNX Runtime runs as a replica does: one thread, at the replica's ``nice``.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    executor = inference_executor("raw", PoolConfig(threads=1, nice=NICE, max_ongoing_requests=1))
    session = executor.submit(
        ort.InferenceSession, str(model), options, providers=["CPUExecutionProvider"]
    ).result()
    feeds = {"input_values": clip[None, :]}

    def timed_run() -> float:
        t = time.perf_counter()
        session.run(None, feeds)
        return time.perf_counter() - t

    body, headers = v2_body(clip)
    raw: list[float] = []
    ours: list[float] = []
    noop: list[float] = []
    relay: list[float] = []
    held: list[float] = []  # the relay holding each call as long as Sluiceway's model ran
    spans: dict[str, list[float]] = {"ingress": [], "dispatch": [], "replica": []}
    with httpx.Client(timeout=60) as client:

        def timed_post(path: str, into: list[float], hold_s: float = 0.0) -> httpx.Response:
            extra = {HOLD_HEADER: repr(hold_s)} if hold_s else {}
            t = time.perf_counter()
            r = client.post(f"{base}{path}", content=body, headers=headers | extra)
            into.append(time.perf_counter() - t - float(r.headers.get(HELD_HEADER, 0.0)))
            assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
            return r

        for _ in range(3):  # warm-up
            for path in ("/v2/models/w2v/infer", "/noop", "/relay"):
                timed_post(path, [])
        for _ in range(rounds):
            raw.append(executor.submit(timed_run).result())
            r = timed_post("/v2/models/w2v/infer", ours)
            for part in r.headers["server-timing"].split(","):
                name, _, dur = part.strip().partition(";dur=")
                spans[name].append(float(dur) / 1e3)
            timed_post("/noop", noop)
            timed_post("/relay", relay)
            timed_post("/relay", held, hold_s=spans["replica"][-1])
    executor.shutdown()
    series = {"raw": raw, "ours": ours, "noop": noop, "relay": relay, "relay_held": held}
    series |= spans
    p50 = {k: float(np.median(v)) for k, v in series.items()}
    # Rounds are paired (raw, ours, no-op back to back): the median of per-round
    # differences cancels the machine's drift that a difference of medians keeps.
    paired = float(np.median(np.subtract(ours, raw) - np.asarray(noop)))
    # Around the very inference the request ran (the replica's own span), free of the
    # difference between the replica's and this process's inference times.
    outside = np.subtract(ours, spans["replica"])
    around = float(np.median(outside - np.asarray(noop)))
    return p50 | {
        "ours_overhead": p50["ours"] - p50["raw"],
        "noop_overhead": p50["noop"],
        "excess": p50["ours"] - p50["raw"] - p50["noop"],
        "excess_paired": paired,
        "excess_around": around,
        # What the second Serve hop itself costs, and what Sluiceway adds on top of it.
        "second_hop": float(np.median(np.subtract(relay, noop))),
        # Both outside the model's time: Sluiceway's outside its replica's span, the relay's
        # outside the time its no-op model held the call.
        "over_relay": float(np.median(outside - np.asarray(held))),
        "over_relay_interval": median_interval(outside - np.asarray(held)),
        "over_instant_relay": float(np.median(outside - np.asarray(relay))),
        "holding": float(np.median(np.subtract(held, relay))),
        "proxy_hop": float(np.median(np.subtract(ours, spans["ingress"]))),
        "in_ingress": float(np.median(np.subtract(spans["ingress"], spans["dispatch"]))),
        "replica_hop": float(np.median(np.subtract(spans["dispatch"], spans["replica"]))),
    }
