"""Prompt editing and alternation (AUTOMATIC1111's web UI rules; learned from A1111 modules/prompt_parser.py,
`get_learned_conditioning_prompt_schedules`): a prompt becomes a schedule of plain prompts, one per stretch
of sampling steps.

    [from:to:when]   `from` up to step `when`, then `to`       [to:when]  nothing, then `to`
    [from::when]     `from`, then nothing                     [a|b|c]    a, b, c, a, ... one per step
    when             an integer: that step; with a '.' (0.25, 1.0, 5.): that fraction of the steps

Nesting works (`a [b:[c:d:2]:1] e`), and so does the attention syntax inside the parts (`[(cat:1.2):dog:5]`):
each step's plain prompt keeps its brackets, weights, BREAKs and embedding names for `prompt_syntax`.
`\\[`, `\\]`, `\\(`, `\\)`, `\\:` and `\\|` are literal (the backslash stays in the step's text; the attention
parser then drops it before `:` and `|`).

What is a construct: a bracket group whose brackets match (`[`..`]`, `(`..`)`), whose parts are split at the
group's own `:` and `|`, and whose nested groups are constructs too. `(a)` and `(a:b)` are emphasis, `[a]`
too; `[a|b|...]` is alternation (empty parts allowed), `[a:b:N]` / `[b:N]` editing, where N is a number
(optional sign, digits, a dot, an exponent; spaces around it allowed). At the top level a bracket or colon
that starts no construct is text; a `|` outside every alternation, or a backslash at the very end or before
a line break, makes the whole prompt unreadable as a schedule: it is then used as it is for every step, as
A1111 does when its grammar rejects a prompt.

Steps, A1111's numbering: the schedule ends at `steps`; a plain prompt is `[(steps, prompt)]`. An edit at
step N adds a boundary at N (kept only when 1 <= N; capped at `steps`); an alternation adds every step
1..steps. The text for boundary t takes `from` where t <= N, alternative (t - 1) mod n. For the second pass of
the hires fix (`first_pass_steps` given), integers count on from the first pass (`[a:b:25]` after a 20-step
first pass switches at the second pass's step 5) and fractions above 1 reach into it (`1.5`: half way).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Union

_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")  # lark's SIGNED_NUMBER, spaced
_SPECIAL = frozenset("[]():|\\")


@dataclass(frozen=True)
class _Edit:
    """[before:after:when]; `before` is None for the [after:when] form."""

    before: tuple[_Node, ...] | None
    after: tuple[_Node, ...]
    when: str  # the number as written


@dataclass(frozen=True)
class _Alternation:
    options: tuple[tuple[_Node, ...], ...]


_Node = Union[str, _Edit, _Alternation]
Schedule = list[tuple[int, str]]  # (last step of this text, plain prompt), steps ascending, the last one `steps`


class _Unreadable(Exception):
    """The prompt has no reading as a schedule (a stray `|`, a trailing backslash)."""


class _Reader:
    """A recursive-descent reader; each bracket group's reading is computed once (`_groups`), so a prompt of n
    characters costs O(n) however its brackets fail to match."""

    def __init__(self, prompt: str) -> None:
        self.text = prompt
        self._groups: dict[int, tuple[int, tuple[_Node, ...]] | None] = {}

    def escape_at(self, i: int) -> str:
        if i + 1 >= len(self.text) or self.text[i + 1] == "\n":
            raise _Unreadable
        return self.text[i:i + 2]

    def top(self) -> list[_Node]:
        """The whole prompt: each `[` or `(` a construct or text (`_top_choices`), the other brackets and colons
        text."""
        literal = self._top_choices()
        nodes: list[_Node] = []
        i = 0
        while i < len(self.text):
            char = self.text[i]
            if char in "[(" and not literal[i]:
                i, inner = self.group(i)  # type: ignore[misc]  # _top_choices found it
                nodes.extend(inner)
            elif char == "\\":
                nodes.append(self.escape_at(i))
                i += 2
            else:
                nodes.append(char)
                i += 1
        return _joined(nodes)

    def _top_choices(self) -> list[bool]:
        """For each top-level position, whether a `[` or `(` there is text; raises _Unreadable when no reading
        covers the prompt (a `|` outside every alternation).

        A1111's grammar lets a top-level bracket be text or open a construct, and its parser (lark's Earley,
        resolving ambiguity) picks one reading. That pick, measured against A1111's parser, depends on the run
        of top-level bracket and colon characters that are text right after the construct (`_reads_as_text`):
        `[x:3]]` edits and `[x:3]]]` is text. Worked out right to left: `run[i]` is the length of the
        text-bracket run that starts at i (-1: no reading from i on).
        """
        size = len(self.text)
        run = [0] * (size + 2)
        literal = [False] * (size + 1)
        bracket_run_before, escaped = self._bracket_runs()
        for i in range(size - 1, -1, -1):
            char = self.text[i]
            if escaped[i]:  # the character after a backslash: text, read with it
                continue
            if char == "\\":
                run[i] = 0 if run[i + 2] >= 0 else -1
            elif char == "|":
                run[i] = -1
            elif char in "[(":
                as_text = -1 if run[i + 1] < 0 else 1 + run[i + 1]
                group = self.group(i)
                end = -1 if group is None else group[0]
                after = -1 if end < 0 else run[end]
                literal[i] = after < 0 or (as_text >= 0 and _reads_as_text(end, bracket_run_before, after))
                run[i] = as_text if literal[i] else 0
            elif char in "]):":
                run[i] = -1 if run[i + 1] < 0 else 1 + run[i + 1]
            else:
                run[i] = 0 if run[i + 1] >= 0 else -1
        if run[0] < 0:
            raise _Unreadable
        return literal

    def _bracket_runs(self) -> tuple[list[int], list[bool]]:
        """For each position, how many unescaped `[]():` characters end there in a row (0 for any other), and
        whether it is the character after an escaping backslash (escapes pair from the left: `\\\\[` is a
        backslash, then a bracket)."""
        counts = [0] * len(self.text)
        escaped = [False] * len(self.text)
        i = 0
        while i < len(self.text):
            if self.text[i] == "\\":
                self.escape_at(i)
                escaped[i + 1] = True
                i += 2
                continue
            if self.text[i] in "[]():":
                counts[i] = 1 + (counts[i - 1] if i else 0)
            i += 1
        return counts, escaped

    def part(self, i: int) -> tuple[int, list[_Node]] | None:
        """The nodes from `i` up to the next `:`, `|`, `]` or `)` of this level; None if a group in it is none."""
        nodes: list[_Node] = []
        while i < len(self.text) and self.text[i] not in ":|])":
            char = self.text[i]
            if char in "[(":
                group = self.group(i)
                if group is None:
                    return None
                i, inner = group
                nodes.extend(inner)
            elif char == "\\":
                nodes.append(self.escape_at(i))
                i += 2
            else:
                start = i
                while i < len(self.text) and self.text[i] not in _SPECIAL:
                    i += 1
                nodes.append(self.text[start:i])
        return i, nodes

    def group(self, i: int) -> tuple[int, tuple[_Node, ...]] | None:
        """(end, nodes) of the construct opening at `i`, or None when it is not one. `_top_choices` asks for every
        opening bracket from the last to the first, so a group's inner groups are already read: no recursion
        deeper than one group, however deep the nesting."""
        if i not in self._groups:
            self._groups[i] = self._read_group(i)
        return self._groups[i]

    def _read_group(self, i: int) -> tuple[int, tuple[_Node, ...]] | None:
        opener = self.text[i]
        closer = "]" if opener == "[" else ")"
        parts: list[list[_Node]] = []
        separators: list[str] = []
        while True:
            read = self.part(i + 1)
            if read is None or read[0] >= len(self.text):
                return None
            i, nodes = read
            parts.append(nodes)
            if self.text[i] == closer:
                break
            if self.text[i] not in ":|":
                return None
            separators.append(self.text[i])
        end = i + 1
        built = _emphasis(opener, parts, separators) if opener == "(" else _square(parts, separators)
        return None if built is None else (end, built)


def _reads_as_text(end: int, bracket_runs: list[int], after: int) -> bool:
    """Whether A1111's parser reads a top-level construct ending before `end` that could be text as text, given
    the run of text brackets `after` it: when that run is not empty and, with the brackets that end the
    construct (`]`, `)]`, ...), makes an odd run of 3 or more."""
    merged = bracket_runs[end - 1] + after
    return after >= 1 and merged >= 3 and merged % 2 == 1


def _emphasis(opener: str, parts: list[list[_Node]], separators: list[str]) -> tuple[_Node, ...] | None:
    """(a) and (a:b) keep their brackets and colon as text; anything else in round brackets is no construct."""
    if separators == []:
        return ("(", *parts[0], ")")
    if separators == [":"]:
        return ("(", *parts[0], ":", *parts[1], ")")
    return None


def _square(parts: list[list[_Node]], separators: list[str]) -> tuple[_Node, ...] | None:
    if not separators:
        return ("[", *parts[0], "]")
    if set(separators) == {"|"}:
        return (_Alternation(tuple(tuple(part) for part in parts)),)
    if set(separators) != {":"} or len(parts) > 3:
        return None
    when = parts[-1]
    match = _NUMBER.fullmatch("".join(when)) if all(isinstance(n, str) for n in when) else None
    if match is None:
        return None
    before = tuple(parts[0]) if len(parts) == 3 else None
    return (_Edit(before, tuple(parts[-2]), match.group(1)),)


def _joined(nodes: list[_Node]) -> list[_Node]:
    """Neighbouring text nodes as one string."""
    out: list[_Node] = []
    for node in nodes:
        if isinstance(node, str) and out and isinstance(out[-1], str):
            out[-1] += node
        else:
            out.append(node)
    return out


@dataclass(frozen=True)
class _Steps:
    """How an edit's number becomes a step: A1111's rule, with the hires second pass's offsets."""

    steps: int
    int_offset: int = 0
    fraction_offset: float = 0.0

    def step_of(self, when: str) -> int:
        """The edit's last step of `from`: <= 0 means never, capped at `steps`."""
        value = float(when)
        value = (value - self.fraction_offset) * self.steps if "." in when else value - self.int_offset
        if math.isnan(value) or value < 1:
            return 0
        return self.steps if value >= self.steps else int(value)  # A1111 int()s first; inf would raise there


