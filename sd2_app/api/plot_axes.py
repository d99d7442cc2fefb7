"""X/Y/Z plot axes: what each axis varies, how its values are typed, and how a value changes a request.

Value syntax follows A1111's X/Y/Z plot (scripts/xyz_grid.py): comma-separated values read as CSV (so a
value may be quoted to hold a comma), ranges `10-40` (inclusive), `10-40 (+10)` (a step; `(-10)` counts
down) and `1-2 [5]` (five evenly spaced values), for whole and decimal numbers. Prompt S/R searches the
first value in the prompt and the negative prompt and replaces it by each value in turn. Seeds of -1 are
drawn at random, for the variation seed too; a variation strength axis without a variation seed uses one
drawn once for the whole plot (as A1111 fixes the subseed first). Imports no torch: validation runs before
anything is loaded.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sd2_app.api.checks import Catalog, check_sampler_names
from sd2_app.api.requests import Img2ImgRequest, PlotAxis, Txt2ImgRequest
from sd2_app.errors import InvalidRequest

PlotBase = Txt2ImgRequest | Img2ImgRequest  # what a plot's cells are

_NUMBER = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_STEP_RANGE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\))?\s*")
_COUNT_RANGE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\[\s*(\d+)\s*\]\s*")
_TRUE, _FALSE = ("on", "true", "yes", "1", "karras"), ("off", "false", "no", "0", "automatic")


@dataclass(frozen=True)
class AxisKind:
    """One kind of axis: its label (UI, grid labels, metadata), value type and effect on a request."""

    label: str
    value_type: str  # "int", "float", "bool", "text", "sampler" or "checkpoint"
    apply: Callable[[PlotBase, Any], PlotBase]  # (request, value) -> request with the value applied
    metadata_keys: tuple[str, ...]  # parameters-text keys this axis changes (left out of the grid's text)
    img2img_only: bool = False
    label_with_name: bool = True  # "Steps: 20" rather than "20"
    a1111_label: str = ""  # A1111's name of the same axis (scripts/xyz_grid.py) where its values mean the same

    @property
    def type_label(self) -> str:
        """The grid's "X Type" value: A1111's name where it has the axis, so A1111 reads it back; else ours."""
        return self.a1111_label or self.label

    def cell_label(self, value: Any) -> str:
        text = format_value(value)
        if self.value_type == "bool":
            text = "on" if value else "off"
        return f"{self.label}: {text}" if self.label_with_name else text


def _set_sampling(field: str) -> Callable[[PlotBase, Any], PlotBase]:
    return lambda request, value: replace(request, sampling=replace(request.sampling, **{field: value}))


def _set(field: str) -> Callable[[PlotBase, Any], PlotBase]:
    return lambda request, value: replace(request, **{field: value})


def _set_variation(field: str) -> Callable[[PlotBase, Any], PlotBase]:
    return lambda request, value: replace(request, seed_extras=replace(request.seed_extras, **{field: value}))


AXES: dict[str, AxisKind] = {
    "sampler": AxisKind("Sampler", "sampler", _set_sampling("sampler"), ("Sampler",), label_with_name=False,
                        a1111_label="Sampler"),
    "steps": AxisKind("Steps", "int", _set_sampling("steps"), ("Steps",), a1111_label="Steps"),
    "cfg_scale": AxisKind("CFG scale", "float", _set_sampling("cfg_scale"), ("CFG scale",), a1111_label="CFG Scale"),
    "seed": AxisKind("Seed", "int", _set_sampling("seed"), ("Seed",), a1111_label="Seed"),
    "checkpoint": AxisKind("Checkpoint", "checkpoint", _set("checkpoint"), ("Model",), label_with_name=False,
                           a1111_label="Checkpoint name"),
    "use_karras": AxisKind("Karras", "bool", _set_sampling("use_karras"), ("Schedule type",)),
    "guidance_rescale": AxisKind("Guidance rescale", "float", _set_sampling("guidance_rescale"),
                                 ("Guidance rescale",)),
    "strength": AxisKind("Denoising strength", "float", _set("strength"), ("Denoising strength",),
                         img2img_only=True, a1111_label="Denoising"),
    "prompt_sr": AxisKind("Prompt S/R", "text", lambda request, value: request, (), label_with_name=False,
                          a1111_label="Prompt S/R"),
    "variation_seed": AxisKind("Var. seed", "int", _set_variation("variation_seed"), ("Variation seed",),
                               a1111_label="Var. seed"),
    "variation_strength": AxisKind("Var. strength", "float", _set_variation("variation_strength"),
                                   ("Variation seed strength",), a1111_label="Var. strength"),
}
SEED_KINDS = ("seed", "variation_seed")  # -1 draws a seed for each value (A1111's fix_axis_seeds)
AXIS_NAMES = ("X", "Y", "Z")


def format_value(value: Any) -> str:
    """A value as a label shows it: floats without float noise (0.30000000000000004 -> 0.3)."""
    if isinstance(value, float):
        return f"{round(value, 8):g}" if abs(value) < 1e15 else repr(value)
    return str(value)


def split_values(text: str) -> list[str]:
    """CSV fields of every line, stripped; empty fields dropped (A1111's csv_string_to_list_strip)."""
    fields = [field.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for field in row]
    return [field for field in fields if field]


def _to_number(token: str, value_type: str, what: str) -> float | int:
    token = token.replace(" ", "")
    try:
        number = float(token) if value_type == "float" else int(token)
    except ValueError:
        kind = "a whole number" if value_type == "int" else "a number"
        raise InvalidRequest(f"{what}: {token!r} is not {kind} or a range such as 10-40 (+10).") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidRequest(f"{what}: {token!r} is not a finite number.")
    return number


def _expand_range(token: str, value_type: str, what: str, max_values: int) -> list[float | int] | None:
    """The values of a range token, or None when the token is not a range."""
    counted = _COUNT_RANGE.fullmatch(token)
    stepped = None if counted else _STEP_RANGE.fullmatch(token)
    if counted is None and stepped is None:
        return None
    match = counted or stepped
    assert match is not None
    start, end = (_to_number(match.group(i), value_type, what) for i in (1, 2))
    if counted is not None:
        count = int(counted.group(3))
        if not 1 <= count <= max_values:
            raise InvalidRequest(f"{what}: {token!r} asks for {count} values; an axis may have 1 to {max_values}.")
        return [int(v) for v in _spaced(start, end, count)] if value_type == "int" else _spaced(start, end, count)
    step = _to_number(match.group(3), value_type, what) if match.group(3) else (1 if end >= start else -1)
    if step == 0 or (end - start) * step < 0:
        raise InvalidRequest(f"{what}: the step of {token!r} never reaches {format_value(end)}.")
    count = math.floor((end - start) / step + 1e-9) + 1
    if count > max_values:
        raise InvalidRequest(f"{what}: {token!r} gives {count} values; an axis may have at most {max_values}.")
    values = [start + i * step for i in range(count)]
    return [round(v, 10) for v in values] if value_type == "float" else values


def _spaced(start: float, end: float, count: int) -> list[float]:
    """`count` evenly spaced values from `start` to `end`, computed as numpy.linspace computes them (A1111's
    "[n]" ranges use it): start + i * step, the last value exactly `end` (so "0.2-1 [4]" ends at 1.0, not at
    1.0000000000000002, which a strength axis would refuse)."""
    if count == 1:
        return [float(start)]
    step = (end - start) / (count - 1)
    return [float(start + i * step) for i in range(count - 1)] + [float(end)]


def _boolean(token: str, what: str) -> bool:
    lowered = token.lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise InvalidRequest(f"{what}: {token!r} is not on or off.")


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
        raise InvalidRequest(f"{what} are empty: type values such as 20, 30, 40 or a range such as 10-40 (+10).")
    values: list[Any] = []
    for token in tokens:
        if kind.value_type in ("int", "float") and isinstance(token, (int, float)) and not isinstance(token, bool):
            values.append(int(token) if kind.value_type == "int" and float(token).is_integer() else token)
        elif kind.value_type in ("int", "float"):
            expanded = _expand_range(str(token), kind.value_type, what, max_values)
            values.extend(expanded if expanded is not None else [_to_number(str(token), kind.value_type, what)])
        elif kind.value_type == "bool":
            values.append(token if isinstance(token, bool) else _boolean(str(token), what))
        else:
            values.append(str(token))
        if len(values) > max_values:
            raise InvalidRequest(f"{what} have more than {max_values} values.")
    return values


def check_choices(kind: AxisKind, values: list[Any], what: str, catalog: Catalog, checkpoints: Sequence[str]) -> None:
    """Sampler names must be ones the server offers, checkpoints ones that can run the base's task."""
    if kind.value_type == "sampler":
        try:
            check_sampler_names(tuple(values), catalog)
        except InvalidRequest as error:
            raise InvalidRequest(f"{what}: {error}") from error
    unknown = [v for v in values if v not in checkpoints] if kind.value_type == "checkpoint" else []
    if unknown:
        raise InvalidRequest(f"{what}: Unknown checkpoint(s) {', '.join(map(repr, unknown))}; "
                             f"choose from: {', '.join(checkpoints)}.")


def apply_prompt_sr(request: PlotBase, search: str, value: str) -> PlotBase:
    """Replace every `search` in the prompt and the negative prompt by `value`."""
    return replace(request, prompt=request.prompt.replace(search, value),
                   negative_prompt=request.negative_prompt.replace(search, value))


def axis_values_text(values: Sequence[Any]) -> str:
    """Values back as one line that `split_values` reads again: ", " between them, CSV quotes where needed."""
    def quoted(text: str) -> str:
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') or text != text.strip() else text

    return ", ".join(quoted(format_value(v)) for v in values)
