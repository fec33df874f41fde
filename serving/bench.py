"""`make bench-serve`: what serving adds, and what spillover buys under overload.

1. Overhead: batch-1 v2 binary requests (one 3 s clip) to Sluiceway, raw ONNX Runtime on
   the same artifact in this process, and the same bytes to a no-op Serve deployment,
   interleaved. Sluiceway's overhead (HTTP p50 - raw p50) is compared with the no-op app's
   (its HTTP p50). A no-op relay (proxy -> ingress -> a replica with no model, the same
   transport and tensor) shows what the second Serve hop alone costs on this machine.
2. Open-loop load (Poisson arrivals) at 2x the fast pool's measured capacity, first with
   spillover (fast pool, then slow pool), then a no-spillover baseline (fast pool only);
   P50/P99 of served requests against the SLO, and how fast shed requests are answered.

Run: ``python -m serving.bench --artifacts artifacts/wav2vec2-base``. Prints Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from optimize.manifest import MODEL_FILE, model_digest, read_manifest
from serving.app import APP_NAME, direct
from serving.config import PoolConfig, parse_config
from serving.replica import inference_executor
from serving.server import QUIET_LOGS, apply_ray_env, build_app, pick_local_haproxy_ports

HEADER = "inference-header-content-length"
NICE = 19  # below the proxy and ingress, which Ray runs at 15
OVERHEAD_GOAL_S = 0.005
SHED_GOAL_S = 0.050


class NoOp:
    """A Serve deployment that reads the body and answers a fixed small v2 response."""

    async def __call__(self, request: Request) -> Response:
        await request.body()
        return Response(b'{"model_name":"noop","outputs":[]}', media_type="application/json")


class NoModel:
    """Shaped like a replica with no model: tensors in, a small output out, no time inside."""

    async def infer(
        self, variant: str, inputs: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], float]:
        return {"logits": np.zeros((1, 2), dtype=np.float32)}, 0.0


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
        await self._model.infer.remote("v", {"input_values": tensor[None, :]})
        return Response(b'{"model_name":"relay","outputs":[]}', media_type="application/json")


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
    return {"uri": str(path.resolve()), "sha256": model_digest(read_manifest(path))}


def config(artifacts: Path, port: int, pools: list[str], slo_s: float) -> dict[str, Any]:
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
        # One request at a time and no queue: under this load a 3 s clip takes 450-850 ms,
        # so one queued behind another can take 1.7 s, past an SLO of 3x the unloaded p50
        # (measured: P99 1.5-2.0 s with a queue of one). Past one in flight, a request
        # spills or is shed.
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


def overhead(base: str, model: Path, clip: np.ndarray, rounds: int) -> dict[str, float]:
    """p50s of raw ONNX Runtime, Sluiceway, the no-op app and the relay, interleaved round
    by round.

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
    spans: dict[str, list[float]] = {"ingress": [], "dispatch": [], "replica": []}
    with httpx.Client(timeout=60) as client:

        def timed_post(path: str, into: list[float]) -> httpx.Response:
            t = time.perf_counter()
            r = client.post(f"{base}{path}", content=body, headers=headers)
            into.append(time.perf_counter() - t)
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
    executor.shutdown()
    series = {"raw": raw, "ours": ours, "noop": noop, "relay": relay} | spans
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
        "over_relay": float(np.median(outside - np.asarray(relay))),
        "proxy_hop": float(np.median(np.subtract(ours, spans["ingress"]))),
        "in_ingress": float(np.median(np.subtract(spans["ingress"], spans["dispatch"]))),
        "replica_hop": float(np.median(np.subtract(spans["dispatch"], spans["replica"]))),
    }


