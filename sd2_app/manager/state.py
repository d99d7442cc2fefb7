"""The manager's bookkeeping records and the read-only views it gives the UI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from torch import nn

from sd2_app.manager.plan import Extras

if TYPE_CHECKING:
    from sd2_app.manager.plan import PartValue

Tier = Literal["device", "offloaded"]
Location = Literal["device", "offloaded", "none"]


@dataclass
class Part:
    """One loaded module, shared by every loaded checkpoint whose files hash the same."""

    identity: str
    name: str  # "unet", "vae", ...
    module: nn.Module  # what moves between tiers and is measured
    value: PartValue  # what Components receives (the module, or (model, processor) for depth)
    nbytes: int  # parameter + buffer bytes
    tier: Tier
    users: set[str] = field(default_factory=set)  # keys of loaded checkpoints using it (the refcount)


@dataclass
class Entry:
    """One loaded checkpoint: which parts it uses and where it lives."""

    key: str
    repo: str  # repo id or folder actually loaded
    revision: str | None
    folder: Path
    parts: dict[str, str]  # part name -> identity
    extras: Extras
    tier: Tier
    last_used: int  # manager clock tick of the last use: the LRU order
    model_hash: str = ""  # Plan.model_hash


@dataclass(frozen=True)
class ModelStatus:
    """What the UI shows for one checkpoint."""

    key: str
    label: str
    location: Location  # "device" (GPU, or CPU when that is the device), "offloaded" (pinned host memory), "none"
    device: str  # where its modules are now, e.g. "cuda:0", "cpu"; "" when not loaded
    repo: str | None  # the repo id or folder actually loaded; None when not loaded
    revision: str | None
    nbytes: int  # bytes of its modules (shared ones counted in full)
    shared: tuple[str, ...]  # its part names also used by another loaded checkpoint
    error: str | None = None  # the last load failure, until a load succeeds


@dataclass(frozen=True)
class MemorySummary:
    """Bytes our models hold per tier, against the budgets; `device_free` is the driver's view (CUDA only)."""

    device: str
    device_used: int
    device_budget: int
    device_free: int | None
    offload_used: int
    offload_budget: int
