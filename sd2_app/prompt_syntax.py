"""The attention syntax people write in prompts (AUTOMATIC1111's web UI rules; A1111 modules/prompt_parser.py,
`parse_prompt_attention`), read into runs of text with one weight each.

    (text)      the attention of text's tokens x 1.1        [text]   / 1.1
    (text:1.5)  x 1.5 (the number: digits and dots, an optional sign; no exponent)
    ((text))    nesting multiplies: x 1.21
    \\( \\) \\[ \\] \\\\  literal brackets and backslash
    BREAK       (upper case, a word of its own) ends the current 75-token chunk

A bracket that is never closed counts as closed at the end of the prompt; a closing bracket with no opener
is literal text; a lone backslash before any other character is dropped (as A1111 does). Nothing here
raises: every string is a prompt. Where A1111 differs (it raises on `(a:1.2.3)` and reads a BREAK inside
brackets literally), the README's prompt section says what we do instead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
MAX_WEIGHT = 10.0  # final weights are clamped to [-MAX_WEIGHT, MAX_WEIGHT]: fp16 states x 1.1**200 would overflow

# One lexical piece of a prompt; the alternatives are tried in order, as in A1111's `re_attention`.
_PIECE = re.compile(
    r"""
    \\[()\[\]\\]                               # escaped bracket or backslash: literal
    | \\                                       # lone backslash: dropped
    | \(                                       # open round
    | \[                                       # open square
    | :([+-]?(?:\d+(?:\.\d*)?|\.\d+))\)      # ":1.5)": close round with an explicit weight
    | \)                                       # close round
    | \]                                       # close square
    | [^\\()\[\]:]+                            # plain text
    | :                                        # a colon that starts no weight: literal
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\bBREAK\b")  # the whitespace around it goes too (`_split_breaks`)
EXTRA_NETWORK = re.compile(r"<\w+:[^>]+>")  # A1111 modules/extra_networks.py re_extra_net: <lora:name:0.8>
OTHER_EXTRA_NETWORK = re.compile(r"<(?!(?:lora|lyco):)\w+:[^>]+>")  # all but LoRAs (sd2_app/lora_tags.py)
EXTRA_NETWORKS = "extra network"
# A1111 syntax we do not support (see `unsupported_syntax`), each with what A1111 calls it (prompt editing and
# alternation are supported: sd2_app/prompt_editing.py reads them before this parser sees each step's text; so are
# composable prompts, `subprompts`):
UNSUPPORTED = (
    (EXTRA_NETWORKS, OTHER_EXTRA_NETWORK),  # hypernetworks and the like; LoRAs are supported (lora_tags.py)
)
# Composable prompts (A1111 modules/prompt_parser.py, `re_AND` and `re_weight`): the prompt is cut at each AND, a
# word of its own wherever it is (inside brackets too), and a number after a colon at the end of a part (spaces
# around them aside) is its weight. A1111's `re_weight` finds it with a lazy match of the whole part, which takes
# time quadratic in a run of spaces; searched for at the end of the part without its trailing spaces, as here, it
# is the same number in one pass.
_AND = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r":\s*([-+]?(?:\d+\.?|\d*\.\d+))$")


@dataclass(frozen=True)
class Run:
    """A stretch of prompt text whose tokens all get `weight`; `is_break` marks a BREAK (text "BREAK")."""

    text: str
    weight: float = 1.0
    is_break: bool = False


BREAK = Run("BREAK", 1.0, is_break=True)


def _split_breaks(text: str) -> list[list]:
    """Plain text -> [text, 1.0] runs with a BREAK between the parts it separates."""
    out: list[list] = []
    parts = _BREAK.split(text)
    for index, part in enumerate(parts):
        if index:
            out.append([BREAK, 1.0])
            part = part.lstrip()
        out.append([part.rstrip() if index < len(parts) - 1 else part, 1.0])
    return out


def _clamp(weight: float) -> float:
    return max(-MAX_WEIGHT, min(MAX_WEIGHT, weight))


def parse_attention(prompt: str) -> list[Run]:
    """`prompt` as runs of (text, weight) and BREAKs, neighbours of equal weight merged, empty runs dropped.

    An empty prompt (or one of brackets only) is one run `Run("", 1.0)`.
    """
    return _merge(_weighted_pieces(prompt))


def clamped_weights(prompt: str) -> list[tuple[str, float]]:
    """The (text, weight asked for) of each stretch of `prompt` whose weight `parse_attention` clamped to
    ±MAX_WEIGHT, in prompt order (neighbours asking the same weight merged), so a caller can say so."""
    clamped: list[tuple[str, float]] = []
    for text, weight in _weighted_pieces(prompt):
        if text is BREAK or not text or math.isnan(weight) or _clamp(weight) == weight:
            continue
        if clamped and clamped[-1][1] == weight:
            clamped[-1] = (clamped[-1][0] + text, weight)
        else:
            clamped.append((text, weight))
    return clamped


