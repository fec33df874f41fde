"""`make bench-serve`: what serving adds, what it routes, and what it answers under overload.

1. Overhead (two ingress replicas): batch-1 v2 requests of one 3 s clip to Sluiceway, raw
   ONNX Runtime in this process, a no-op Serve app and a no-op relay with Sluiceway's two
   hops, paired round by round; the ingress's CPU time per request.
2. Routing capacity: requests per second one ingress replica routes with a no-op model
   behind it (the tiny model on 0.1 s clips), and its CPU time per request.
3. Open-loop overload at 2x the fast pool's capacity, with and without spillover.
4. Goodput sweep: the embedded default (`sluiceway serve --artifacts`, its default CPU
   artifact) and LitServe on the same artifact, closed-loop clients 1-16, with and without
   honouring Retry-After; answered/s, refused/s, p99, answered within the SLO per second.

Run: ``python -m tools.bench_serve --artifacts artifacts/wav2vec2-base
--tiny artifacts/wav2vec2-tiny --output bench-results``. Prints Markdown; writes serve.json
and serve-sweep.png there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import soundfile

from optimize.manifest import MODEL_FILE
from serving.defaults import config_for_artifacts
from serving.server import QUIET_LOGS, apply_ray_env, pick_local_haproxy_ports
from tools.bench_serve.load import Control, Outcomes, closed_loop, open_loop
from tools.bench_serve.overhead import (
    OVERHEAD_GOAL_S,
    SHED_GOAL_S,
    NoModel,
    NoOp,
    Relay,
    config,
    deploy,
    overhead,
    v2_body,
    wait_healthy,
)

OVER_RELAY_GOAL_S = 0.002  # what Sluiceway adds on top of the two-hop relay
CLIENTS = (1, 2, 4, 8, 16)
BEYOND = 32  # past the sweep: a retry storm twice as strong
REFUSAL_GOAL_S = 0.005
CONTROL_NAMES = {
    "haproxy": "HAProxy's own answer (GET /-/healthz)",
    "ingress_404": "the ingress's 404 for an unknown model (a refusal's path, none of its work)",
}


def actor_pids(deployment: str) -> list[int]:
    """PIDs of the running replicas of ``deployment`` (any app), as Ray reports them."""
    import ray

    pids = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if f"#{deployment}#" in actor["name"]:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            pids.append(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid())))
    return pids


@contextlib.contextmanager
def cpu_seconds(pids: list[int]) -> Iterator[list[float]]:
    """CPU seconds (user + system) the processes ``pids`` spend inside the block."""
    procs = [psutil.Process(p) for p in pids]
    before = [sum(p.cpu_times()[:2]) for p in procs]
    spent: list[float] = []
    yield spent
    spent.append(sum(sum(p.cpu_times()[:2]) - b for p, b in zip(procs, before, strict=True)))


def wav_bytes(clip: np.ndarray, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, clip, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def clip_of(seconds: float, seed: int = 0) -> np.ndarray:
    samples = int(16_000 * seconds)
    return (0.1 * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)


# -- 1. overhead ---------------------------------------------------------------------------


def section_overhead(base: str, artifacts: Path, rounds: int) -> dict[str, Any]:
    deploy(config(artifacts, port_of(base), ["fast", "slow"], slo_s=10.0, ingresses=2))
    wait_healthy(base, 2)
    cost = overhead(base, artifacts / "int8" / MODEL_FILE, clip_of(3.0), rounds)
    print("## 1. Overhead: wav2vec2 int8, one 3 s clip, CPU, two ingress replicas\n")
    print(
        "| p50 (ms) | raw ONNX Runtime | Sluiceway HTTP | no-op Serve HTTP | "
        "no-op relay (two Serve hops) HTTP |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| | {cost['raw'] * 1e3:.1f} | {cost['ours'] * 1e3:.1f} | {cost['noop'] * 1e3:.1f} "
        f"| {cost['relay'] * 1e3:.1f} |"
    )
    met = "met" if cost["over_relay"] <= OVER_RELAY_GOAL_S else "NOT met"
    low, high = cost["over_relay_interval"]
    print(
        f"\nSluiceway on top of the relay, the floor of this design (HTTP - replica span - "
        f"(relay holding the call as long - its hold), paired median): "
        f"**{cost['over_relay'] * 1e3:.1f} ms** (95 % confidence interval of that median "
        f"{low * 1e3:.1f}-{high * 1e3:.1f} ms over {rounds} rounds; goal <= "
        f"{OVER_RELAY_GOAL_S * 1e3:g} ms: {met}). On top of the relay answering at once: "
        f"{cost['over_instant_relay'] * 1e3:.1f}"
        f" ms; the difference is what waiting on a model costs any two-hop call here (the "
        f"relay holding the call minus answering at once, outside the hold, paired): "
        f"{cost['holding'] * 1e3:.1f} ms. The second Serve hop alone (relay - no-op app, "
        f"paired): {cost['second_hop'] * 1e3:.1f} ms. Sluiceway - raw - no-op: "
        f"{cost['excess'] * 1e3:.1f} ms (paired {cost['excess_paired'] * 1e3:.1f} ms; around "
        f"the replica's own span {cost['excess_around'] * 1e3:.1f} ms; "
        f"{OVERHEAD_GOAL_S * 1e3:g} ms was the old goal for this, which the second hop alone "
        "exceeds).\n"
    )
    print(
        "Where it goes (medians of Server-Timing spans): HTTP front hop "
        f"{cost['proxy_hop'] * 1e3:.1f} ms, in the ingress {cost['in_ingress'] * 1e3:.1f} ms, "
        f"ingress -> replica -> ingress {cost['replica_hop'] * 1e3:.1f} ms, inside the replica "
        f"{cost['replica'] * 1e3:.1f} ms.\n"
    )
    return cost


# -- 2. routing capacity -------------------------------------------------------------------


def section_capacity(base: str, tiny: Path, seconds: float) -> dict[str, Any]:
    port = port_of(base)
    cfg = config(tiny, port, ["fast"], slo_s=30.0, ingresses=1)
    cfg["pools"]["fast"] |= {"max_ongoing_requests": 2, "max_queued_requests": 32}
    deploy(cfg)
    wait_healthy(base, 1)
    body, headers = v2_body(clip_of(0.1))
    model_s = float(np.median(_raw_times(tiny / "int8" / MODEL_FILE, clip_of(0.1), 50)))

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(f"{base}/v2/models/w2v/infer", content=body, headers=headers)

    pids = actor_pids("ingress")
    with cpu_seconds(pids) as spent:
        got = asyncio.run(closed_loop(send, clients=16, seconds=seconds, honour_retry_after=False))
    rate = got.rate(got.answered)
    result: dict[str, Any] = {
        "answered_per_s": rate,
        "other": got.other,
        "ingress_cpu_s": spent[0] / max(1, len(got.answered) + len(got.refused)),
        "model_s": model_s,
        "p50_s": got.quantile(got.answered, 50),
    }
    print("## 2. Routing capacity: one ingress replica, a no-op model behind it\n")
    print(
        f"16 closed-loop clients, v2 binary requests of a 0.1 s clip (the tiny model: "
        f"{model_s * 1e3:.2f} ms of inference) for {seconds:g} s: **{rate:.0f} requests/s** "
        f"routed by one ingress replica (p50 {result['p50_s'] * 1e3:.1f} ms, other "
        f"outcomes {got.other or 'none'}); its CPU time per request "
        f"**{result['ingress_cpu_s'] * 1e3:.2f} ms**. Everything shares this machine's 2 "
        "cores (HAProxy, the replica, the load generator).\n"
    )
    return result


def _raw_times(model: Path, clip: np.ndarray, runs: int) -> list[float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: clip[None, :]}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times


# -- 3. open-loop overload -----------------------------------------------------------------


def section_overload(base: str, artifacts: Path, cost: dict[str, Any], seconds: float) -> None:
    port = port_of(base)
    clip = clip_of(3.0)
    body, headers = v2_body(clip)
    capacity = 1.0 / cost["raw"]  # the fast pool: one replica, one request at a time
    slo = 3.0 * cost["ours"]
    rate = 2.0 * capacity

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(f"{base}/v2/models/w2v/infer", content=body, headers=headers)

    rows = {}
    for label, pools in (("spillover", ["fast", "slow"]), ("no spillover", ["fast"])):
        deploy(config(artifacts, port, pools, slo_s=slo, ingresses=2))
        wait_healthy(base, len(pools))
        rows[label] = asyncio.run(open_loop(send, rate=rate, seconds=seconds))
    print("## 3. Open-loop overload\n")
    print(
        f"Poisson {rate:.2f} req/s (2x the fast pool's {capacity:.2f}/s) for {seconds:g} s; "
        f"SLO {slo * 1e3:.0f} ms\n"
    )
    print(
        "| config | offered | served (fast/slow) | shed | other | P50 ms | P99 ms | P99 < SLO "
        f"| shed answered p50 / p99 / max ms | max <= {SHED_GOAL_S * 1e3:g} ms | "
        "shed: p99 ms in the ingress |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        offered = len(r.answered) + len(r.refused) + sum(r.other.values())
        p99 = r.quantile(r.answered, 99)
        shed_max = max(r.refused, default=0.0)
        print(
            f"| {label} | {offered} | {len(r.answered)} ({r.by_pool.get('fast', 0)}/"
            f"{r.by_pool.get('slow', 0)}) | {len(r.refused)} | {sum(r.other.values())} | "
            f"{r.quantile(r.answered, 50) * 1e3:.0f} | {p99 * 1e3:.0f} | "
            f"{'yes' if p99 < slo else 'NO'} | {r.quantile(r.refused, 50) * 1e3:.0f} / "
            f"{r.quantile(r.refused, 99) * 1e3:.0f} / {shed_max * 1e3:.0f} | "
            f"{'yes' if shed_max <= SHED_GOAL_S else 'NO'} | "
            f"{r.quantile(r.refused_in_ingress, 99) * 1e3:.1f} |"
        )
    print()


# -- 4. goodput sweep ----------------------------------------------------------------------


@contextlib.contextmanager
def litserve(artifact_dir: Path, port: int, threads: int) -> Iterator[str]:
    """LitServe on ``artifact_dir`` in a subprocess; stopped, with its workers, on exit."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.bench_serve.litserve_app",
            f"--artifact={artifact_dir}",
            f"--port={port}",
            f"--threads={threads}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"LitServe exited with {process.returncode}")
            time.sleep(0.5)
        yield base
    finally:
        children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        for child in children:  # the workers LitServe started
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def sweep_steps(
    send: Any, seconds: float, probes: dict[str, Control] | None = None
) -> list[tuple[int, bool, Outcomes]]:
    """1-16 clients ignoring Retry-After, 16 honouring it, then 32 ignoring it (with
    ``probes`` beside them)."""
    plan = [(c, False) for c in CLIENTS] + [(CLIENTS[-1], True), (BEYOND, False)]
    return [
        (
            clients,
            honour,
            asyncio.run(
                closed_loop(
                    send,
                    clients=clients,
                    seconds=seconds,
                    honour_retry_after=honour,
                    probes=probes if clients == BEYOND else None,
                )
            ),
        )
        for clients, honour in plan
    ]


