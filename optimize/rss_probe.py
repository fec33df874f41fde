"""A process that loads one model, runs it three times and prints its peak RSS as JSON.

Run as ``python -m optimize.rss_probe {onnx|torch} PATH --threads N --seconds S`` (audio)
or ``... onnx PATH --inputs FILE.npz`` (any model, on those arrays); used by
``optimize.measure.peak_rss`` so that each number is one process's own, nothing shared.
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["onnx", "torch"])
    parser.add_argument("path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--low-memory", action="store_true")
    parser.add_argument("--inputs", help="an .npz of the model's inputs (instead of audio)")
    args = parser.parse_args()
    clip = np.random.default_rng(0).standard_normal((1, round(args.seconds * SAMPLE_RATE)))
    clip = (0.1 * clip).astype(np.float32)
    if args.kind == "onnx":
        from optimize.runtime import open_session

        session = open_session(Path(args.path), threads=args.threads, low_memory=args.low_memory)
        if args.inputs:
            with np.load(args.inputs, allow_pickle=False) as data:
                feeds = {key: data[key] for key in data.files}
        else:
            feeds = {session.get_inputs()[0].name: clip}
        for _ in range(3):
            session.run(None, feeds)
    else:
        import torch
        from transformers import AutoModelForAudioClassification

        torch.set_num_threads(args.threads)
        model = AutoModelForAudioClassification.from_pretrained(args.path, local_files_only=True)
        model.eval()
        with torch.inference_mode():
            for _ in range(3):
                model(torch.from_numpy(clip))
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))


def peak_rss_bytes() -> int:
    """This process's peak RSS.

    Linux keeps ``ru_maxrss`` across fork and exec, so a child started by a big parent
    would report the parent's peak; ``VmHWM`` belongs to this process's own address space.
    """
    try:
        with Path("/proc/self/status").open(encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    main()
