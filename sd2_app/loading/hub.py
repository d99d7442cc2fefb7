"""Repo id or folder -> a local folder in the diffusers Hub layout, holding only the files we need.

The SD2 repos also carry 3.5-5.7 GB single-file LDM checkpoints at the root and `.bin` twins of every
weight file, so we never download a whole repo: we list the component subfolders, pick one safetensors
file per component (the `fp16` variant when the repo has it) and download exactly those names.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

from sd2_app.errors import LoadError

logger = logging.getLogger(__name__)

# Components whose subfolder holds weights, and the stem of their weight file.
WEIGHT_STEMS = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "depth_estimator": "model",
}
# Files a component cannot do without (besides its weights).
REQUIRED_FILES = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "depth_estimator": ("config.json",),
    "tokenizer": ("vocab.json", "merges.txt"),
    "scheduler": ("scheduler_config.json",),
    "low_res_scheduler": ("scheduler_config.json",),
    "feature_extractor": ("preprocessor_config.json",),
}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
FP16_INFIX = ".fp16."
PICKLE_REASON = "pickle checkpoints are not loaded; safetensors only"

LoadProgressFn = Callable[[str], None]  # one line of loading progress ("sd21: loading unet ...")


def _is_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return value in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _check_components(components: Iterable[str]) -> list[str]:
    names = list(components)
    unknown = [c for c in names if c not in REQUIRED_FILES]
    if unknown:
        raise ValueError(f"unknown components {unknown}; known: {sorted(REQUIRED_FILES)}")
    return names


def allow_patterns(components: Sequence[str]) -> list[str]:
    """Broad patterns for the listing step: model_index.json plus small files and safetensors of each subfolder.

    Every pattern starts with a component folder, so the root LDM checkpoints never match.
    """
    patterns = ["model_index.json"]
    for component in _check_components(components):
        patterns += [f"{component}/*.json", f"{component}/*.txt"]
        if component in WEIGHT_STEMS:
            patterns.append(f"{component}/*.safetensors")
    return patterns


def _direct_children(listing: Iterable[str], component: str) -> list[str]:
    """Files directly inside `component/` (skips e.g. the x4 unet/.ipynb_checkpoints/ copy)."""
    return sorted(f for f in listing if PurePosixPath(f).parent == PurePosixPath(component))


def choose_weights(listing: Iterable[str], component: str, repo: str) -> str:
    """The one weight file to load for `component`: the fp16 variant if listed, else full precision."""
    children = _direct_children(listing, component)
    tensors = [f for f in children if f.endswith(".safetensors")]
    fp16 = [f for f in tensors if FP16_INFIX in PurePosixPath(f).name]
    full = [f for f in tensors if f not in fp16]
    stem = WEIGHT_STEMS[component]
    for candidates in (fp16, full):
        preferred = [f for f in candidates if PurePosixPath(f).name.startswith(stem + ".")]
        if preferred:
            return preferred[0]
    pickles = [f for f in children if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise LoadError(repo, pickles[0], PICKLE_REASON)
    raise LoadError(repo, f"{component}/{stem}.safetensors", "not found (no safetensors weights)")


def select_files(listing: Iterable[str], components: Sequence[str], repo: str) -> list[str]:
    """Exact repo paths to fetch for `components`, given all file names the repo (or folder) has.

    Raises LoadError for a missing required file or a component with pickle weights only.
    """
    listing = sorted(set(listing))
    if "model_index.json" not in listing:
        raise LoadError(repo, "model_index.json", "not found")
    chosen = ["model_index.json"]
    for component in _check_components(components):
        children = _direct_children(listing, component)
        for name in REQUIRED_FILES[component]:
            if f"{component}/{name}" not in children:
                raise LoadError(repo, f"{component}/{name}", "not found")
        chosen += [f for f in children if f.endswith((".json", ".txt"))]
        if component in WEIGHT_STEMS:
            chosen.append(choose_weights(listing, component, repo))
    return chosen


def matches_any(path: str, patterns: Sequence[str]) -> bool:
    """The matching rule huggingface_hub applies to allow_patterns (fnmatch, where `*` also crosses `/`)."""
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def _local_listing(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()]


def repo_label(folder: str | Path) -> str:
    """The name to put in errors: the repo id for a Hub cache snapshot, else the folder itself."""
    for part in reversed(Path(folder).parts):
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
    return str(folder)


def _resolve_folder(folder: Path, components: Sequence[str], label: str) -> Path:
    if not folder.is_dir():
        raise LoadError(label, None, "not found (not a folder)")
    select_files(_local_listing(folder), components, label)
    return folder


def _byte_reporter(on_progress: LoadProgressFn, repo: str, total: int, every_s: float = 1.0) -> type:
    """A tqdm class for snapshot_download that turns its byte counts into throttled progress messages.

    huggingface_hub aggregates every file's bytes into bars made from this class (unit "B"); we count the
    bytes written ("Reconstructing"/plain downloads), not the separate network-transfer bar, so nothing is
    counted twice. Messages come at most once per `every_s` seconds, plus one when a bar closes.
    """
    import time

    from tqdm.auto import tqdm

    class _Reporter(tqdm):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self._sd2_done = 0
            self._sd2_last = 0.0
            self._sd2_counts = kwargs.get("unit") == "B" and not str(kwargs.get("desc", "")).startswith(
                "Downloading bytes")

        def update(self, n: float | None = 1) -> bool | None:
            if self._sd2_counts and n:
                self._sd2_done += int(n)
                now = time.monotonic()
                if now - self._sd2_last >= every_s:
                    self._sd2_last = now
                    self._sd2_report()
            return super().update(n)

        def close(self) -> None:
            if self._sd2_counts and self._sd2_done:
                self._sd2_report()
                self._sd2_counts = False
            super().close()

        def _sd2_report(self) -> None:
            on_progress(f"{repo}: downloaded {self._sd2_done / 2**30:.2f} of {total / 2**30:.2f} GiB")

    return _Reporter


def _snapshot(repo: str, revision: str | None, cache_dir: Path | None, **kwargs: object) -> object:
    """snapshot_download with its errors turned into LoadError naming the repo."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        DryRunError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = repo if revision is None else f"{repo}@{revision}"
    try:
        return snapshot_download(repo, revision=revision, cache_dir=cache_dir, **kwargs)
    except GatedRepoError as e:
        raise LoadError(where, None, "gated repo: accept its licence on the Hub and log in") from e
    except RevisionNotFoundError as e:
        raise LoadError(where, None, "revision not found on the Hub") from e
    except RepositoryNotFoundError as e:
        raise LoadError(where, None, "repo not found on the Hub (or private)") from e
    except (LocalEntryNotFoundError, DryRunError) as e:
        raise LoadError(where, None, "offline or Hub unreachable, and not in the local cache") from e
    except HfHubHTTPError as e:
        raise LoadError(where, None, f"Hub error: {e}") from e


