"""Which Hub repos users may pick besides the registry's checkpoints: none, unless the operator lists them.

A repo id typed by a user would make the server download and run arbitrary weights, so custom repos are off
by default. The operator opts in per repo with `SD2APP_ALLOWED_REPOS="owner/name,owner/other"`; each allowed
repo becomes one more text-to-image / image-to-image checkpoint whose key is the repo id itself. Only
`owner/name` ids are accepted (never folders), so nothing a user sends can name a path on the server. A Ray
Serve deployment lists them in its settings instead (`allowed_repos`, sd2_app/serve/config.py), read by the
front end and the replicas alike.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping

from sd2_app.checkpoints.catalog import TEXT_TASKS, CheckpointSpec

log = logging.getLogger(__name__)

ENV_ALLOWED_REPOS = "SD2APP_ALLOWED_REPOS"
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
CUSTOM_RESOLUTION = 512  # a custom repo's native side is unknown before loading; 512 is SD2-base's


def allowed_repos(env: Mapping[str, str] | None = None) -> list[str]:
    """The operator's list from `SD2APP_ALLOWED_REPOS` (comma separated, as written; `custom_specs` checks it)."""
    value = (os.environ if env is None else env).get(ENV_ALLOWED_REPOS, "")
    return [item.strip() for item in value.split(",") if item.strip()]


def is_repo_id(repo: str) -> bool:
    """`owner/name`, nothing that could name a folder on the server."""
    return REPO_ID.fullmatch(repo) is not None and ".." not in repo


def custom_specs(repos: Iterable[str], registry: Mapping[str, CheckpointSpec]) -> dict[str, CheckpointSpec]:
    """One checkpoint per allowed repo id (its own key), skipping keys the registry already has."""
    specs: dict[str, CheckpointSpec] = {}
    for repo in repos:
        if not is_repo_id(repo):
            log.warning("ignoring %r in %s: not an owner/name repo id", repo, ENV_ALLOWED_REPOS)
            continue
        if repo in registry:
            continue
        specs[repo] = CheckpointSpec(repo, f"{repo} (custom)", (repo,), None, CUSTOM_RESOLUTION, TEXT_TASKS)
    if specs:
        log.info("custom repos allowed by the operator: %s", ", ".join(specs))
    return specs