def _weighted_pieces(prompt: str) -> list[list]:
    """`prompt` as [text or BREAK, weight] pieces in prompt order, weights multiplied out, not yet clamped."""
    pieces: list[list] = []  # [text or BREAK, weight] in prompt order; weights are multiplied in place
    round_open: list[int] = []  # indices into `pieces` where an unclosed "(" started
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _PIECE.finditer(prompt):
        piece, explicit = match.group(0), match.group(1)
        if piece.startswith("\\"):
            if len(piece) == 2:
                pieces.append([piece[1], 1.0])
        elif piece == "(":
            round_open.append(len(pieces))
        elif piece == "[":
            square_open.append(len(pieces))
        elif explicit is not None and round_open:
            scale_from(round_open.pop(), float(explicit))
        elif piece == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:  # text, an unmatched closing bracket, ":1.5)" with no "(" open, a lone ":"
            pieces.extend(_split_breaks(piece))
    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)
    return pieces


def _merge(pieces: list[list]) -> list[Run]:
    runs: list[Run] = []
    for text, weight in pieces:
        if text is BREAK:
            runs.append(BREAK)
            continue
        if not text:
            continue
        weight = 0.0 if math.isnan(weight) else _clamp(weight)  # nan: a weight of 0 times an overflowed one
        if runs and not runs[-1].is_break and runs[-1].weight == weight:
            runs[-1] = Run(runs[-1].text + text, weight)
        else:
            runs.append(Run(text, weight))
    return runs or [Run("", 1.0)]


def escape(text: str) -> str:
    """`text` with brackets and backslashes escaped, so that it parses back to itself at weight 1."""
    return re.sub(r"([()\[\]\\])", r"\\\1", text)


def without_extra_networks(prompt: str) -> str:
    """`prompt` with its extra-network tags (`<lora:name:0.8>`) taken out, as A1111 takes them out of the prompt
    before reading it (modules/extra_networks.py `parse_prompt`, called on the prompts only, not the negative
    prompts, by modules/processing.py `parse_extra_network_prompts`; its token counter takes them out of both
    boxes, modules/ui.py `update_token_counter`). The LoRAs among them are read by sd2_app/lora_tags.py."""
    return EXTRA_NETWORK.sub("", prompt)


def unsupported_syntax(prompt: str) -> list[tuple[str, str]]:
    """(A1111's name of the feature, its first use in `prompt`) for each piece of A1111 prompt syntax that we do
    not support (AND, extra networks other than LoRA), in `UNSUPPORTED`'s order, so the caller can say so.
    `parse_attention` reads AND as text with the bracket rules; extra networks are taken out of the prompt before
    it is read (`without_extra_networks`) and read as text in the negative prompt, as A1111 does."""
    found = []
    for name, pattern in UNSUPPORTED:
        match = pattern.search(prompt)
        if match:
            found.append((name, match.group(0)))
    return found


def subprompts(prompt: str) -> list[tuple[str, float]]:
    """A1111's composable prompts (modules/prompt_parser.py, `get_multicond_prompt_list`): the (text, weight) of each
    part of `prompt` between ANDs, in order; a part's weight is the number after a colon at its end (its text is
    what comes before), else 1. The UNet reads each part apart and guidance adds up their pulls, each times its
    weight (sd2_app.pipelines.loop). As in A1111, every prompt is read so, AND or not: "a photo, 16:9" is
    "a photo, 16" at weight 9. A prompt of one part without a weight is itself, as written; otherwise the texts
    are stripped (the text encoder reads no spaces at either end) and a text given twice is one part, its weights
    added."""
    pieces = []
    for piece in _AND.split(prompt):
        piece = piece.rstrip()
        weight = _PART_WEIGHT.search(piece)
        pieces.append((piece[:weight.start()] if weight else piece, float(weight.group(1)) if weight else None))
    if len(pieces) == 1 and pieces[0][1] is None:
        return [(prompt, 1.0)]
    parts: dict[str, float] = {}
    for text, weight in pieces:
        parts[text.strip()] = parts.get(text.strip(), 0.0) + (weight if weight is not None else 1.0)
    return list(parts.items())


def prompt_parts(prompt: str) -> list[tuple[str, float]]:
    """The composable parts (`subprompts`) of a prompt as the model reads it: its extra-network tags taken out
    first, as A1111 takes them out before it cuts at AND."""
    return subprompts(without_extra_networks(prompt))


def is_composable(prompt: str) -> bool:
    """Whether `prompt` has parts joined by AND or a part weight other than 1: its guidance is A1111's composable
    sum, with one more UNet row per image and part."""
    parts = prompt_parts(prompt)
    return len(parts) > 1 or parts[0][1] != 1.0
