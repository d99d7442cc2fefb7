"""What the server accepts (`Limits`, `Catalog`) and the checks of single request values every task shares.

Each check returns the value in its checked type or raises `InvalidRequest` with the message the user sees.
`task_checks` and `txt2img_options` build a request's checks from these; importing this module loads no torch
(`catalog_of` reads the sampler table, which does, when it is called).
"""

from __future__ import annotations

import math
import random
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sd2_app.api.cost import DEFAULT_MAX_JOB_COST
from sd2_app.errors import InvalidRequest, shown
from sd2_app.samplers.registry import AUTOMATIC, SAMPLERS, SCHEDULES

if TYPE_CHECKING:
    from sd2_app.checkpoints.catalog import CheckpointSpec

MAX_SEED = 2**32 - 1
MIN_SIDE = 64  # the smallest width/height of an image the tasks make (multiples of 8 above it)
MAX_PROMPT_CHARS = 2000  # only stops abuse; the pipeline refuses a prompt over 8 chunks of 75 tokens


@dataclass(frozen=True)
class Limits:
    """What the server accepts; configurable so a big GPU can allow more and a Space less."""

    max_side: int = 1024  # width/height of a generated image
    max_input_pixels: int = 2048 * 2048  # an uploaded image (img2img, inpaint, depth)
    max_upscale_input_pixels: int = 512 * 512  # the x4 output is 16x this (tiled)
    max_steps: int = 150
    max_batch: int = 8  # images per prompt: one UNet batch, so it bounds the GPU memory a job needs
    # images one run makes, batch count x images per prompt (sd2_app/api/batch_count.py): the batches run one after
    # another, so GPU time is the cost cap's to bound (they count in it); this bounds what one result holds
    max_images: int = 32
    max_plot_cells: int = 64  # cells of one X/Y/Z plot (all Z values together)
    # characters one plot's prompt passes may have read, every distinct text of each cell's phases counted
    # (`sd2_app.pipelines.prompt_plan.ReadBudget`): 64 cells of a 2,000-character prompt and negative prompt
    # with a few edits each fit; 64 cells of 63 alternatives each do not
    max_plot_prompt_chars: int = 1_000_000
    max_job_cost: int | None = DEFAULT_MAX_JOB_COST  # UNet evaluations x latent pixels (sd2_app.api.cost); None: no cap


@dataclass(frozen=True)
class Catalog:
    """The names a request may use: samplers (-> offers the schedule types) and checkpoints (-> resolution,
    tasks)."""

    samplers: Mapping[str, bool]
    resolutions: Mapping[str, int]
    tasks: Mapping[str, tuple[str, ...]]
    labels: Mapping[str, str] = field(default_factory=dict)
    calls_per_step: Mapping[str, int] = field(default_factory=dict)  # UNet calls per step per sampler (missing: 1)
    loras: frozenset[str] = frozenset()  # the LoRA names a prompt's tags may use (the host's folder)


def catalog_of(registry: Mapping[str, CheckpointSpec], loras: Iterable[str] = ()) -> Catalog:
    """The catalog of the app's samplers (`sd2_app.samplers.registry.SAMPLERS`), `registry`'s checkpoints and
    the `loras` names."""
    return Catalog(
        samplers={name: bool(spec.offers_schedules) for name, spec in SAMPLERS.items()},
        resolutions={key: spec.resolution for key, spec in registry.items()},
        tasks={key: tuple(spec.tasks) for key, spec in registry.items()},
        labels={key: spec.label for key, spec in registry.items()},
        calls_per_step={name: int(spec.order) for name, spec in SAMPLERS.items()},
        loras=frozenset(loras),
    )


def clean_text(value: Any, what: str) -> str:
    """Strip control characters (they confuse the tokenizer and the PNG text chunk); keep newlines."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be text, got {type(value).__name__}.")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"{what} is {len(value)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    kept = [" " if ch == "\t" else ch for ch in value if ch in "\n\t" or unicodedata.category(ch) != "Cc"]
    return "".join(kept).strip()


def number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{what} must be a number, got {shown(value)}.")
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(f"{what} must be between {low:g} and {high:g}, got {shown(value)}.")
    return float(value)


def to_multiple_of_8(side: float) -> int:
    """`side` rounded to the nearest multiple of 8, halves up (100 -> 104, 99 -> 96): the one rounding of an image
    side, for the service's checks and the UI's sizes alike."""
    return int(side / 8 + 0.5) * 8


def integer(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and not (math.isfinite(value) and value.is_integer())
    ):
        raise InvalidRequest(f"{what} must be a whole number, got {shown(value)}.")
    if not low <= value <= high:
        raise InvalidRequest(f"{what} must be between {low} and {high}, got {int(value)}.")
    return int(value)


def flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what} must be true or false, got {shown(value)}.")
    return value


def random_seed(seed: Any) -> bool:
    """Whether a seed asks for a random one: None or -1."""
    return seed is None or (not isinstance(seed, bool) and isinstance(seed, (int, float)) and seed == -1)


def resolve_seed(seed: Any, what: str = "Seed") -> int:
    """None or -1 draws a fresh seed (reported back, so the image can be reproduced). `what` names the box the
    refusal is about ("Variation seed", an X/Y/Z axis), as its label does."""
    if random_seed(seed):
        return random.SystemRandom().randint(0, MAX_SEED)
    whole = integer(seed, what, -math.inf, math.inf)  # the type check; the range's message names -1 too
    if not 0 <= whole <= MAX_SEED:
        raise InvalidRequest(f"{what} must be -1 (random) or between 0 and {MAX_SEED}, got {whole}.")
    return whole


def check_sampler_names(names: tuple[Any, ...], catalog: Catalog) -> None:
    """The one check of sampler names (a request's sampler, or a comparison's list)."""
    unknown = [name for name in names if not isinstance(name, str) or name not in catalog.samplers]
    if not unknown:
        return
    choices = ", ".join(catalog.samplers)
    if len(names) == 1:
        raise InvalidRequest(f"Unknown sampler {shown(unknown[0])}; choose one of: {choices}.")
    raise InvalidRequest(f"Unknown sampler(s) {', '.join(map(repr, unknown))}; choose from: {choices}.")


def schedule_name(schedule: Any, what: str = "Schedule type") -> str:
    """A schedule type (A1111's "Schedule type"), one of SCHEDULES."""
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise InvalidRequest(f"{what} must be one of {', '.join(SCHEDULES)}; got {shown(schedule)}.")
    return schedule


def check_schedule(schedule: Any, sampler: str, catalog: Catalog) -> None:
    """A schedule type (`schedule_name`), Automatic for a sampler that offers no other (`sampler` already
    checked)."""
    if schedule_name(schedule) != AUTOMATIC and not catalog.samplers[sampler]:
        raise InvalidRequest(f"Schedule type {schedule} is not available for the {sampler} sampler; pick "
                             f"{AUTOMATIC}.")
