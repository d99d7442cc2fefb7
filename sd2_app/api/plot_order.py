"""The X/Y/Z plot's "Prompt order" axis (A1111 scripts/xyz_grid.py, `apply_order`): every order of the listed
terms, each cell's prompt with the terms put back in that order where the prompt had them.

The terms are found at their first place in the prompt (not the negative prompt, as in A1111); the listed order
is the first cell. n terms give n! orders, so the axis is bounded by the plot's cell limit before any order is
made. Imports no torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from sd2_app.errors import InvalidRequest, shown

_MAX_COUNTED_TERMS = 20  # 20! still reads as a number; beyond that the message says "n!"


def _orders_text(terms: int) -> str:
    return f"{math.factorial(terms):,}" if terms <= _MAX_COUNTED_TERMS else f"{terms}!"


def _most_terms(max_values: int) -> int:
    """The most terms whose orders fit in `max_values` values."""
    terms = 1
    while math.factorial(terms + 1) <= max_values:
        terms += 1
    return terms


def _first_repeated(terms: Sequence[str]) -> str | None:
    """The first term listed a second time, or None (one pass: a visitor may send many thousands of terms)."""
    seen: set[str] = set()
    for term in terms:
        if term in seen:
            return term
        seen.add(term)
    return None


def prompt_orders(tokens: Sequence[Any], what: str, max_values: int) -> list[tuple[str, ...]]:
    """The orders an axis's values stand for: every order of the listed terms (text), or, when every value is
    itself a list of terms (a checked plot's values, or an API client's own choice), those orders as given."""
    if all(isinstance(token, (list, tuple)) for token in tokens):
        orders = [tuple(str(term) for term in token) for token in tokens]
        terms = orders[0]
        if any(sorted(order) != sorted(terms) for order in orders):
            raise InvalidRequest(f"{what}: every order must list the same terms as the first, {shown(list(terms))}.")
    else:
        terms = tuple(str(token) for token in tokens)
        orders = []
    twice = _first_repeated(terms)
    if twice is not None:
        raise InvalidRequest(f"{what}: {shown(twice)} is listed twice; list each term once.")
    if not orders:
        if len(terms) > _MAX_COUNTED_TERMS or math.factorial(len(terms)) > max_values:
            raise InvalidRequest(f"{what}: {len(terms)} terms give {_orders_text(len(terms))} orders; an axis may "
                                 f"have at most {max_values} values, so list at most {_most_terms(max_values)} terms.")
        orders = list(itertools.permutations(terms))
    if len(orders) > max_values:
        raise InvalidRequest(f"{what} have more than {max_values} values.")
    return orders


def _places(prompt: str, terms: Sequence[str]) -> list[tuple[int, int]]:
    """(start, end) of each term's first place in `prompt`, in prompt order; refused when one is missing or two
    overlap (the terms could not be put back)."""
    missing = [term for term in terms if term not in prompt]
    if missing:
        raise InvalidRequest(f"Prompt order did not find {', '.join(map(shown, missing))} in the prompt.")
    places = sorted((prompt.find(term), prompt.find(term) + len(term), term) for term in terms)
    for (_, end, term), (start, _, other) in zip(places, places[1:]):
        if start < end:
            raise InvalidRequest(f"Prompt order: {shown(term)} and {shown(other)} overlap in the prompt; list terms that "
                                 "do not.")
    return [(start, end) for start, end, _ in places]


def check_order_terms(prompt: str, terms: Sequence[str]) -> None:
    """Refuse terms `reorder` could not place in `prompt`, in words."""
    _places(prompt, terms)


def reorder(prompt: str, order: Sequence[str]) -> str:
    """`prompt` with the terms of `order` in its places: the place of the first term in the prompt gets the
    order's first term, and so on."""
    pieces, last = [], 0
    for (start, end), term in zip(_places(prompt, order), order):
        pieces += [prompt[last:start], term]
        last = end
    return "".join(pieces) + prompt[last:]
