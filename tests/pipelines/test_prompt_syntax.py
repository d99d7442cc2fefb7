"""The attention syntax parser: A1111's rules (modules/prompt_parser.py) as a table, and properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sd2_app.api.task_checks import syntax_warnings, weight_warnings
from sd2_app.prompt_syntax import (
    MAX_WEIGHT, clamped_weights, escape, parse_attention, subprompts, unsupported_syntax, without_extra_networks,
)

B = "BREAK"  # a BREAK in the expected runs


def runs(prompt: str) -> list:
    return [B if run.is_break else (run.text, run.weight) for run in parse_attention(prompt)]


TABLE = [
    # plain text and the empty prompt
    ("normal text", [("normal text", 1.0)]),
    ("", [("", 1.0)]),
    ("   ", [("   ", 1.0)]),
    # round and square brackets, explicit weights (A1111's own doctests first)
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("[muted]", [("muted", 1 / 1.1)]),
    ("[[muted]]", [("muted", 1 / 1.1 / 1.1)]),
    ("((a))", [("a", 1.1 * 1.1)]),
    ("(red:1.3) hat", [("red", 1.3), (" hat", 1.0)]),
    ("(red hat:1.5)", [("red hat", 1.5)]),
    ("(red:.5)", [("red", 0.5)]),
    ("(red:+2)", [("red", 2.0)]),
    ("(red:0)", [("red", 0.0)]),
    ("(red:-1)", [("red", -1.0)]),
    ("(red:1.)", [("red", 1.0)]),
    ("((red:2):2)", [("red", 4.0)]),
    ("[(red:2)]", [("red", 2 / 1.1)]),
    # weights we clamp, numbers that are not weights
    ("(red:1000)", [("red", MAX_WEIGHT)]),
    ("(red:-1000)", [("red", -MAX_WEIGHT)]),
    ("(red:1e3)", [("red:1e3", 1.1)]),  # no exponents in the syntax: text, in a (...) group
    ("(red:1.2.3)", [("red:1.2.3", 1.1)]),  # A1111 raises here; we read the text
    ("(red: 1.5)", [("red: 1.5", 1.1)]),  # a space before the number: text, as in A1111
    ("(red:abc)", [("red:abc", 1.1)]),
    ("time: 10:30", [("time: 10:30", 1.0)]),
    ("red:1.5)", [("red:1.5)", 1.0)]),  # no "(" open: all literal
    # unmatched and empty brackets
    ("a)b", [("a)b", 1.0)]),
    ("a]b", [("a]b", 1.0)]),
    ("[a", [("a", 1 / 1.1)]),
    ("((a)", [("a", 1.21)]),
    ("()", [("", 1.0)]),
    ("[]()", [("", 1.0)]),
    ("([a)]", [("a", 1.0)]),  # ")" closes "(", "]" closes "[": x1.1 / 1.1
    # escapes
    ("\\\\", [("\\", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a lone backslash is dropped, as in A1111
    ("\\(a\\)", [("(a)", 1.0)]),
    ("(\\(a\\))", [("(a)", 1.1)]),
    # BREAK
    ("a BREAK b", [("a", 1.0), B, ("b", 1.0)]),
    ("a\nBREAK\nb", [("a", 1.0), B, ("b", 1.0)]),
    ("BREAK", [B]),
    ("a BREAK BREAK b", [("a", 1.0), B, B, ("b", 1.0)]),
    ("a break b", [("a break b", 1.0)]),  # lower case is text
    ("aBREAK b", [("aBREAK b", 1.0)]),  # not a word of its own
    ("(a BREAK b)", [("a", 1.1), B, ("b", 1.1)]),  # A1111 reads this BREAK as text; we break
    ("a, BREAK, b", [("a,", 1.0), B, (", b", 1.0)]),
    # unicode
    ("café (crème:1.2) 日本", [("café ", 1.0), ("crème", 1.2), (" 日本", 1.0)]),
    ("🐱 [ねこ]", [("🐱 ", 1.0), ("ねこ", 1 / 1.1)]),
]


@pytest.mark.parametrize("prompt, expected", TABLE, ids=[repr(p) for p, _ in TABLE])
def test_parse_table(prompt: str, expected: list) -> None:
    got = runs(prompt)
    assert len(got) == len(expected), got
    for run, want in zip(got, expected):
        if want == B:
            assert run == B
        else:
            assert run[0] == want[0] and run[1] == pytest.approx(want[1], rel=1e-12), (got, expected)


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 30


def test_weights_of_a1111_doctest_exactly() -> None:
    """The nesting products are A1111's own floats, not only approximately."""
    got = runs("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert got[1] == ("house", 1.5730000000000004) and got[7] == ("sky", 1.4641000000000006)


# Text without syntax characters or a BREAK word: parses to itself at weight 1.
plain_text = st.text(st.characters(blacklist_characters="()[]\\", blacklist_categories=("Cs",)), max_size=200).filter(
    lambda s: "BREAK" not in s)


@settings(max_examples=300, deadline=None)
@given(plain_text)
def test_weight_one_prompts_parse_to_themselves(text: str) -> None:
    assert runs(text) == [(text, 1.0)]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200).filter(lambda s: "BREAK" not in s))
