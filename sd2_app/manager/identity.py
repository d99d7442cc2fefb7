"""Content identities for components, so byte-identical weights are loaded once and shared.

A component's identity is a sha256 over the sha256 of each file that defines it (its config and the one
weight file the loader picks), never its name: the SD2 repos share one text encoder and, except for the
x4 upscaler, one VAE. Per file, the cheapest trustworthy source wins:
1. a Hub cache blob, whose name is the file's sha256 for LFS files;
2. the Hub's own metadata (`lfs.sha256` from `HfApi.get_paths_info`), when online;
3. hashing the file here, cached by path + size + mtime (in memory, and in a JSON file if given).
"""

from __future__ import annotations

import hashlib
import json
import os
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path

from sd2_app.fork_safety import renew_in_forked_child

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 8 * 2**20


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """sha256 of local files keyed by (resolved path, size, mtime); persisted to `path` when given."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        renew_in_forked_child(self, _lock=threading.Lock)  # a ZeroGPU worker (forked) loads, and hashes, too
        self._entries: dict[str, str] = {}
        self.computed = 0  # files hashed here (not served from the cache): lets tests check the caching
        if path is not None and path.is_file():
            try:
                self._entries = dict(json.loads(path.read_text()))
            except (OSError, ValueError) as e:
                logger.warning("ignoring unreadable hash cache %s (%s)", path, e)

    def sha256(self, path: Path) -> str:
        """The file's sha256, computed at most once per (path, size, mtime)."""
        real = path.resolve()
        stat = real.stat()
        cache_key = f"{real}|{stat.st_size}|{stat.st_mtime_ns}"
        with self._lock:
            known = self._entries.get(cache_key)
        if known is not None:
            return known
        value = _hash_file(real)
        with self._lock:
            self.computed += 1
            self._entries[cache_key] = value
            self._save()
        return value

    def _save(self) -> None:
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._entries))
            tmp.replace(self._path)
        except OSError as e:
            logger.warning("could not write hash cache %s (%s)", self._path, e)


def _cache_blob_sha256(path: Path) -> str | None:
    """The sha256 a Hub cache symlink encodes in its blob name (LFS files only)."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and _SHA256.fullmatch(target.name):
        return target.name
    return None


def hub_sha256s(repo: str, revision: str | None, paths: Sequence[str]) -> dict[str, str]:
    """{repo path: sha256} for the LFS files among `paths`, from the Hub's metadata; {} when unreachable.

    huggingface_hub reads HF_TOKEN / HF_HUB_OFFLINE itself; we never touch the token.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        return {}
    failures: tuple[type[BaseException], ...] = (HfHubHTTPError, OfflineModeIsEnabled, OSError)
    try:
        import httpx

        failures += (httpx.HTTPError,)
    except ImportError:  # older huggingface_hub uses requests, whose errors are OSErrors
        pass
    try:
        infos = HfApi().get_paths_info(repo, list(paths), revision=revision)
    except failures as e:
        logger.info("no Hub metadata for %s (%s); hashing locally", repo, e)
        return {}
    found: dict[str, str] = {}
    for info in infos:
        lfs = getattr(info, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        if sha:
            found[info.path] = sha
    return found


def component_identity(
    folder: Path,
    files: Sequence[str],
    cache: HashCache,
    *,
    repo: str | None = None,
    revision: str | None = None,
) -> str:
    """Identity of a component defined by `files` (repo-relative paths inside `folder`).

    `repo` is the Hub repo id when `folder` is its snapshot (None for local folders): it allows the Hub
    metadata lookup for files whose cache blob does not reveal the hash.
    """
    per_file: dict[str, str] = {}
    missing: list[str] = []
    for name in files:
        sha = _cache_blob_sha256(folder / name)
        if sha is None:
            missing.append(name)
        else:
            per_file[name] = sha
    large = [name for name in missing if name.endswith(".safetensors")]  # small files are cheap to hash here
    if repo is not None and large:
        per_file.update(hub_sha256s(repo, revision, large))
    for name in files:
        if name not in per_file:
            per_file[name] = cache.sha256(folder / name)
    # Identity ignores folder and component names: only which file plays which role and its bytes.
    roles = sorted(f"{Path(name).name}={per_file[name]}" for name in files)
    return hashlib.sha256("\n".join(roles).encode()).hexdigest()


def default_cache_dir() -> Path:
    """$SD2APP_CACHE, else ~/.cache/sd2-app: tiny repos and the local hash cache live here."""
    return Path(os.environ.get("SD2APP_CACHE") or Path.home() / ".cache" / "sd2-app").expanduser()
