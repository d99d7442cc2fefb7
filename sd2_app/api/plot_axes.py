"""X/Y/Z plot axes: what each axis varies, how its values are typed, and how a value changes a request.

Names and value syntax follow A1111's X/Y/Z plot (scripts/xyz_grid.py; the syntax is `plot_values`). Prompt
S/R searches the first value in the prompt and the negative prompt and replaces it by each value in turn;
Prompt order puts the listed terms in every order (`plot_order`). Styles applies the host's prompt styles
(`--styles`, sd2_app/prompt_styles.py) named by each value, several between commas, as A1111's apply_styles
does (a value that is one style's whole name is that style, a comma in it too; a name that is not the host's
is refused, as A1111 would run it as an empty style). Seeds of -1 are drawn at random, for the variation seed
too; a variation strength axis without a variation seed uses one drawn once for the whole plot (as A1111 fixes
the subseed first). The hires axes turn the hires fix on with its defaults where the plot has
it off (A1111 sets the field and, hires off, the axis changes nothing). Eta changes only DDIM
(`requests.ETA_SAMPLERS`): other samplers' cells run without it, with a warning. Imports no torch: validation
runs before anything is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sd2_app import infotext_keys as keys
from sd2_app.api.a1111_samplers import read_sampler, sampler_named, schedule_label
from sd2_app.api.checks import Catalog, check_sampler_names
from sd2_app.api.plot_order import prompt_orders, reorder
from sd2_app.api.plot_values import axis_values_text, expand_range, format_value, split_values, to_number
from sd2_app.api.requests import (
    ETA_SAMPLERS,
    HIRES_UPSCALERS,
    HiresFix,
    Img2ImgRequest,
    PlotAxis,
    Txt2ImgRequest,
)
from sd2_app.api.upscaler_names import hires_upscaler_named
from sd2_app.errors import InvalidRequest, shown
from sd2_app.prompt_styles import StyleBook
from sd2_app.samplers.registry import AUTOMATIC, SCHEDULES

PlotBase = Txt2ImgRequest | Img2ImgRequest  # what a plot's cells are


@dataclass(frozen=True)
class AxisKind:
    """One kind of axis: its label (UI, grid labels, metadata), value type and effect on a request."""

    label: str
    value_type: str  # "int", "float", "text", "order", "sampler", "schedule", "upscaler", "checkpoint" or "style"
    apply: Callable[[PlotBase, Any], PlotBase]  # (request, value) -> request with the value applied
    metadata_keys: tuple[str, ...]  # parameters-text keys this axis changes (left out of the grid's text)
    img2img_only: bool = False
    txt2img_only: bool = False
    label_with_name: bool = True  # "Steps: 20" rather than "20"
    a1111_label: str = ""  # A1111's name of the same axis (scripts/xyz_grid.py) where its values mean the same

    @property
    def type_label(self) -> str:
        """The grid's "X Type" value: A1111's name where it has the axis, so A1111 reads it back; else ours."""
        return self.a1111_label or self.label

    def values_text(self, values: Sequence[Any]) -> str:
        """The grid's "X Values": the values as A1111 writes them (a prompt order's terms, not every order), in one
        line that `parse_values` reads back."""
        if self.value_type == "order":
            return axis_values_text(values[0])
        return axis_values_text(values)

    def cell_label(self, value: Any) -> str:
        text = format_value(value)
        return f"{self.label}: {text}" if self.label_with_name else text


def _set_sampling(field: str) -> Callable[[PlotBase, Any], PlotBase]:
    return lambda request, value: replace(request, sampling=replace(request.sampling, **{field: value}))


def _set(field: str) -> Callable[[PlotBase, Any], PlotBase]:
    return lambda request, value: replace(request, **{field: value})


def _set_hires(field: str) -> Callable[[PlotBase, Any], PlotBase]:
    """Set a hires fix field (the base's hires fix is on: `hires_for_axes`)."""
    return lambda request, value: replace(request, hires=replace(request.hires or HiresFix(), **{field: value}))


def _reorder_prompt(request: PlotBase, order: tuple[str, ...]) -> PlotBase:
    return replace(request, prompt=reorder(request.prompt, order))


def _set_variation(field: str) -> Callable[[PlotBase, Any], PlotBase]:
    return lambda request, value: replace(request, seed_extras=replace(request.seed_extras, **{field: value}))


AXES: dict[str, AxisKind] = {
    "sampler": AxisKind("Sampler", "sampler", _set_sampling("sampler"), (keys.SAMPLER,), label_with_name=False,
                        a1111_label="Sampler"),
    "steps": AxisKind("Steps", "int", _set_sampling("steps"), (keys.STEPS,), a1111_label="Steps"),
    "cfg_scale": AxisKind("CFG scale", "float", _set_sampling("cfg_scale"), (keys.CFG_SCALE,), a1111_label="CFG Scale"),
    "seed": AxisKind("Seed", "int", _set_sampling("seed"), (keys.SEED,), a1111_label="Seed"),
    "checkpoint": AxisKind("Checkpoint", "checkpoint", _set("checkpoint"), (keys.MODEL_HASH, keys.MODEL),
                           label_with_name=False, a1111_label="Checkpoint name"),
    "schedule_type": AxisKind("Schedule type", "schedule", _set_sampling("schedule"), (keys.SCHEDULE_TYPE,),
                              a1111_label="Schedule type"),
    "guidance_rescale": AxisKind("Guidance rescale", "float", _set_sampling("guidance_rescale"),
                                 (keys.GUIDANCE_RESCALE,)),
    "strength": AxisKind("Denoising strength", "float", _set("strength"), (keys.DENOISING_STRENGTH,),
                         img2img_only=True, a1111_label="Denoising"),
    "prompt_sr": AxisKind("Prompt S/R", "text", lambda request, value: request, (), label_with_name=False,
                          a1111_label="Prompt S/R"),
    "variation_seed": AxisKind("Var. seed", "int", _set_variation("variation_seed"), (keys.VARIATION_SEED,),
                               a1111_label="Var. seed"),
    "variation_strength": AxisKind("Var. strength", "float", _set_variation("variation_strength"),
                                   (keys.VARIATION_SEED_STRENGTH,), a1111_label="Var. strength"),
    "eta": AxisKind("Eta", "float", _set_sampling("eta"), (keys.ETA_DDIM,), a1111_label="Eta"),
    "hires_steps": AxisKind("Hires steps", "int", _set_hires("steps"), (keys.HIRES_STEPS,), txt2img_only=True,
                            a1111_label="Hires steps"),
    "hires_upscaler": AxisKind("Hires upscaler", "upscaler", _set_hires("upscaler"), (keys.HIRES_UPSCALER,),
                               txt2img_only=True, a1111_label="Hires upscaler"),
    "hires_sampler": AxisKind("Hires sampler", "sampler", _set_hires("sampler"), (keys.HIRES_SAMPLER,),
                              txt2img_only=True, a1111_label="Hires sampler"),
    "prompt_order": AxisKind("Prompt order", "order", _reorder_prompt, (), label_with_name=False,
                             a1111_label="Prompt order"),
    "styles": AxisKind("Styles", "style", lambda request, value: request, (), a1111_label="Styles"),
}
HIRES_KINDS = ("hires_steps", "hires_upscaler", "hires_sampler")
SEED_KINDS = ("seed", "variation_seed")  # -1 draws a seed for each value (A1111's fix_axis_seeds)


def offered_axes(styles: StyleBook) -> list[str]:
    """The axis kinds a host offers, in `AXES` order: the X/Y/Z tab lists these and a plot may use only these.
    Styles only where the host has prompt styles (`--styles`)."""
    return [key for key in AXES if key != "styles" or styles.styles]
AXIS_NAMES = ("X", "Y", "Z")
# What an empty axis asks for, by value type: samplers, upscalers and checkpoints are picked from a list (the web
# UI's multi-select), the others typed.
NUMBERS_HINT = "type values such as 20, 30, 40 or a range such as 10-40 (+10)"
EMPTY_AXIS_HINTS = {"sampler": "pick one or more samplers", "upscaler": "pick one or more upscalers",
                    "checkpoint": "pick one or more checkpoints", "style": "pick one or more styles",
                    "schedule": "pick one or more schedule types",
                    "text": "type the words to find in the prompt, then what replaces them: cat, dog, tiger",
                    "order": "type terms of the prompt to put in every order: cat, dog, tiger"}


def parse_values(axis: PlotAxis, what: str, max_values: int) -> list[Any]:
    """The axis's values, typed (not yet range-checked against the catalog or the limits)."""
    kind = AXES[axis.kind]
    raw = axis.values
    if isinstance(raw, str):
        tokens: Sequence[Any] = split_values(raw)
    elif isinstance(raw, Sequence):
        tokens = [item.strip() if isinstance(item, str) else item for item in raw]
        tokens = [item for item in tokens if item != ""]
    else:
        raise InvalidRequest(f"{what} must be text or a list, got {type(raw).__name__}.")
    if not tokens:
        raise InvalidRequest(f"{what} are empty: {EMPTY_AXIS_HINTS.get(kind.value_type, NUMBERS_HINT)}.")
    if kind.value_type == "order":
        return list(prompt_orders(tokens, what, max_values))
    values: list[Any] = []
    for token in tokens:
        if kind.value_type in ("int", "float") and isinstance(token, (int, float)) and not isinstance(token, bool):
            values.append(int(token) if kind.value_type == "int" and float(token).is_integer() else token)
        elif kind.value_type in ("int", "float"):
            expanded = expand_range(str(token), kind.value_type, what, max_values)
            values.extend(expanded if expanded is not None else [to_number(str(token), kind.value_type, what)])
        else:
            values.append(str(token))
        if len(values) > max_values:
            raise InvalidRequest(f"{what} have more than {max_values} values.")
    return values


def read_names(kind: AxisKind, values: list[Any], catalog: Catalog) -> list[Any]:
    """A sampler or hires upscaler axis's values in our spelling where they name one of ours: samplers as A1111's
    X/Y/Z plot reads them (any case, "PLMS" for PNDM: `a1111_samplers.sampler_named`, as its `samplers_map`),
    upscalers as every hires upscaler is read (`upscaler_names.hires_upscaler_named`); others as they are, for
    `check_choices` to refuse by the name typed."""
    if kind.value_type == "upscaler":
        return [hires_upscaler_named(value, catalog) or value for value in values]
    if kind.value_type == "schedule":
        return [schedule_label(value) or value for value in values]
    if kind.value_type != "sampler":
        return values
    return [sampler_named(value, list(catalog.samplers)) or value if isinstance(value, str) else value
            for value in values]


def check_choices(kind: AxisKind, values: list[Any], what: str, catalog: Catalog, checkpoints: Sequence[str]) -> None:
    """Sampler names must be ones the server offers, hires upscalers ours, checkpoints ones that can run the base's
    task."""
    if kind.value_type == "schedule" and any(v not in SCHEDULES for v in values):
        unknown = ", ".join(shown(str(v)) for v in values if v not in SCHEDULES)
        raise InvalidRequest(f"{what}: Unknown schedule type(s) {unknown}; choose from: {', '.join(SCHEDULES)}.")
    if kind.value_type == "upscaler" and any(v not in HIRES_UPSCALERS for v in values):
        unknown = ", ".join(shown(str(v)) for v in values if v not in HIRES_UPSCALERS)
        raise InvalidRequest(f"{what}: Unknown hires upscaler(s) {unknown}; choose from: {', '.join(HIRES_UPSCALERS)}.")
    if kind.value_type == "sampler":
        check_no_schedules(values, what, catalog)
        try:
            check_sampler_names(tuple(values), catalog)
        except InvalidRequest as error:
            raise InvalidRequest(f"{what}: {error}") from error
    unknown = [v for v in values if v not in checkpoints] if kind.value_type == "checkpoint" else []
    if unknown:
        raise InvalidRequest(f"{what}: Unknown checkpoint(s) {', '.join(shown(str(v)) for v in unknown)}; "
                             f"choose from: {', '.join(checkpoints)}.")


def check_no_schedules(values: Sequence[Any], what: str, catalog: Catalog) -> None:
    """Refuse a sampler value that is one of ours with a schedule at the end of its name ("DPM++ 2M Karras", as
    A1111 named samplers before 1.9 and an X/Y/Z value list pasted from then has them), saying what to pick: a
    value here sets the sampler alone, and A1111's X/Y/Z plot since 1.9 refuses those names too (its
    `confirm_samplers` looks them up in `samplers_map`, which no longer has them)."""
    names = list(catalog.samplers)
    for value in values:
        if not isinstance(value, str) or sampler_named(value, names) is not None:
            continue
        plain, schedule = read_sampler(value, None, names)
        if plain is not None:
            raise InvalidRequest(f"{what}: {shown(value)} is {plain} with the {schedule} schedule in its name, as "
                                 f"A1111 named it before 1.9; pick {plain} and set its Schedule type (or vary it "
                                 "on a Schedule type axis).")


def style_names(value: str, styles: StyleBook) -> list[str]:
    """The host's styles one Styles value applies, in order: the style of that whole name (as the axis's list
    offers it, a name with a comma too), else its names between commas (A1111's apply_styles splits a value at
    ","), each stripped."""
    if value.strip() in styles.names:
        return [value.strip()]
    return [name.strip() for name in value.split(",") if name.strip()]


def check_styles(values: Sequence[str], what: str, styles: StyleBook) -> None:
    """Every name of every Styles value must be one of the host's styles (`StyleBook.picked`'s refusals)."""
    for value in values:
        try:
            styles.picked(style_names(value, styles))
        except InvalidRequest as error:
            raise InvalidRequest(f"{what}: {error}") from error


def apply_axis(kind: str, request: PlotBase, values: Sequence[Any], i: int, styles: StyleBook) -> PlotBase:
    """`request` with value `i` of an axis of `kind` applied: Prompt S/R replaces its first value, Styles adds
    the host's styles named, any other sets its field (`AxisKind.apply`)."""
    if kind == "prompt_sr":
        return apply_prompt_sr(request, values[0], values[i])
    if kind == "styles":
        return styles.applied_to(request, style_names(values[i], styles))
    return AXES[kind].apply(request, values[i])


def apply_prompt_sr(request: PlotBase, search: str, value: str) -> PlotBase:
    """Replace every `search` in the prompt and the negative prompt by `value`, and in a hires fix's own prompts
    (A1111's xyz_grid.py, `apply_prompt`, replaces in hr_prompt and hr_negative_prompt too)."""
    changed = replace(request, prompt=request.prompt.replace(search, value),
                      negative_prompt=request.negative_prompt.replace(search, value))
    hires = getattr(request, "hires", None)
    if hires is None or not (hires.prompt or hires.negative_prompt):
        return changed
    return replace(changed, hires=replace(hires, prompt=hires.prompt.replace(search, value),
                                          negative_prompt=hires.negative_prompt.replace(search, value)))


def hires_for_axes(base: PlotBase, kinds: Sequence[str]) -> tuple[PlotBase, list[str]]:
    """The base with the hires fix on (its defaults) where a hires axis needs it and it is off, and the warning
    that says so (an image-to-image base is left as it is: `plot._checked_axes` refuses its hires axes)."""
    used = [AXES[kind].label for kind in kinds if kind in HIRES_KINDS]
    if not used or not isinstance(base, Txt2ImgRequest) or base.hires is not None:
        return base, []
    hires = HiresFix()
    axes = "axis turns" if len(used) == 1 else "axes turn"
    note = (f"The hires fix was off; the {' and '.join(used)} {axes} it on with its defaults (upscaler "
            f"{hires.upscaler}, upscale {format_value(hires.scale)}, denoising strength "
            f"{format_value(hires.denoising_strength)}).")
    return replace(base, hires=hires), [note]


def uses_eta(request: PlotBase) -> bool:
    """Whether a pass of the request samples with a sampler that takes eta (the hires pass may have its own)."""
    samplers = {request.sampling.sampler}
    hires = getattr(request, "hires", None)
    if hires is not None and hires.sampler:
        samplers.add(hires.sampler)
    return bool(samplers & set(ETA_SAMPLERS))


def fit_to_sampler(cell: PlotBase, catalog: Catalog) -> tuple[PlotBase, list[str]]:
    """A cell whose settings its samplers can honour, and what was dropped: a schedule type where the sampler
    (or the hires pass's) offers none, eta where no pass runs DDIM (the image is the same; its parameters then do
    not claim an eta)."""
    notes = []
    sampling, sampler = cell.sampling, cell.sampling.sampler
    hires = getattr(cell, "hires", None)
    if hires is not None and (hires.sampler or hires.schedule):  # a hires pass of its own, fitted on its own
        second_sampler, second_schedule = hires.sampler_and_schedule(sampling)
        if second_schedule != AUTOMATIC and not catalog.samplers.get(second_sampler, False):
            notes.append(f"Schedule type {second_schedule} is not available for the hires pass's {second_sampler}; "
                         "it uses its own schedule.")
            cell = replace(cell, hires=replace(hires, schedule=AUTOMATIC))
        elif not hires.schedule and sampling.schedule != AUTOMATIC and not catalog.samplers.get(sampler, False):
            cell = replace(cell, hires=replace(hires, schedule=sampling.schedule))  # the first pass's, kept
    if sampling.schedule != AUTOMATIC and not catalog.samplers.get(sampler, False):
        notes.append(f"Schedule type {sampling.schedule} is not available for {sampler}; it uses its own schedule.")
        sampling = replace(sampling, schedule=AUTOMATIC)
    if isinstance(sampling.eta, (int, float)) and sampling.eta > 0 and not uses_eta(cell):
        notes.append(f"Eta changes only {', '.join(ETA_SAMPLERS)}; the {sampler} cells run without it.")
        sampling = replace(sampling, eta=0.0)
    return replace(cell, sampling=sampling), notes