def _boundaries(nodes: tuple[_Node, ...] | list[_Node], steps: _Steps, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Edit):
            step = steps.step_of(node.when)
            if step >= 1:
                found.add(step)
            _boundaries(node.before or (), steps, found)
            _boundaries(node.after, steps, found)
        elif isinstance(node, _Alternation):
            found.update(range(1, steps.steps + 1))
            for option in node.options:
                _boundaries(option, steps, found)


def _text_at(nodes: tuple[_Node, ...] | list[_Node], step: int, steps: _Steps) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            chosen = (node.before or ()) if step <= steps.step_of(node.when) else node.after
            out.append(_text_at(chosen, step, steps))
        else:
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(out)


def _read(prompt: str) -> list[_Node] | None:
    try:
        return _Reader(prompt).top()
    except _Unreadable:
        return None


def prompt_schedule(prompt: str, steps: int, first_pass_steps: int | None = None) -> Schedule:
    """[(last step, plain prompt), ...] for a run of `steps` steps; `first_pass_steps` for the hires fix's second
    pass (see the module docstring). A prompt without editing or alternation is `[(steps, prompt)]`."""
    nodes = _read(prompt)
    if nodes is None or all(isinstance(node, str) for node in nodes):
        return [(steps, prompt)]
    rule = _Steps(steps) if first_pass_steps is None else _Steps(steps, first_pass_steps, 1.0)
    found = {steps}
    _boundaries(nodes, rule, found)
    return [(step, _text_at(nodes, step, rule)) for step in sorted(found)]


def prompt_variants(prompt: str, steps: int) -> list[str]:
    """The different plain prompts of `prompt`'s schedule over `steps` steps, in order of first use."""
    return list(dict.fromkeys(text for _, text in prompt_schedule(prompt, steps)))