async def open_loop(base: str, clip: np.ndarray, rate: float, seconds: float) -> dict[str, Any]:
    """Poisson arrivals at ``rate``/s for ``seconds``; each request's code and latency."""
    body, headers = v2_body(clip)
    rng = random.Random(7)
    results: list[tuple[int, float, str]] = []
    shed_in_ingress: list[float] = []
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=500)) as client:

        async def one() -> None:
            t = time.perf_counter()
            r = await client.post(f"{base}/v2/models/w2v/infer", content=body, headers=headers)
            results.append(
                (r.status_code, time.perf_counter() - t, r.headers.get("x-sluiceway-pool", "-"))
            )
            if r.status_code == 503:  # the ingress's share of a shed: Server-Timing
                timing = r.headers.get("server-timing", "ingress;dur=nan")
                shed_in_ingress.append(float(timing.partition(";dur=")[2]) / 1e3)

        tasks = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    served = [lat for code, lat, _ in results if code == 200]
    shed = [lat for code, lat, _ in results if code == 503]
    return {
        "offered": len(results),
        "served": len(served),
        "shed": len(shed),
        "other": len(results) - len(served) - len(shed),
        "by_pool": {
            p: sum(1 for c, _, q in results if c == 200 and q == p) for p in ("fast", "slow")
        },
        "p50_s": float(np.percentile(served, 50)) if served else float("nan"),
        "p99_s": float(np.percentile(served, 99)) if served else float("nan"),
        "shed_max_s": max(shed) if shed else 0.0,
        "shed_p50_s": float(np.percentile(shed, 50)) if shed else 0.0,
        "shed_p99_s": float(np.percentile(shed, 99)) if shed else 0.0,
        "shed_ingress_p99_s": float(np.percentile(shed_in_ingress, 99)) if shed else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=120)
    parser.add_argument("--load-seconds", type=float, default=40.0)
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()
    apply_ray_env()
    pick_local_haproxy_ports()
    import ray
    from ray import serve

    ray.init(
        num_cpus=2,
        resources={"pool-fast": 1, "pool-slow": 1},
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,  # the report is stdout: keep workers' log lines out of it
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config=QUIET_LOGS)
    base = f"http://127.0.0.1:{args.port}"
    clip = (0.1 * np.random.default_rng(0).standard_normal(48_000)).astype(np.float32)
    try:
        serve.run(
            serve.deployment(NoOp).options(ray_actor_options={"num_cpus": 0}).bind(),
            name="noop",
            route_prefix="/noop",
            logging_config=QUIET_LOGS,
        )
        no_model = serve.deployment(NoModel).options(ray_actor_options={"num_cpus": 0})
        relay = serve.deployment(Relay).options(ray_actor_options={"num_cpus": 0})
        serve.run(
            relay.bind(no_model.bind()),
            name="relay",
            route_prefix="/relay",
            logging_config=QUIET_LOGS,
        )
        deploy(config(args.artifacts, args.port, ["fast", "slow"], slo_s=10.0))
        cost = overhead(base, args.artifacts / "int8" / MODEL_FILE, clip, args.rounds)
        capacity = 1.0 / cost["raw"]  # the fast pool: one replica, one request at a time
        slo = 3.0 * cost["ours"]
        print("# bench-serve: wav2vec2 int8, 3 s clip, CPU\n")
        print(
            "| p50 (ms) | raw ONNX Runtime | Sluiceway HTTP | no-op Serve HTTP | "
            "no-op relay (two Serve hops) HTTP |"
        )
        print("|---|---|---|---|---|")
        print(
            f"| | {cost['raw'] * 1e3:.1f} | {cost['ours'] * 1e3:.1f} | {cost['noop'] * 1e3:.1f} "
            f"| {cost['relay'] * 1e3:.1f} |"
        )
        # The difference of two ~440 ms medians moves by several ms from run to run (one
        # run gave 0.7 ms, the next 14 ms): "met" needs the estimate around the replica's
        # own inference time too, which does not move with the raw run's luck.
        met = "met" if max(cost["excess"], cost["excess_around"]) <= OVERHEAD_GOAL_S else "NOT met"
        print(
            f"\nSluiceway overhead (HTTP - raw): {cost['ours_overhead'] * 1e3:.1f} ms; "
            f"no-op app: {cost['noop_overhead'] * 1e3:.1f} ms; excess "
            f"{cost['excess'] * 1e3:.1f} ms; median of paired rounds: "
            f"{cost['excess_paired'] * 1e3:.1f} ms; around the replica's own inference time "
            f"(HTTP - replica span - no-op, paired): {cost['excess_around'] * 1e3:.1f} ms "
            f"(goal <= {OVERHEAD_GOAL_S * 1e3:g} ms for both the excess and this: {met})\n"
        )
        print(
            "Where it goes (medians of Server-Timing spans): HTTP proxy hop "
            f"{cost['proxy_hop'] * 1e3:.1f} ms, in the ingress {cost['in_ingress'] * 1e3:.1f} ms, "
            f"ingress -> replica -> ingress {cost['replica_hop'] * 1e3:.1f} ms, "
            f"inside the replica {cost['replica'] * 1e3:.1f} ms\n"
        )
        print(
            "The second Serve hop alone (no-op relay - no-op app, paired): "
            f"{cost['second_hop'] * 1e3:.1f} ms; Sluiceway's routing, checks and protocol on "
            "top of the relay (HTTP - replica span - relay, paired): "
            f"{cost['over_relay'] * 1e3:.1f} ms\n"
        )
        rate = 2.0 * capacity
        rows = {}
        for label, pools in (("spillover", ["fast", "slow"]), ("no spillover", ["fast"])):
            deploy(config(args.artifacts, args.port, pools, slo_s=slo))
            wait_healthy(base, len(pools))
            rows[label] = asyncio.run(open_loop(base, clip, rate, args.load_seconds))
        print(
            f"Open loop: Poisson {rate:.2f} req/s (2x the fast pool's {capacity:.2f}/s) for "
            f"{args.load_seconds:g} s; SLO {slo * 1e3:.0f} ms\n"
        )
        print(
            "| config | offered | served (fast/slow) | shed | other | P50 ms | P99 ms | "
            f"P99 < SLO | shed answered p50 / p99 / max ms | max <= {SHED_GOAL_S * 1e3:g} ms | "
            "shed: p99 ms in the ingress |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for label, r in rows.items():
            print(
                f"| {label} | {r['offered']} | {r['served']} ({r['by_pool']['fast']}/"
                f"{r['by_pool']['slow']}) | {r['shed']} | {r['other']} | {r['p50_s'] * 1e3:.0f} | "
                f"{r['p99_s'] * 1e3:.0f} | {'yes' if r['p99_s'] < slo else 'NO'} | "
                f"{r['shed_p50_s'] * 1e3:.0f} / {r['shed_p99_s'] * 1e3:.0f} / "
                f"{r['shed_max_s'] * 1e3:.0f} | "
                f"{'yes' if r['shed_max_s'] <= SHED_GOAL_S else 'NO'} | "
                f"{r['shed_ingress_p99_s'] * 1e3:.1f} |"
            )
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
