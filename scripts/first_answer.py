"""Time a command that starts Sluiceway until its first 200 from ``:classify``.

    python scripts/first_answer.py --cwd /tmp/fresh-clone -- make serve

Starts the command in its own process group, posts a 3 s clip to
``/v1/models/{model}:classify`` every second until one answers 200, prints the seconds
from start to that answer, then stops the command with Ctrl-C (SIGINT to its group) and
waits for it. Standard library only: it runs before ``make install`` has made a venv.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def _clip(seconds: float = 3.0, rate: int = 16_000) -> bytes:
    """A 440 Hz tone as 16-bit PCM (what ``audio/l16;rate=16000`` carries)."""
    count = int(seconds * rate)
    samples = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(count))
    return b"".join(struct.pack("<h", s) for s in samples)


def _answered(url: str, body: bytes) -> bool:
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "audio/l16;rate=16000"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cwd", default=".", help="where to run the command")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="wav2vec2-base", help="the model's name in the URL")
    parser.add_argument("--deadline", type=float, default=3600, help="give up after (s)")
    parser.add_argument("--log", default="first-answer.log", help="the command's output")
    parser.add_argument("command", nargs="+", help="e.g. -- make serve")
    args = parser.parse_args()

    url = f"http://127.0.0.1:{args.port}/v1/models/{args.model}:classify"
    body = _clip()
    start = time.monotonic()
    with Path(args.log).open("w") as log:
        proc = subprocess.Popen(
            args.command, cwd=args.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    elapsed = None
    try:
        while time.monotonic() - start < args.deadline and proc.poll() is None:
            if _answered(url, body):
                elapsed = time.monotonic() - start
                break
            time.sleep(1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    if elapsed is None:
        print(f"no 200 from {url} (command exit status {proc.poll()}; see {args.log})")
        return 1
    print(f"first 200 from {url} after {elapsed:.1f} s ({' '.join(args.command)} in {args.cwd})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
