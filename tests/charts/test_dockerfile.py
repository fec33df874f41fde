"""The serving image's Dockerfile, read as text (no Docker engine is involved): what a user of
the chart relies on when they pull the image that `image.repository` names."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
import shlex
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VALUES = ROOT / "charts" / "sluiceway" / "values.yaml"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, `\\` continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def base_image() -> str:
    """The FROM image with `${ARG}`s expanded from the ARGs declared before it."""
    args: dict[str, str] = {}
    for keyword, rest in parsed():
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            image = rest.split()[0]
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], image)
    raise AssertionError("Dockerfile has no FROM")


def runs() -> list[str]:
    return [rest for keyword, rest in parsed() if keyword == "RUN"]


def test_base_image_is_the_official_ray_image_with_python_311_and_cuda() -> None:
    assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py311-cu\d+", base_image()), base_image()


def test_ray_version_matches_the_chart_and_the_venv() -> None:
    image_version = base_image().split(":")[1].split("-")[0]
    chart_version = yaml.safe_load(VALUES.read_text(encoding="utf-8"))["rayVersion"]
    assert image_version == str(chart_version), "FROM vs charts/sluiceway/values.yaml rayVersion"
    assert image_version == importlib.metadata.version("ray"), "FROM vs ray in the venv"


def test_installs_the_serving_extra_and_never_optimize_or_torch() -> None:
    extras = [
        {e.strip() for e in m[1].split(",")}
        for run in runs()
        for m in re.finditer(r"\.\[([^\]]*)\]", run)
    ]
    assert any("serving" in found for found in extras), runs()
    assert not any("optimize" in found for found in extras), runs()
    assert not any(re.search(r"\btorch\b", run) for run in runs()), runs()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    serving = pyproject["project"]["optional-dependencies"]["serving"]
    assert not [dep for dep in serving if re.match(r"(torch|transformers)\b", dep)], serving


def test_final_user_is_not_root() -> None:
    users = [rest for keyword, rest in parsed() if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_artifact_cache_is_made_and_owned_by_the_ray_user() -> None:
    env = " ".join(rest for keyword, rest in parsed() if keyword == "ENV")
    cache = re.search(r"SLUICEWAY_ARTIFACT_CACHE=(\S+)", env)
    assert cache, env
    assert re.search(r"RAY_USAGE_STATS_ENABLED=0\b", env), env
    assert any(
        "mkdir" in run and cache[1] in run and re.search(r"chown .*\b1000\b", run) for run in runs()
    ), runs()


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [rest for keyword, rest in parsed() if keyword in {"COPY", "ADD"}]
    assert copies
    for rest in copies:
        words = shlex.split(rest)
        if any(w.startswith("--from") for w in words):
            continue  # from another build stage or image, not from the repository
        for source in [w for w in words if not w.startswith("--")][:-1]:
            path = source.rstrip("/")
            assert (ROOT / path).exists(), f"COPY {source}: no such path in the repository"
            assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), (
                f"COPY {source}: excluded by .dockerignore"
            )
