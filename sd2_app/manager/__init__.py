"""The model manager: lazy loading, two memory tiers, content-shared components, one GPU lock.

`core` holds the tier and lock logic, `loader` the repo fallbacks and failure clean-up (it sees the manager
only through its `LoadTarget` protocol; `core` imports `loader`, never the reverse), `plan` what a
checkpoint folder is made of, `identity` the content hashes, `memory` sizes, budgets and moves.
"""

from sd2_app.manager.core import ModelManager
from sd2_app.manager.identity import default_cache_dir
from sd2_app.loading.repo_attempts import CheckpointUnavailable
from sd2_app.manager.loader import OutOfMemoryDuringLoad
from sd2_app.manager.state import MemorySummary, ModelStatus

__all__ = [
    "CheckpointUnavailable",
    "MemorySummary",
    "ModelManager",
    "ModelStatus",
    "OutOfMemoryDuringLoad",
    "default_cache_dir",
]
