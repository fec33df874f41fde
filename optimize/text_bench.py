"""`make bench-text`: a text encoder's artifacts beside PyTorch eager, in one interleaved run.

    python -m optimize.text_bench --artifacts artifacts/all-minilm-l6-v2 [--tokens 128]

Batch 1 at ``--tokens`` tokens (texts padded to it), ``--threads`` threads for every
runner, each round running every runner once in a rotating order; then each artifact's
embeddings against eager fp32 on ``--sentences`` real sentences. Prints a markdown table
and the goals as ratios, and writes ``bench-text.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimize.manifest import MODEL_FILE, read_manifest
from optimize.runtime import open_session
from optimize.text import (
    encode,
    load_text_source,
    near_copy,
    onnx_embeddings,
    ranking_agreement,
    sentences,
    text_latencies,
    torch_embeddings,
)

EAGER = "pytorch-eager-fp32"
GOALS = (
    ("int8 p99 / PyTorch eager fp32 p99", 0.5),
    ("int8 size / fp32 size", 0.30),
)
MIN_MEAN_COSINE = 0.99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--output", type=Path, default=Path("bench-results"))
    args = parser.parse_args()

    manifests = {
        p.name: read_manifest(p)
        for p in sorted(args.artifacts.iterdir())
        if (p / "manifest.json").is_file()
    }
    source = load_text_source(next(iter(manifests.values())).source.model)
    torch.set_num_threads(args.threads)
    texts = sentences(args.sentences)
    feeds = encode(source.tokenizer, texts, args.tokens)
    padded = encode(source.tokenizer, texts[:16], args.tokens, pad_to=args.tokens)
    sessions = {
        n: open_session(args.artifacts / n / MODEL_FILE, threads=args.threads)
        for n in manifests
        if n != "fp16"
    }

    @torch.inference_mode()
    def eager(row: dict[str, Any]) -> object:
        return source.model(**{k: torch.from_numpy(v) for k, v in row.items()})

    runners = {EAGER: eager} | {n: (lambda row, s=s: s.run(None, row)) for n, s in sessions.items()}
    samples = text_latencies(runners, padded, args.runs)
    reference = torch_embeddings(source, feeds)
    close = encode(source.tokenizer, [near_copy(t) for t in texts], args.tokens)
    rows = {}
    for name in runners:
        if name == EAGER:
            vectors, size = (
                reference,
                sum(p.numel() * p.element_size() for p in source.model.parameters()),
            )
            ranking = ranking_agreement(reference, torch_embeddings(source, close))
        else:
            vectors = onnx_embeddings(sessions[name], feeds)
            size = (args.artifacts / name / MODEL_FILE).stat().st_size
            ranking = ranking_agreement(vectors, onnx_embeddings(sessions[name], close))
        cos = (reference * vectors).sum(1) / (
            np.linalg.norm(reference, axis=1) * np.linalg.norm(vectors, axis=1)
        )
        rows[name] = {
            "p50_ms": float(np.percentile(samples[name], 50) * 1e3),
            "p99_ms": float(np.percentile(samples[name], 99) * 1e3),
            "size_mb": size / 1e6,
            "mean_cosine_to_eager": float(cos.mean()),
            "min_cosine_to_eager": float(cos.min()),
            "ranking_agreement": ranking,
        }
    goals = []
    if "int8" in rows and "fp32" in rows:
        ratios = {
            GOALS[0][0]: rows["int8"]["p99_ms"] / rows[EAGER]["p99_ms"],
            GOALS[1][0]: rows["int8"]["size_mb"] / rows["fp32"]["size_mb"],
        }
        goals = [(name, ratios[name], limit, ratios[name] <= limit) for name, limit in GOALS]
        cosine = rows["int8"]["mean_cosine_to_eager"]
        goals.append(
            ("int8 mean cosine to eager fp32", cosine, MIN_MEAN_COSINE, cosine >= MIN_MEAN_COSINE)
        )
    lines = [
        f"# bench-text: {args.artifacts} ({len(texts)} real sentences, {args.tokens} tokens, "
        f"batch 1, {args.threads} threads, {args.runs} interleaved rounds)",
        "",
        "| runner | p50 ms | p99 ms | size MB | mean cosine to eager | min cosine "
        "| ranking agreement |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['size_mb']:.1f} | "
            f"{r['mean_cosine_to_eager']:.4f} | {r['min_cosine_to_eager']:.4f} | "
            f"{r['ranking_agreement']:.3f} |"
        )
    lines += ["", "| goal | value | limit | met |", "| --- | --- | --- | --- |"]
    for name, value, limit, met in goals:
        lines.append(f"| {name} | {value:.3f} | {limit:g} | {'yes' if met else 'NO'} |")
    report = "\n".join(lines)
    print(report)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench-text.md").write_text(report + "\n")
    (args.output / "bench-text.json").write_text(
        json.dumps({"rows": rows, "goals": goals}, indent=2)
    )


if __name__ == "__main__":
    main()
