"""The serving image's Python, made here by the Dockerfile's own instructions.

No Docker engine runs on the development machines, so the image cannot be built; what the
image's Python holds can be. ``build_image_python`` reads the Dockerfile, copies what its
``COPY`` lines copy into a staging directory, and runs its ``RUN pip install`` lines there
with a fresh virtual environment's pip: the packages a pod imports are exactly those the
Dockerfile installs, and a module the image lacks fails to import here as it would there.
The base image's own packages (Ray's) are not there beyond what the pip line asks for, so
this Python holds at most what the image holds. ``ENV`` lines give the image's environment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import ImageBuildFailed

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
# Where `make install` puts it: the boot's pods run its bin/ first on PATH, as the image's
# user (uid 1000), so it must lie where that user can reach and no pod mounts over (/tmp,
# where a checkout may lie); a virtual environment cannot move, so it is made there.
DEFAULT_PREFIX = Path(
    os.environ.get("SLUICEWAY_IMAGE_PYTHON")
    or (
        "/opt/sluiceway/image-python"
        if os.geteuid() == 0
        else Path.home() / ".cache" / "sluiceway" / "image-python"
    )
)
PIP_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class ImageRecipe:
    """What the Dockerfile does that shapes the image's Python and environment."""

    args: dict[str, str]
    env: dict[str, str]
    copies: tuple[tuple[tuple[str, ...], str], ...]  # (sources, destination)
    pip_lines: tuple[tuple[str, ...], ...]  # argv after `pip`


def read_dockerfile(path: Path = DOCKERFILE) -> ImageRecipe:
    """The ARG defaults, ENV, COPY and ``RUN pip install`` lines of a Dockerfile."""
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    copies: list[tuple[tuple[str, ...], str]] = []
    pip_lines: list[tuple[str, ...]] = []
    for number, line in _instructions(path):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG":
            name, _, default = rest.strip().partition("=")
            if default or name not in args:
                args[name] = _substitute(default, args)
        elif word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = _substitute(value, {**args, **env})
        elif word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            copies.append((tuple(parts[:-1]), parts[-1]))
        elif word == "RUN":
            command = shlex.split(_substitute(rest, {**args, **env}))
            if command[:2] == ["pip", "install"]:
                pip_lines.append(tuple(command[1:]))
            else:
                logger.info("Dockerfile line %d: not a pip line, not run here: %s", number, rest)
        elif word not in ("FROM", "USER", "WORKDIR"):
            raise ImageBuildFailed(
                f"{path}:{number}: {word} is not an instruction this reader follows "
                "(ARG, ENV, COPY, RUN pip install, FROM, USER, WORKDIR): extend deploy/image.py"
            )
    if not pip_lines:
        raise ImageBuildFailed(f"{path} has no `RUN pip install` line: nothing installs serving")
    return ImageRecipe(args, env, tuple(copies), tuple(pip_lines))


def _instructions(path: Path) -> list[tuple[int, str]]:
    """Logical lines (continuations joined, comments dropped) with their first line number."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def _substitute(text: str, names: dict[str, str]) -> str:
    for key, value in names.items():
        text = text.replace(f"${{{key}}}", value).replace(f"${key}", value)
    return text


def recipe_digest(recipe: ImageRecipe, root: Path = REPO_ROOT) -> str:
    """A digest of the pip lines and every file the COPY lines copy: equal digests, equal
    Python."""
    digest = hashlib.sha256(repr((recipe.pip_lines, recipe.copies)).encode())
    for sources, _ in recipe.copies:
        for source in sources:
            base = root / source
            files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
            for file in files:
                if "__pycache__" in file.parts:
                    continue
                digest.update(str(file.relative_to(root)).encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()


def build_image_python(
    prefix: Path = DEFAULT_PREFIX, *, dockerfile: Path = DOCKERFILE, python: str = sys.executable
) -> Path:
    """The image's Python at ``prefix`` (a virtual environment), made by the Dockerfile's
    pip lines over a copy of what it COPYs; returns its ``bin`` directory. Nothing is done
    when the Dockerfile and the copied files are as they were at the last build."""
    recipe = read_dockerfile(dockerfile)
    root = dockerfile.parent
    stamp = prefix / ".recipe-sha256"
    digest = recipe_digest(recipe, root)
    bin_dir = prefix / "bin"
    if stamp.is_file() and stamp.read_text().strip() == digest and (bin_dir / "ray").is_file():
        return bin_dir
    if not (bin_dir / "pip").is_file():
        logger.info("creating the image's Python at %s", prefix)
        venv.EnvBuilder(with_pip=True, clear=True).create(prefix)
    staging = prefix / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for sources, destination in recipe.copies:
        into_dir = destination.endswith("/") or destination in (".", "./") or len(sources) > 1
        for source in sources:
            origin = root / source
            if not origin.exists():
                raise ImageBuildFailed(f"{dockerfile}: COPY {source}: no such file under {root}")
            target = staging / destination
            if origin.is_dir():  # Docker copies a directory's contents
                shutil.copytree(
                    origin, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
                )
            else:
                if into_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    target = target / origin.name
                shutil.copy2(origin, target)
    for line in recipe.pip_lines:
        # pip's cache flags change where wheels come from, never what is installed
        line = tuple(arg for arg in line if arg != "--no-cache-dir")
        argv = [str(bin_dir / "python"), "-m", "pip", *line]
        logger.info("image pip line: %s", shlex.join(line))
        done = subprocess.run(
            argv,
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            check=False,
        )
        if done.returncode != 0:
            raise ImageBuildFailed(
                f"the Dockerfile's `pip {shlex.join(line)}` failed ({done.returncode}): "
                f"{done.stderr.strip()[-2000:]}"
            )
    shutil.rmtree(staging, ignore_errors=True)
    stamp.write_text(digest + "\n")
    return bin_dir


def main() -> None:
    """`python -m deploy.image`: make (or confirm) the image's Python; print its bin/."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    print(build_image_python())


if __name__ == "__main__":
    main()
