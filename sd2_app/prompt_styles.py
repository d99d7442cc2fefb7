"""Prompt styles as A1111 keeps them (modules/styles.py, `StyleDatabase`): named pieces of prompt and negative
prompt that a run adds to what the visitor wrote.

The host's file only (`--styles PATH`, A1111's styles.csv: a header row `name,prompt,negative_prompt`, then one
style a row), read once at start by `load_styles`; visitors pick styles by name and cannot add or change one.
The file is bounded (size, number of styles, length of each text); a row that cannot be read is skipped with a
log line and a file that cannot be read gives no styles, so a bad file never stops the app.

Applying follows A1111's `merge_prompts` / `apply_styles_to_prompt`: for each picked style in order, a style
text holding `{prompt}` has it replaced by the prompt so far; any other is appended after ", " (empty parts
left out, both ends stripped). The prompt and the negative prompt each take their own text of the style. A1111
applies them before the prompt is parsed (modules/processing.py, `setup_prompts`), so the parameters text holds
the expanded prompt; `extract_styles` reads a pasted one back as A1111's "Styles array" does (modules/styles.py,
`extract_styles_from_prompt`). Differences from A1111, on purpose: an unknown name is refused (A1111 treats it
as an empty style); the merged text is not cleaned of repeated commas and spaces (A1111 1.7's `clean_text`), so
a prompt's own spacing reaches the model as written.

No torch here: the UI imports this module.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from sd2_app.errors import InvalidRequest, shown
from sd2_app.infotext_keys import NEGATIVE_PROMPT, PROMPT, STYLES_ARRAY

log = logging.getLogger(__name__)

PLACEHOLDER = "{prompt}"
MAX_FILE_BYTES = 1 << 20  # 1 MiB of CSV
MAX_STYLES = 500
MAX_NAME_CHARS = 100
MAX_TEXT_CHARS = 2000  # a style's prompt or negative prompt (8 chunks of 75 tokens are about 2,400 characters)
MAX_PICKED = 20  # styles one request may apply


@dataclass(frozen=True)
class PromptStyle:
    """One row of the styles file."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_style(style_text: str, prompt: str) -> str:
    """One style text applied to `prompt` (A1111's rule, see the module docstring)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def unwrap_style(style_text: str, prompt: str) -> str | None:
    """`prompt` without `style_text` where applying it would have given `prompt`, else None. An empty style text
    matches any prompt; a text with two placeholders matches none (as in A1111's `unwrap_style_text_from_prompt`).
    The prompt is compared as written first, as `merge_style` leaves it ("blurry, {prompt}" on an empty negative
    prompt is "blurry, "), then with commas and spaces stripped at its ends (as A1111 1.7 compares, its merged
    prompts cleaned)."""
    text = style_text.strip(", ")
    if text.count(PLACEHOLDER) > 1:
        return None
    for whole in dict.fromkeys((prompt, prompt.strip(", "))):
        if PLACEHOLDER in text:
            left, right = text.split(PLACEHOLDER)
            if len(whole) >= len(left) + len(right) and whole.startswith(left) and whole.endswith(right):
                return whole[len(left):len(whole) - len(right)]
        elif whole.endswith(text):
            return whole[:len(whole) - len(text)].rstrip().removesuffix(",")
    return None


def _text(value: object, what: str) -> str:
    """A prompt to style: "" for None; anything but text refused in `clean_text`'s words."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be text, got {type(value).__name__}.")
    return value


Styled = TypeVar("Styled")


@dataclass(frozen=True)
class StyleBook:
    """The host's styles, in the file's order (a name given twice keeps its first place and its last texts)."""

    styles: tuple[PromptStyle, ...] = ()

    @property
    def names(self) -> list[str]:
        return [style.name for style in self.styles]

    def picked(self, names: object) -> list[PromptStyle]:
        """The styles `names` (a request's list) names, in its order; anything else is refused with a message."""
        if names is None:
            return []
        if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
            raise InvalidRequest("styles must be a list of style names.")
        if len(names) > MAX_PICKED:
            raise InvalidRequest(f"At most {MAX_PICKED} styles may be applied at once; {len(names)} were sent.")
        by_name = {style.name: style for style in self.styles}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            known = ", ".join(repr(name) for name in self.names[:20]) or "none"
            raise InvalidRequest(f"Unknown style {shown(unknown[0])}; this server's styles: {known}.")
        return [by_name[name] for name in names]

    def apply(self, prompt: str | None, negative_prompt: str | None, names: object,
              what: tuple[str, str] = ("Prompt", "Negative prompt")) -> tuple[str, str]:
        """(prompt, negative prompt) with the styles `names` applied in order; a missing (None) prompt is the empty
        one and anything but text is refused, as validation reads them (`sd2_app.api.checks.clean_text`; `what`:
        their names in its message): an API caller may send a prompt of any type."""
        prompt, negative_prompt = (_text(text, name) for text, name in zip((prompt, negative_prompt), what))
        for style in self.picked(names):
            prompt = merge_style(style.prompt, prompt)
            negative_prompt = merge_style(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def applied_to(self, request: Styled, names: object) -> Styled:
        """A request (a dataclass with `prompt` and `negative_prompt`) with the styles `names` applied; a hires
        fix's own prompts too, each that is given (A1111 styles its hr prompts; an empty one is the first pass's,
        styled already)."""
        if not names:
            return request
        prompt, negative = self.apply(request.prompt, request.negative_prompt, names)  # type: ignore[attr-defined]
        hires = getattr(request, "hires", None)
        if hires is not None and (hires.prompt or hires.negative_prompt):
            hires = self.hires_applied(hires, names)
            return replace(request, prompt=prompt, negative_prompt=negative, hires=hires)  # type: ignore[type-var]
        return replace(request, prompt=prompt, negative_prompt=negative)  # type: ignore[type-var]

    def hires_applied(self, hires: Any, names: object) -> Any:
        """A hires fix (a dataclass with `prompt` and `negative_prompt`, "" for the first pass's) with the styles
        `names` applied to each of its own prompts that is given."""
        what = ("Hires prompt", "Hires negative prompt")
        prompt = self.apply(hires.prompt, "", names, what)[0] if hires.prompt else hires.prompt
        negative = (self.apply("", hires.negative_prompt, names, what)[1] if hires.negative_prompt
                    else hires.negative_prompt)
        return replace(hires, prompt=prompt, negative_prompt=negative)

    def extract(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """The styles a pasted prompt pair was made with and the pair without them: (names in the order they
        were applied, prompt, negative prompt). Each style is taken off once, the outermost first, and only
        where both its texts match (A1111's `extract_styles_from_prompt`)."""
        found: list[str] = []
        left = [style for style in self.styles if style.prompt or style.negative_prompt]
        while True:
            for style in left:
                inner = unwrap_style(style.prompt, prompt)
                inner_negative = unwrap_style(style.negative_prompt, negative_prompt)
                if inner is not None and inner_negative is not None:
                    prompt, negative_prompt = inner, inner_negative
                    found.append(style.name)
                    left.remove(style)
                    break
            else:
                return found[::-1], prompt, negative_prompt


def with_styles_read(fields: Mapping[str, Any], book: StyleBook) -> dict[str, Any]:
    """Parsed parameters (`pipelines.metadata.parse_parameters`) with the host's styles found in their prompts
    taken out into "Styles array" (A1111's infotext_utils.py, `parse_generation_parameters`, with its default
    "Apply if any"); unchanged where none is found."""
    names, prompt, negative = book.extract(str(fields.get(PROMPT, "")), str(fields.get(NEGATIVE_PROMPT, "")))
    if not names:
        return dict(fields)
    return {**fields, PROMPT: prompt, NEGATIVE_PROMPT: negative, STYLES_ARRAY: names}


def read_styles(text: str, source: str = "styles") -> StyleBook:
    """The styles of a styles.csv's text; rows that cannot be used are skipped, each with a log line."""
    reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
    header = reader.fieldnames or []
    if "name" not in header or not {"prompt", "text"} & set(header):
        log.warning("%s: no styles read: the first row must name the columns name,prompt,negative_prompt", source)
        return StyleBook()
    styles: dict[str, PromptStyle] = {}
    try:
        for row in reader:
            problem = _row_problem(row, len(styles))
            if problem:
                log.warning("%s: row %d skipped: %s", source, reader.line_num, problem)
                continue
            name = row["name"].strip()
            if not name or name.startswith("#"):  # A1111 reads "#" rows as comments
                continue
            styles[name] = PromptStyle(name, row.get("prompt", row.get("text")) or "", row.get("negative_prompt") or "")
    except csv.Error as error:
        log.warning("%s: reading stopped at row %d: %s", source, reader.line_num, error)
    return StyleBook(tuple(styles.values()))


def _row_problem(row: dict[str | None, object], count: int) -> str | None:
    """Why a row cannot be a style, or None."""
    if None in row:
        return "more fields than the header names"
    if count >= MAX_STYLES:
        return f"the file holds more than {MAX_STYLES} styles"
    name = row.get("name")
    if not isinstance(name, str):
        return "no name"
    if len(name.strip()) > MAX_NAME_CHARS:
        return f"a name longer than {MAX_NAME_CHARS} characters"
    for column in ("prompt", "text", "negative_prompt"):
        value = row.get(column)
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            return f"its {column} is longer than {MAX_TEXT_CHARS} characters"
    return None


def load_styles(path: str | Path | None) -> StyleBook:
    """The styles of the host's file (`--styles`); None, or a file that cannot be read, gives none (logged)."""
    if path is None:
        return StyleBook()
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        log.warning("--styles %s: no styles: %s", path, error.strerror or error)
        return StyleBook()
    if len(data) > MAX_FILE_BYTES:
        log.warning("--styles %s: no styles: the file is larger than %d KiB", path, MAX_FILE_BYTES >> 10)
        return StyleBook()
    try:
        text = data.decode("utf-8-sig")  # as A1111 reads it (a BOM, if any, left out)
    except UnicodeDecodeError as error:
        log.warning("--styles %s: no styles: not UTF-8 text (%s)", path, error.reason)
        return StyleBook()
    book = read_styles(text, f"--styles {path}")
    log.info("--styles %s: %d style(s)", path, len(book.styles))
    return book