def resolve_repo(
    repo_or_dir: str | Path,
    components: Sequence[str],
    *,
    revision: str | None = None,
    on_progress: LoadProgressFn | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """A local folder in Hub layout holding `components` (subfolder names such as "unet", "tokenizer").

    A local folder is used as is (after checking the files are there). A repo id is listed first, then
    exactly the chosen files are downloaded (fp16 variant first); offline, the cached snapshot is used.
    """
    components = _check_components(components)
    path = Path(repo_or_dir).expanduser()
    if isinstance(repo_or_dir, Path) or path.is_dir() or str(repo_or_dir).startswith((".", "/", "~")):
        return _resolve_folder(path, components, str(path))
    repo = str(repo_or_dir)
    patterns = allow_patterns(components)
    if _is_offline():
        logger.info("offline: looking for %s in the local cache", repo)
        snapshot = Path(str(_snapshot(repo, revision, cache_dir, allow_patterns=patterns, local_files_only=True)))
        try:
            return _resolve_folder(snapshot, components, repo)
        except LoadError as e:
            raise LoadError(e.repo, e.file, f"{e.reason} in the local cache (offline)") from e
    infos = _snapshot(repo, revision, cache_dir, allow_patterns=patterns, dry_run=True)
    wanted = select_files([info.filename for info in infos], components, repo)  # type: ignore[attr-defined]
    assert all(matches_any(f, patterns) for f in wanted)
    size = sum(info.file_size or 0 for info in infos if info.filename in wanted and info.will_download)  # type: ignore[attr-defined]
    message = f"{repo}: fetching {len(wanted)} files ({size / 2**30:.2f} GiB to download)"
    logger.info(message)
    if on_progress is not None:
        on_progress(message)
    progress = {} if on_progress is None else {"tqdm_class": _byte_reporter(on_progress, repo, size)}
    snapshot = Path(str(_snapshot(repo, revision, cache_dir, allow_patterns=wanted, **progress)))
    return _resolve_folder(snapshot, components, repo)


# What a single-file checkpoint takes from the repo of its kind (sd2_app/loading/single_file.py): every config,
# the tokenizer and the scheduler, no weights.
CONFIG_PATTERNS = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                   "tokenizer/*", "scheduler/*")
_CONFIG_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def resolve_configs(repo_or_dir: str | Path, *, revision: str | None = None, cache_dir: Path | None = None) -> Path:
    """A local folder holding `CONFIG_PATTERNS` of a repo id or folder (for a repo, only those files are
    downloaded; offline, the cached ones are used); LoadError naming the first missing file."""
    path = Path(repo_or_dir).expanduser()
    if path.is_dir() or str(repo_or_dir).startswith((".", "/", "~")):
        folder, label = path, str(path)
    else:
        label = str(repo_or_dir)
        options = {"local_files_only": True} if _is_offline() else {}
        folder = Path(str(_snapshot(label, revision, cache_dir, allow_patterns=list(CONFIG_PATTERNS), **options)))
    if not folder.is_dir():
        raise LoadError(label, None, "not found (not a folder)")
    listing = _local_listing(folder)
    for required in ["model_index.json", *(f"{c}/{name}" for c in _CONFIG_COMPONENTS for name in REQUIRED_FILES[c])]:
        if required not in listing:
            raise LoadError(label, required, "not found")
    return folder
