"""A1111's names of samplers and schedules read as ours: the one reading of the A1111 API's `sampler_name` and
`scheduler` (`a1111.py`) and of a parameters text's "Sampler" and "Schedule type" (PNG info's and History's "Send
to", `sd2_app.ui.sending`). No torch and no web framework here: the UI imports it.

A1111 reads both with one function (modules/sd_samplers.py, `get_sampler_and_scheduler`, called by its API's
txt2img/img2img in modules/api/api.py and by its infotext paste): a schedule written at the end of the sampler's
name ("DPM++ 2M Karras", as A1111 wrote it before 1.9 gave the schedule its own "Schedule type") wins over the
separate one, and the rest is looked up by its exact name, an unknown name becoming A1111's default sampler. Here
the schedule rule is the same; names match in any case (as A1111's X/Y/Z plot matches them, `samplers_map` in the
same file), and a name we do not have is None, never another sampler: the API refuses it (HTTP 422) and a paste
keeps the current sampler and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sd2_app.samplers.registry import AUTOMATIC

# A1111's names for our samplers where they differ (A1111 modules/sd_samplers_timesteps.py lists PNDM's PLMS as
# "PLMS").
A1111_SAMPLER_NAMES = {"PLMS": "PNDM"}
# The schedules we have: A1111's scheduler names (modules/sd_schedulers.py, `schedulers`) -> our labels, which are
# its labels (`registry.SCHEDULES`, in the same order), and the other names it reads them by (its `aliases`).
SCHEDULERS = {"automatic": AUTOMATIC, "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential",
              "polyexponential": "Polyexponential", "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal",
              "align_your_steps": "Align Your Steps", "simple": "Simple", "normal": "Normal", "beta": "Beta"}
SCHEDULER_ALIASES = {"sgm_uniform": ("SGMUniform",)}
# What A1111's /schedulers says of each besides its name and label: the rho of the spacings that have one, and
# whether it reads the model's own sigmas (`default_rho`, `need_inner_model`).
SCHEDULER_RHO = {"karras": 7.0, "polyexponential": 1.0}
SCHEDULERS_OF_THE_MODEL = ("uniform", "sgm_uniform", "simple", "normal", "beta")


def scheduler_items() -> list[dict[str, Any]]:
    """A1111's /schedulers answer (its SchedulerItem) for the schedules we have."""
    return [{"name": name, "label": label, "aliases": list(SCHEDULER_ALIASES.get(name, ())) or None,
             "default_rho": SCHEDULER_RHO.get(name, -1), "need_inner_model": name in SCHEDULERS_OF_THE_MODEL}
            for name, label in SCHEDULERS.items()]


def schedule_label(value: Any) -> str | None:
    """The label of a schedule we have from its A1111 name, label or alias, in any case ("karras", "Karras" ->
    "Karras", "SGMUniform" -> "SGM Uniform"); None for any other value."""
    if not isinstance(value, str):
        return None
    by_lower = {**SCHEDULERS,
                **{label.lower(): label for label in SCHEDULERS.values()},
                **{alias.lower(): SCHEDULERS[name] for name, aliases in SCHEDULER_ALIASES.items() for alias in aliases}}
    return by_lower.get(value.lower())


def read_sampler(name: Any, schedule: Any, names: Sequence[str]) -> tuple[str | None, str]:
    """(our sampler, schedule type) for A1111's sampler `name` and `schedule` (a scheduler name or label, or
    None), our sampler None when `names` (ours, as spelled here) has none of that name; the schedule type from a
    schedule at the end of the name ("DPM++ 2M SDE Exponential"), else from `schedule` (Automatic where that is
    none we have)."""
    given = schedule_label(schedule) or AUTOMATIC
    text = str(name or "")
    sampler = sampler_named(text, names)
    if sampler is not None:
        return sampler, given
    for label in sorted(SCHEDULERS.values(), key=len, reverse=True):  # "SGM Uniform" before "Uniform"
        if text.lower().endswith(" " + label.lower()):
            plain = sampler_named(text[: -len(label) - 1], names)
            return (plain, label) if plain is not None else (None, given)
    return None, given


def sampler_named(text: str, names: Sequence[str]) -> str | None:
    """Our spelling of the sampler A1111 calls `text` (any case; "PLMS" is our PNDM), or None. Alone (no schedule
    in the name) it reads a hires sampler's name, whose schedule here is the first pass's."""
    aliases = {alias.lower(): ours for alias, ours in A1111_SAMPLER_NAMES.items()}
    wanted = aliases.get(text.lower(), text).lower()
    return next((ours for ours in names if ours.lower() == wanted), None)
