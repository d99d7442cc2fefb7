"""The checkpoints the app knows, where to find them, and how users point them elsewhere.

Each checkpoint lists Hub repos tried in order. The stabilityai originals were removed from the Hub in
November 2025, so the community mirrors (same files) come first. Users can replace a list with their own
repo ids or local folders through `SD2APP_REPO_<KEY>` / `SD2APP_REVISION_<KEY>` environment variables or the
CLI (`--repo KEY=a/b,c/d`, `--revision KEY=REV`); `apply_overrides` is the one place that merges them.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from sd2_app.errors import InvalidRequest

ENV_REPO_PREFIX = "SD2APP_REPO_"
ENV_REVISION_PREFIX = "SD2APP_REVISION_"


@dataclass(frozen=True)
class CheckpointSpec:
    """One selectable checkpoint: the repos to try in order, and what it is good for."""

    key: str  # e.g. "sd21-base"; also the suffix of its environment variables
    label: str  # shown in the UI
    repos: tuple[str, ...]  # Hub repo ids or local folders, tried in turn
    revision: str | None  # pinned revision for Hub repos; None = the default branch
    resolution: int  # native output side in pixels (x4: output of a 128-pixel input)
    tasks: tuple[str, ...]  # "txt2img", "img2img", "inpaint", "depth", "upscale"
    original_file: str = ""  # Stability's checkpoint file (no extension): A1111 writes it as "Model: ..."

    @property
    def env_name(self) -> str:
        """`sd21-base` -> `SD2APP_REPO_SD21_BASE`."""
        return ENV_REPO_PREFIX + _env_suffix(self.key)


def _env_suffix(key: str) -> str:
    return key.upper().replace("-", "_")


def _mirrors(name: str) -> tuple[str, ...]:
    # The sd2-community mirrors hold the same files as the removed stabilityai repos.
    return (f"sd2-community/{name}", f"stabilityai/{name}")


TEXT_TASKS = ("txt2img", "img2img")  # what a text-to-image checkpoint can run

REGISTRY: dict[str, CheckpointSpec] = {
    spec.key: spec
    for spec in (
        CheckpointSpec("sd2-base", "SD 2.0 base (512)", _mirrors("stable-diffusion-2-base"), None, 512, TEXT_TASKS,
                       "512-base-ema"),
        CheckpointSpec("sd2", "SD 2.0 (768-v)", _mirrors("stable-diffusion-2"), None, 768, TEXT_TASKS,
                       "768-v-ema"),
        CheckpointSpec("sd21-base", "SD 2.1 base (512)", _mirrors("stable-diffusion-2-1-base"), None, 512,
                       TEXT_TASKS, "v2-1_512-ema-pruned"),
        # Its unet/config.json sets upcast_attention; sd2_app/nn/attention.py says when that makes attention fp32.
        CheckpointSpec("sd21", "SD 2.1 (768-v)", _mirrors("stable-diffusion-2-1"), None, 768, TEXT_TASKS,
                       "v2-1_768-ema-pruned"),
        CheckpointSpec(
            "sd2-inpainting", "SD 2 inpainting", _mirrors("stable-diffusion-2-inpainting"), None, 512, ("inpaint", "outpaint"),
            "512-inpainting-ema",
        ),
        CheckpointSpec("sd2-depth", "SD 2 depth", _mirrors("stable-diffusion-2-depth"), None, 512, ("depth",),
                       "512-depth-ema"),
        CheckpointSpec("x4-upscaler", "x4 upscaler", _mirrors("stable-diffusion-x4-upscaler"), None, 512,
                       ("upscale",), "x4-upscaler-ema"),
    )
}

# Tiny repos exist for these kinds (sd2_app.testing.tiny); SD 2.1 base has the same architecture and
# prediction type as SD 2.0 base, so it borrows that one.
_TINY_KIND = {"sd21-base": "sd2-base"}


def checkpoints_for_task(task: str, registry: Mapping[str, CheckpointSpec] = REGISTRY) -> list[str]:
    """Keys of the checkpoints that can run `task`, in registry order (the UI's dropdown)."""
    return [key for key, spec in registry.items() if task in spec.tasks]


def split_repos(value: str) -> tuple[str, ...]:
    """`"a/b, c/d"` -> `("a/b", "c/d")`; empty items are dropped. Local folders are kept as written."""
    repos = tuple(item.strip() for item in value.split(",") if item.strip())
    if not repos:
        raise InvalidRequest(f"empty repo list: {value!r}")
    return repos


def parse_assignments(items: Iterable[str], registry: Mapping[str, CheckpointSpec] = REGISTRY) -> dict[str, str]:
    """CLI values `KEY=VALUE` (e.g. `sd21-base=a/b,c/d`) -> {key: value}; unknown keys are refused."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise InvalidRequest(f"expected KEY=VALUE, got {item!r}")
        if key not in registry:
            raise InvalidRequest(f"unknown checkpoint {key!r}; known: {', '.join(registry)}")
        parsed[key] = value.strip()
    return parsed


def apply_overrides(
    registry: Mapping[str, CheckpointSpec] = REGISTRY,
    *,
    env: Mapping[str, str] | None = None,
    repos: Mapping[str, str | Iterable[str]] | None = None,
    revisions: Mapping[str, str | None] | None = None,
) -> dict[str, CheckpointSpec]:
    """A copy of `registry` with environment overrides applied, then CLI overrides (which win).

    `env` defaults to `os.environ`; `repos` maps a key to a comma-separated string or a sequence of repo ids
    or folders that replaces the whole list (so a user can also reorder or drop the mirrors); `revisions`
    maps a key to a revision (None or "" unpins). A local folder given as an override is used as is, with
    no revision.
    """
    env = os.environ if env is None else env
    for source in (repos or {}, revisions or {}):
        unknown = sorted(set(source) - set(registry))
        if unknown:
            raise InvalidRequest(f"unknown checkpoint(s) {', '.join(unknown)}; known: {', '.join(registry)}")
    result: dict[str, CheckpointSpec] = {}
    for key, spec in registry.items():
        suffix = _env_suffix(key)
        if env.get(ENV_REPO_PREFIX + suffix, "").strip():
            spec = replace(spec, repos=split_repos(env[ENV_REPO_PREFIX + suffix]))
        if ENV_REVISION_PREFIX + suffix in env:
            spec = replace(spec, revision=env[ENV_REVISION_PREFIX + suffix].strip() or None)
        if repos and key in repos:
            value = repos[key]
            spec = replace(spec, repos=split_repos(value) if isinstance(value, str) else split_repos(",".join(value)))
        if revisions and key in revisions:
            spec = replace(spec, revision=revisions[key] or None)
        result[key] = spec
    return result


def tiny_registry(
    folders: Mapping[str, Path], registry: Mapping[str, CheckpointSpec] = REGISTRY
) -> dict[str, CheckpointSpec]:
    """The registry with every checkpoint pointed at a tiny local repo (`sd2_app.testing.tiny` kinds)."""
    result: dict[str, CheckpointSpec] = {}
    for key, spec in registry.items():
        kind = _TINY_KIND.get(key, key)
        if kind not in folders:
            raise InvalidRequest(f"no tiny repo for checkpoint {key!r} (have: {', '.join(sorted(folders))})")
        result[key] = replace(spec, repos=(str(folders[kind]),), revision=None)
    return result


def checkpoint_named(name: str, registry: Mapping[str, CheckpointSpec]) -> str | None:
    """Our key for a checkpoint as a parameters text or an A1111 client names it, in any case and with or
    without A1111's " [hash]": our key or label ("Model: sd21"), or the original file's name with or without a
    folder and extension ("v2-1_768-ema-pruned", "SD2/v2-1_768-ema-pruned.safetensors [ad2a33c361]"); None when
    no checkpoint has that name."""
    title = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", name.strip()).lower()
    stem = re.sub(r"\.(safetensors|ckpt)$", "", title.replace("\\", "/").rsplit("/", 1)[-1])
    for key, spec in registry.items():
        if title in (key.lower(), spec.label.lower()) or (spec.original_file and stem == spec.original_file.lower()):
            return key
    return None


# The built-in checkpoint a single-file checkpoint (sd2_app/checkpoints/files.py) takes its configs, tokenizer
# and scheduler from, by kind: the file holds weights only (sd2_app/loading/single_file.py).
FILE_TEMPLATES = {"epsilon": "sd21-base", "v_prediction": "sd21", "inpaint": "sd2-inpainting"}


def is_checkpoint_file(repo: str) -> bool:
    """A repo entry that names a single-file checkpoint rather than a repo or folder."""
    return repo.lower().endswith(".safetensors")


def tokenizer_spec(spec: CheckpointSpec, registry: Mapping[str, CheckpointSpec]) -> CheckpointSpec:
    """Where `spec`'s tokenizer is read before its models load: its own repos, or for a single file its
    template's (every SD2 checkpoint has OpenCLIP's tokenizer)."""
    return registry[FILE_TEMPLATES["epsilon"]] if spec.repos and is_checkpoint_file(spec.repos[0]) else spec


def is_local(repo: str) -> bool:
    """A repo entry is a local folder when it exists on disk or looks like a path rather than `owner/name`."""
    if os.path.isdir(repo):
        return True
    return repo.startswith((".", "/", "~")) or repo.count("/") != 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--repo KEY=REPO[,REPO...]` and `--revision KEY=REV` flags shared by app.py and the CLI."""
    parser.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="KEY=REPO[,REPO...]",
        help="repo ids or local folders to try for a checkpoint, in order (repeatable; overrides SD2APP_REPO_<KEY>)",
    )
    parser.add_argument(
        "--revision", action="append", default=[], metavar="KEY=REV", help="pin a Hub revision (repeatable)"
    )


def registry_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> dict[str, CheckpointSpec]:
    """The registry with environment overrides, then the `add_arguments` flags, applied."""
    return apply_overrides(
        env=env, repos=parse_assignments(args.repo or []), revisions=parse_assignments(args.revision or [])
    )
