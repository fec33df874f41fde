"""How far int8 moves a text classifier over several seeds: the spread the int8 gates of
``optimize.text.CLASSIFIER_INT8`` are set from.

    python scripts/gate_spread.py --seeds 5

Builds all-MiniLM-L6-v2 (the real checkpoint) with a head fitted on the built-in labelled
sentences, once per seed of the head's first weights, fp32 and int8, with the int8 gates
off so that every seed is measured; prints each seed's top-1 agreement of int8 with the
fp32 model, the mean cosine of their logits and the largest logit error, then the
spread of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimize.manifest import Fidelity, Precision
from optimize.text import CLASSIFIER_INT8, TextConfig, build_text_artifacts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="heads to fit (seeds 0..N-1)")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error(f"--seeds {args.seeds}: a spread needs at least 2 seeds")
    off = {"min_top1_agreement": 0.0, "min_logit_cosine": 0.0, "max_abs_error": 1e9}
    rows = []
    print("| seed | int8 top-1 agreement | mean logit cosine | max logit error | accuracy |")
    print("|---|---|---|---|---|")
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            built = build_text_artifacts(
                TextConfig(
                    model=args.model,
                    output=Path(tmp) / "classifier",
                    task="classify",
                    latency_runs=5,
                    gate_overrides={Precision.INT8: off},
                    seed=seed,
                )
            )
        int8 = built[-1]
        fidelity = int8.fidelity
        assert isinstance(fidelity, Fidelity)
        rows.append((fidelity.top1_agreement, fidelity.logit_cosine, fidelity.max_abs_error))
        accuracy = [m.task.accuracy if m.task else float("nan") for m in built]
        print(
            f"| {seed} | {fidelity.top1_agreement:.3f} ({fidelity.clips} sentences) | "
            f"{fidelity.logit_cosine:.4f} | {fidelity.max_abs_error:.2f} | "
            f"fp32 {accuracy[0]:.3f}, int8 {accuracy[1]:.3f} |",
            flush=True,
        )
    agreements, cosines, errors = (sorted(column) for column in zip(*rows, strict=True))
    print(
        f"\n{args.seeds} seeds. top-1 agreement: min {agreements[0]:.3f}, median "
        f"{statistics.median(agreements):.3f}; mean logit cosine: min {cosines[0]:.4f}, "
        f"median {statistics.median(cosines):.4f}; max logit error: max {errors[-1]:.2f}, "
        f"median {statistics.median(errors):.2f}. Gates now: {CLASSIFIER_INT8}"
    )


if __name__ == "__main__":
    main()
