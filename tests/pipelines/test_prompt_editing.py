"""Prompt editing and alternation read into schedules (sd2_app/prompt_editing.py), against A1111's rules.

The expected schedules are A1111's: the examples documented in modules/prompt_parser.py (its module comment
and the doctests of `get_learned_conditioning_prompt_schedules`), and what that function returns for the
other rows (fractions, integers, offsets of the hires pass, escapes, empty parts, brackets that are text).
"""

from __future__ import annotations

import pytest

from sd2_app.prompt_editing import prompt_schedule

FANTASY = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
           "[ in background:0.25] [shoddy:masterful:0.5]")
ALTERNATING = [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]

TABLE_10_STEPS = [
    # A1111's doctests, 10 steps
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", ALTERNATING),
    ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
    ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
    # `when`: a '.' makes it a fraction of the steps, else it is a step; past the end or below 1 it never switches
    ("[a:b:0.3]", [(3, "a"), (10, "b")]),
    ("[a:b:1.0]", [(10, "a")]),
    ("[a:b:2.5]", [(10, "a")]),
    ("[a:b:2.]", [(10, "a")]),
    ("[a:b:1e1]", [(10, "a")]),  # an exponent without a dot is an integer step: 10
    ("[a:b:12]", [(10, "a")]),
    ("[a:b:1e400]", [(10, "a")]),  # infinite: past the end (A1111's int() raises OverflowError on it)
    ("[a:b:0]", [(10, "b")]),
    ("[a:b:-3]", [(10, "b")]),
    ("[a:b:+3]", [(3, "a"), (10, "b")]),
    ("x [a:b: 5 ] y", [(5, "x a y"), (10, "x b y")]),
    ("[a::3]", [(3, "a"), (10, "")]),
    ("[:b:3]", [(3, ""), (10, "b")]),
    # nesting and mixing
    ("[[a|b]:c:3]", [(1, "a"), (2, "b"), (3, "a")] + [(step, "c") for step in range(4, 11)]),
    ("[ [a:b:2] : c : 4 ]", [(2, " a "), (4, " b "), (10, " c ")]),
    ("[a|b|c]", [(step, "abc"[(step - 1) % 3]) for step in range(1, 11)]),
    ("[|]", [(step, "") for step in range(1, 11)]),
    # attention syntax, BREAK and escapes pass through to each step's text
    ("(x [a:b:3]:1.2)", [(3, "(x a:1.2)"), (10, "(x b:1.2)")]),
    ("[(cat:1.2):dog BREAK x:2]", [(2, "(cat:1.2)"), (10, "dog BREAK x")]),
    ("a [cat:dog:0.5]\\:1 e", [(5, "a cat\\:1 e"), (10, "a dog\\:1 e")]),
    ("a [x\\]y:3]", [(3, "a "), (10, "a x\\]y")]),
    ("[a\\|b:2]", [(2, ""), (10, "a\\|b")]),
    ("\\[a:b:3\\]", [(10, "\\[a:b:3\\]")]),
    ("[a\\|b]", [(10, "[a\\|b]")]),
    ("[a:b:3] c\\\\", [(3, "a c\\\\"), (10, "b c\\\\")]),  # an escaped backslash at the end
    ("a\\\\[b:3]", [(3, "a\\\\"), (10, "a\\\\b")]),  # escapes pair from the left: `\\`, then an edit
    # no schedule: a `|` outside an alternation or a trailing backslash leaves the whole prompt as it is
    ("[a:b:5] | c", [(10, "[a:b:5] | c")]),
    ("(a|b) [c:d:2]", [(10, "(a|b) [c:d:2]")]),
    ("[c:d:2] a\\", [(10, "[c:d:2] a\\")]),
    # brackets that are text: three parts before the number, no number, unclosed; A1111's parser then reads an
    # edit directly followed by an even run of text brackets as text too
    ("[a:b:c:5]", [(10, "[a:b:c:5]")]),
    ("[a:b]", [(10, "[a:b]")]),
    ("[a:b:5", [(10, "[a:b:5")]),
    ("[x:3]]", [(3, "]"), (10, "x]")]),
    ("[x:3]]]", [(10, "[x:3]]]")]),
    ("[x:3]]]]", [(3, "]]]"), (10, "x]]]")]),
    ("[[a:b:3]]:", [(10, "[[a:b:3]]:")]),
    ("[[a:b:3]]::", [(3, "[a]::"), (10, "[b]::")]),
    ("[a:b:3]](x)::", [(10, "[a:b:3]](x)::")]),
]


@pytest.mark.parametrize("prompt, expected", TABLE_10_STEPS)
def test_schedule_of_ten_steps(prompt: str, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedule(prompt, 10) == expected


def test_a1111_module_comment_example_at_100_steps() -> None:
    assert prompt_schedule(FANTASY, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


@pytest.mark.parametrize("prompt, expected", [
    ("a [b:.5] c", [(10, "a b c")]),  # a fraction below 1 belongs to the first pass
    ("a [b:1.5] c", [(5, "a  c"), (10, "a b c")]),  # above 1: into the second pass
    ("a [b:12] c", [(2, "a  c"), (10, "a b c")]),  # integers count on from the first pass's 10 steps
    ("a [b:5] c", [(10, "a b c")]),
])
def test_hires_second_pass_offsets(prompt: str, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedule(prompt, 10, first_pass_steps=10) == expected


def test_deep_and_long_prompts() -> None:
    """Any nesting depth and 2000 characters of brackets read without recursion limits, as A1111 reads them."""
    deep = "(" * 1500 + "[a:b:1]" + ")" * 1500
    assert prompt_schedule(deep, 5) == [(1, "(" * 1500 + "a" + ")" * 1500), (5, "(" * 1500 + "b" + ")" * 1500)]
    assert prompt_schedule("[" * 31 + "a:1" + "]" * 31, 5) == [(1, "[" * 30 + "]" * 30), (5, "[" * 30 + "a" + "]" * 30)]
    assert prompt_schedule("[" * 2000, 150) == [(150, "[" * 2000)]
    assert prompt_schedule("[x:3]" * 400, 150) == [(3, ""), (150, "x" * 400)]
    assert prompt_schedule("[a|" * 500, 4) == [(4, "[a|" * 500)]