def test_escaped_text_parses_to_itself(text: str) -> None:
    assert runs(escape(text)) == [(text, 1.0)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab ()[]:\\.0123456789-+BREAK\n", max_size=60))
def test_any_text_parses_without_error_into_bounded_weights(text: str) -> None:
    got = parse_attention(text)
    assert got
    for run in got:
        assert -MAX_WEIGHT <= run.weight <= MAX_WEIGHT
    kept = "".join(run.text for run in got if not run.is_break)
    assert len(kept) <= len(text)


@pytest.mark.parametrize("prompt, expected", [
    ("(cat:15)", [("cat", 15.0)]),
    ("a (cat:10) b", []),  # at the limit: nothing was changed
    ("(a:-20) x (b:12)(c:12)", [("a", -20.0), ("bc", 12.0)]),
    ("(" * 30 + "dog" + ")" * 30, [("dog", 1.1 ** 30)]),
    ("((red:1000)) BREAK (blue:2)", [("red", 1000 * 1.1)]),
    ("[[(blurry:-12)]]", []),  # -12 / 1.21 is within the limit
])
def test_clamped_weights_name_what_was_asked(prompt: str, expected: list) -> None:
    got = clamped_weights(prompt)
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert [weight for _, weight in got] == pytest.approx([weight for _, weight in expected])
    assert [run.weight for run in parse_attention(prompt) if any(run.text == t for t, _ in expected)] == \
        [MAX_WEIGHT if w > 0 else -MAX_WEIGHT for _, w in expected]


def test_weight_warnings_exact_text() -> None:
    assert weight_warnings("(cat:15)", "prompt") == [
        'The prompt asks for weight 15 on "cat"; attention weights are limited to ±10, so 10 was used.']
    assert weight_warnings("(a:-20) (b:12) (c:11) (d  e:13)", "negative prompt") == [
        'The negative prompt asks for weights -20 on "a", 12 on "b", 11 on "c" and 1 more; attention weights are '
        "limited to ±10, so -10, 10, 10 and so on were used."]
    assert weight_warnings("((a very long stretch of words that goes on:10))", "prompt") == [
        'The prompt asks for weight 11 on "a very long stretch of words …"; attention weights are limited to ±10, '
        "so 10 was used."]
    assert weight_warnings("(cat:1.5)", "prompt") == []


@pytest.mark.parametrize("prompt, expected", [
    ("<lora:add_detail:0.8> a cat, <hypernet:x:1>", [("extra network", "<hypernet:x:1>")]),  # LoRAs: lora_tags
    ("[a:b:1] [c|d] e AND f <lyco:g:1> <lora:h> <hypernet:y>", [("extra network", "<hypernet:y>")]),
    ("a cat AND a dog:1.2", []),  # composable prompts: `subprompts`
    # what we do support (prompt editing and alternation too: sd2_app/prompt_editing.py), or text: nothing to say
    ("a (cat:1.2) [dog] \\[x:1\\] [a:b] sand and land, time 10:30, a<b>c", []),
    ("a [cat:dog:0.5] b [cat:3] [dog::0.25] [x: 7] [cat|dog|cow]", []),
])
def test_unsupported_a1111_syntax_is_found(prompt: str, expected: list) -> None:
    assert unsupported_syntax(prompt) == expected


def test_syntax_warnings_exact_text() -> None:
    assert syntax_warnings("a [cat:dog:0.5] AND <hypernet:a_very_long_hypernetwork_name:0.8>", "negative prompt") == [
        'The negative prompt uses A1111 syntax that this app does not support: '
        'extra network "<hypernet:a_very_long_hyperne…". It is read as plain text '
        "(brackets still weight what they enclose); see the README's Prompts section."]
    assert syntax_warnings("a (cat:1.2), BREAK [dog]", "prompt") == []


def test_extra_networks_in_the_prompt_are_left_out_as_a1111_leaves_them_out() -> None:
    """A1111 takes `<lora:...>` tags out of the prompt before reading it, and reads the negative prompt's as text
    (modules/processing.py `parse_extra_network_prompts`)."""
    assert without_extra_networks("a cat, <lora:add_detail:0.8>, [red:<lyco:x:1>blue:3] <not a tag>") == \
        "a cat, , [red:blue:3] <not a tag>"
    assert syntax_warnings("a cat AND a dog <lora:a_very_long_lora_file_name_v2:0.8> <hypernet:h:1>", "prompt") == [
        'The prompt names an extra network that this app does not have: "<hypernet:h:1>". As '
        "in A1111, such tags are left out of the text the model reads; see the README's Prompts section."]


N = 200_000  # far over any prompt limit: a pattern that backtracks over it would run for many minutes


@pytest.mark.parametrize("prompt, expected", [
    ("[:" + "1" * N, [(":" + "1" * N, 1 / 1.1)]),  # a weight-like number that never closes
    ("(a:" + "1" * N, [("a:" + "1" * N, 1.1)]),
    ("[" + "|" * N, [("|" * N, 1 / 1.1)]),
    ("[ " + " " * N + ":", [(" " * (N + 1) + ":", 1 / 1.1)]),  # whitespace a BREAK would take with it
    ("a" + " " * N + "BREAK b", [("a", 1.0), B, ("b", 1.0)]),
])
def test_long_prompts_are_read_in_one_pass(prompt: str, expected: list) -> None:
    assert runs(prompt) == expected
    assert unsupported_syntax(prompt) == []


def _a1111_parts(prompt: str) -> list[tuple[str, float]]:
    """A1111's reading of composable prompts by its definition, searched by brute force: each part between ANDs is
    the shortest text whose rest is spaces, optionally a colon and a number (the weight) with spaces around
    (modules/prompt_parser.py, `re_weight`); parts of the same text add their weights."""
    number = re.compile(r"\s*(?::\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*")
    parts: dict[str, float] = {}
    for piece in re.split(r"\bAND\b", prompt):
        cut = next(i for i in range(len(piece) + 1) if number.fullmatch(piece, i))
        weight = number.fullmatch(piece, cut).group(1)
        parts[piece[:cut].strip()] = parts.get(piece[:cut].strip(), 0.0) + (float(weight) if weight else 1.0)
    return list(parts.items())


@given(st.lists(st.sampled_from(["a", " ", ":", "1", "2", ".", "-", "+", " AND ", "AND", "\n", "x", "(", "5."]),
                max_size=16).map("".join))
@settings(max_examples=3000, deadline=None)
def test_composable_parts_are_a1111s(prompt: str) -> None:
    """`subprompts` reads every prompt as A1111 does; one part without a weight is the prompt as written."""
    parts = subprompts(prompt)
    assert parts == ([(prompt, 1.0)] if parts == [(prompt, 1.0)] else _a1111_parts(prompt))
    if parts == [(prompt, 1.0)]:
        assert _a1111_parts(prompt) == [(prompt.strip(), 1.0)]


@pytest.mark.parametrize(("prompt", "parts"), [
    ("a cat", [("a cat", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), ("a dog", 1.0)]),
    ("a cat :0.5 AND a dog: -1.25 ", [("a cat", 0.5), ("a dog", -1.25)]),
    ("x AND x:2", [("x", 3.0)]),  # one text, its weights added
    ("a photo, 16:9", [("a photo, 16", 9.0)]),  # A1111 reads every prompt so
    ("a (dog:1.2)", [("a (dog:1.2)", 1.0)]),  # an attention weight, not a part's
    ("[a AND b:c:3]", [("[a", 1.0), ("b:c:3]", 1.0)]),  # AND cuts inside brackets too, as in A1111
    ("ANDROID AND", [("ANDROID", 1.0), ("", 1.0)]),  # a word of its own
])
def test_composable_parts(prompt: str, parts: list) -> None:
    assert subprompts(prompt) == parts


def test_composable_parts_are_read_in_one_pass() -> None:
    assert subprompts(" " * N + "x") == [(" " * N + "x", 1.0)]
    assert subprompts(": " * N + "1") == [((": " * (N - 1)).strip(), 1.0)]  # the last colon's number