def section_sweep(
    base: str, name: str, directory: Path, clip_s: float, seconds: float, litserve_port: int
) -> dict[str, Any]:
    settings = config_for_artifacts(directory, gpu=False, port=port_of(base))
    model = next(iter(settings.models))
    slo = settings.models[model].routing.slo_p99_seconds
    pool = settings.pools["cpu"]
    served_artifact = Path(settings.models[model].variants["default"].artifacts["cpu"].uri)
    from ray import serve

    from serving.control import APP_NAME
    from serving.server import build_app

    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", logging_config=QUIET_LOGS)
    wait_healthy(base, 1)
    wav = wav_bytes(clip_of(clip_s, seed=3))

    async def ours(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(
            f"{base}/v1/models/{model}:classify", content=wav, headers={"content-type": "audio/wav"}
        )

    # Controls for the refusals' latency, sent from the same client during the storm: an
    # answer HAProxy gives itself (no Python on the way), and one the ingress gives before
    # the body is read with no work of ours (an unknown model: the path a refusal takes).
    async def haproxy_answer(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(f"{base}/-/healthz")

    async def ingress_answer(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(
            f"{base}/v1/models/no-such-model:classify",
            content=wav,
            headers={"content-type": "audio/wav"},
        )

    controls = {
        "haproxy": Control(haproxy_answer, 200),
        "ingress_404": Control(ingress_answer, 404),
    }
    results: dict[str, list[tuple[int, bool, Outcomes]]] = {
        "sluiceway": sweep_steps(ours, seconds, controls)
    }
    serve.delete(APP_NAME)
    payload = json.dumps({"wav": base64.b64encode(wav).decode()}).encode()
    with litserve(served_artifact, litserve_port, 0) as lit:

        async def theirs(client: httpx.AsyncClient) -> httpx.Response:
            return await client.post(
                f"{lit}/predict", content=payload, headers={"content-type": "application/json"}
            )

        results["litserve"] = sweep_steps(theirs, seconds)
    print(
        f"## 4. Goodput: {name}, `{served_artifact.name}` (the default CPU artifact), "
        f"{clip_s:g} s WAV, SLO {slo * 1e3:.0f} ms, {seconds:g} s per step\n"
    )
    print(
        f"Sluiceway: the embedded default (`sluiceway serve --artifacts`): CPU pool "
        f"{pool.replicas.min} replica, {pool.max_ongoing_requests} model call(s) at once on "
        f"{pool.threads} thread(s), batches of up to "
        f"{pool.batching.max_batch_size if pool.batching else 1}, "
        f"{settings.ingress.replicas.min} ingress replica(s). LitServe 0.2.19: its defaults "
        "(one worker, no batching), ONNX Runtime's default threads (one per core), JSON "
        "input.\n"
    )
    print(
        "| clients | Retry-After | Sluiceway answered/s | refused/s | p99 ms | in SLO/s | "
        "refusal p50 / p99 ms | LitServe answered/s | refused/s | p99 ms | in SLO/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    table = []
    for (clients, honour, a), (_, _, b) in zip(
        results["sluiceway"], results["litserve"], strict=True
    ):
        row: dict[str, Any] = {
            "clients": clients,
            "honour_retry_after": honour,
            "sluiceway": summary(a, slo),
            "litserve": summary(b, slo),
        }
        table.append(row)
        s, lit = row["sluiceway"], row["litserve"]
        print(
            f"| {clients} | {'honoured' if honour else 'ignored'} | {s['answered_per_s']:.1f} | "
            f"{s['refused_per_s']:.1f} | {s['p99_ms']:.0f} | {s['within_slo_per_s']:.1f} | "
            f"{_ms(s['refusal_p50_ms'])} / {_ms(s['refusal_p99_ms'])} | "
            f"{lit['answered_per_s']:.1f} | {lit['refused_per_s']:.1f} | {lit['p99_ms']:.0f} | "
            f"{lit['within_slo_per_s']:.1f} |"
        )
    verdict = goals(table, slo)
    print("\n" + "\n".join(f"- {line}" for line in verdict["lines"]) + "\n")
    return {
        "model": name,
        "artifact": served_artifact.name,
        "slo_s": slo,
        "steps": table,
        "goals": verdict,
    }


def summary(o: Outcomes, slo: float) -> dict[str, Any]:
    return {
        "answered_per_s": o.rate(o.answered),
        "refused_per_s": o.rate(o.refused),
        "other": o.other,
        "p50_ms": o.quantile(o.answered, 50) * 1e3,
        "p99_ms": o.quantile(o.answered, 99) * 1e3,
        "within_slo_per_s": o.within(slo),
        "refused": len(o.refused),
        # None with nothing refused: no refusal is not a fast one
        "refusal_p50_ms": o.quantile(o.refused, 50) * 1e3 if o.refused else None,
        "refusal_p99_ms": o.quantile(o.refused, 99) * 1e3 if o.refused else None,
        # the same refusals' time inside the ingress (its Server-Timing span)
        "refusal_in_ingress_p99_ms": o.quantile(o.refused_in_ingress, 99) * 1e3
        if o.refused_in_ingress
        else None,
        "controls": {
            name: {
                "p50_ms": o.quantile(v, 50) * 1e3,
                "p99_ms": o.quantile(v, 99) * 1e3,
                "answered_otherwise": o.probe_misses.get(name, 0),
            }
            for name, v in o.probes.items()
            if v
        },
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def goals(table: list[dict[str, Any]], slo: float) -> dict[str, Any]:
    ignored = [r for r in table if not r["honour_retry_after"] and r["clients"] in CLIENTS]
    peak = max(r["sluiceway"]["answered_per_s"] for r in ignored)
    their_peak = max(r["litserve"]["answered_per_s"] for r in ignored)
    top = ignored[-1]
    ours, theirs = top["sluiceway"], top["litserve"]
    swept = [r["sluiceway"] for r in table if r["clients"] in CLIENTS]
    refused = [r for r in swept if r["refusal_p99_ms"] is not None]
    refusal_p99 = max((r["refusal_p99_ms"] for r in refused), default=None)
    beyond = [r for r in table if r["clients"] == BEYOND]
    checks = {
        "peak_vs_litserve": peak / their_peak,
        "at_16_share_of_peak": ours["answered_per_s"] / peak,
        "at_16_p99_within_slo": ours["p99_ms"] <= slo * 1e3,
        "at_16_in_slo_vs_litserve": ours["within_slo_per_s"]
        / max(1e-9, theirs["within_slo_per_s"]),
        "refusal_p99_ms": refusal_p99,
    }
    lines = [
        f"peak answered/s: Sluiceway {peak:.1f}, LitServe {their_peak:.1f} "
        f"(ratio {checks['peak_vs_litserve']:.2f})",
        f"at {top['clients']} clients ignoring Retry-After: {ours['answered_per_s']:.1f}/s = "
        f"{checks['at_16_share_of_peak']:.0%} of Sluiceway's peak; p99 {ours['p99_ms']:.0f} ms "
        f"({'within' if checks['at_16_p99_within_slo'] else 'OVER'} the SLO); in SLO "
        f"{ours['within_slo_per_s']:.1f}/s vs LitServe {theirs['within_slo_per_s']:.1f}/s "
        f"(ratio {checks['at_16_in_slo_vs_litserve']:.2f})",
        f"refusals p99 (worst step of 1-{CLIENTS[-1]} clients): "
        + (
            f"{refusal_p99:.1f} ms (goal <= {REFUSAL_GOAL_S * 1e3:g} ms"
            f"{'' if refusal_p99 <= REFUSAL_GOAL_S * 1e3 else ': NOT met'})"
            if refusal_p99 is not None
            else "none refused, so not measured"
        ),
    ]
    for row in beyond:
        b = row["sluiceway"]
        lines.append(
            f"at {BEYOND} clients ignoring Retry-After: {b['refused']} refused, p50 / p99 "
            f"{_ms(b['refusal_p50_ms'])} / {_ms(b['refusal_p99_ms'])} ms as the clients saw "
            f"them ({_ms(b['refusal_in_ingress_p99_ms'])} ms p99 inside the ingress); "
            f"answered p99 {b['p99_ms']:.0f} ms"
        )
        controls = b["controls"]
        if controls:
            lines.append(
                "the same step's controls, one every 50 ms from the same client, p50 / p99: "
                + "; ".join(
                    f"{CONTROL_NAMES.get(name, name)} {c['p50_ms']:.1f} / {c['p99_ms']:.1f} ms"
                    + (
                        f" ({c['answered_otherwise']} answered otherwise, left out)"
                        if c.get("answered_otherwise")
                        else ""
                    )
                    for name, c in controls.items()
                )
            )
    return {"checks": checks, "lines": lines}


def plot(sweeps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sweeps), 2, figsize=(11, 4 * len(sweeps)), squeeze=False)
    for row, sweep in zip(axes, sweeps, strict=True):
        steps = sorted(
            (s for s in sweep["steps"] if not s["honour_retry_after"]), key=lambda s: s["clients"]
        )
        clients = [s["clients"] for s in steps]
        for system, style in (("sluiceway", "o-"), ("litserve", "s--")):
            row[0].plot(clients, [s[system]["answered_per_s"] for s in steps], style, label=system)
            row[1].plot(clients, [s[system]["p99_ms"] for s in steps], style, label=system)
        row[1].axhline(sweep["slo_s"] * 1e3, color="grey", linestyle=":", label="SLO")
        row[0].set_title(f"{sweep['model']}: answered/s (clients ignore Retry-After)")
        row[1].set_title(f"{sweep['model']}: p99 of answered requests, ms")
        for ax in row:
            ax.set_xscale("log", base=2)
            ax.set_xticks(clients, [str(c) for c in clients])
            ax.set_xlabel("closed-loop clients")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, required=True, help="wav2vec2-base artifacts")
    parser.add_argument("--tiny", type=Path, required=True, help="wav2vec2-tiny artifacts")
    parser.add_argument("--output", type=Path, default=Path("bench-results"))
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--load-seconds", type=float, default=40.0)
    parser.add_argument("--step-seconds", type=float, default=8.0)
    parser.add_argument("--sections", default="overhead,capacity,overload,sweep")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    args.output.mkdir(parents=True, exist_ok=True)
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
    report: dict[str, Any] = {}
    print("# bench-serve\n")
    try:
        if sections & {"overhead", "overload"}:
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
            report["overhead"] = section_overhead(base, args.artifacts, args.rounds)
        if "capacity" in sections:
            report["capacity"] = section_capacity(base, args.tiny, args.step_seconds)
        if "overload" in sections:
            section_overload(base, args.artifacts, report["overhead"], args.load_seconds)
        if "sweep" in sections:
            for app in ("noop", "relay"):
                serve.delete(app)
            sweeps = [
                section_sweep(
                    base, "wav2vec2-base", args.artifacts, 3.0, args.step_seconds, args.port + 1
                ),
                section_sweep(
                    base, "wav2vec2-tiny", args.tiny, 1.0, args.step_seconds, args.port + 1
                ),
            ]
            report["sweep"] = sweeps
            plot(sweeps, args.output / "serve-sweep.png")
            print(f"Plot: {args.output / 'serve-sweep.png'}\n")
    finally:
        (args.output / "serve.json").write_text(json.dumps(report, indent=2, default=str))
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
