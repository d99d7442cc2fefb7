"""X/Y/Z plot value syntax: A1111's X/Y/Z plot (scripts/xyz_grid.py) lists and ranges, and values as labels show them.

Values are comma-separated and read as CSV (so a value may be quoted to hold a comma); numbers may be ranges
`10-40` (inclusive), `10-40 (+10)` (a step; `(-10)` counts down) and `1-2 [5]` (five evenly spaced values), for
whole and decimal numbers. Imports no torch: validation runs before anything is loaded.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from typing import Any

from sd2_app.errors import InvalidRequest, shown

_NUMBER = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_STEP_RANGE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\))?\s*")
_COUNT_RANGE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\[\s*(\d+)\s*\]\s*")
MAX_NUMBER_CHARS = 40  # a number as people write one (a seed has at most 20 digits): Python's int and float
# conversions of longer ones fail or overflow, and a message repeats at most errors.MAX_SHOWN_CHARS of it
MAX_RANGE_CHARS = 3 * MAX_NUMBER_CHARS + 16  # two ends, a step or count, the brackets and spaces


def format_value(value: Any) -> str:
    """A value as a label shows it: floats without float noise (0.30000000000000004 -> 0.3); a prompt order's
    terms joined by ", " (as A1111 labels it)."""
    if isinstance(value, tuple):
        return ", ".join(map(format_value, value))
    if isinstance(value, float):
        return f"{round(value, 8):g}" if abs(value) < 1e15 else repr(value)
    return str(value)


def split_values(text: str) -> list[str]:
    """CSV fields of every line, stripped; empty fields dropped (A1111's csv_string_to_list_strip)."""
    fields = [field.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for field in row]
    return [field for field in fields if field]


def to_number(token: str, value_type: str, what: str) -> float | int:
    token = token.replace(" ", "")
    kind = "a whole number" if value_type == "int" else "a number"
    if len(token) > MAX_NUMBER_CHARS:
        raise InvalidRequest(f"{what}: {shown(token)} is too long: {kind} here has at most {MAX_NUMBER_CHARS} "
                             "characters.")
    try:
        number = float(token) if value_type == "float" else int(token)
    except ValueError:
        raise InvalidRequest(f"{what}: {shown(token)} is not {kind} or a range such as 10-40 (+10).") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidRequest(f"{what}: {shown(token)} is not a finite number.")
    return number


def expand_range(token: str, value_type: str, what: str, max_values: int) -> list[float | int] | None:
    """The values of a range token, or None when the token is not a range (a token over MAX_RANGE_CHARS is none:
    `to_number` refuses it)."""
    if len(token) > MAX_RANGE_CHARS:
        return None
    counted = _COUNT_RANGE.fullmatch(token)
    stepped = None if counted else _STEP_RANGE.fullmatch(token)
    if counted is None and stepped is None:
        return None
    match = counted or stepped
    assert match is not None
    start, end = (to_number(match.group(i), value_type, what) for i in (1, 2))
    if counted is not None:
        count = int(counted.group(3))
        if not 1 <= count <= max_values:
            raise InvalidRequest(f"{what}: {shown(token)} asks for {count} values; an axis may have 1 to {max_values}.")
        return [int(v) for v in _spaced(start, end, count)] if value_type == "int" else _spaced(start, end, count)
    step = to_number(match.group(3), value_type, what) if match.group(3) else (1 if end >= start else -1)
    if step == 0 or (end - start) * step < 0:
        raise InvalidRequest(f"{what}: the step of {shown(token)} never reaches {format_value(end)}.")
    count = math.floor((end - start) / step + 1e-9) + 1
    if count > max_values:
        raise InvalidRequest(f"{what}: {shown(token)} gives {count} values; an axis may have at most {max_values}.")
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


def axis_values_text(values: Sequence[Any]) -> str:
    """Values back as one line that `split_values` reads again: ", " between them, CSV quotes where needed."""
    def quoted(text: str) -> str:
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') or text != text.strip() else text

    return ", ".join(quoted(format_value(v)) for v in values)
