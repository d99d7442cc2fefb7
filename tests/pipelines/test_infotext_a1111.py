"""Parameters text from AUTOMATIC1111's web UI read by its own rules (A1111 modules/infotext_utils.py,
`parse_generation_parameters`): the exact dicts a pasted or stored infotext gives."""

from __future__ import annotations

import pytest

from sd2_app.pipelines.metadata import format_parameters, parse_parameters

SETTINGS = "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512"
PARSED = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, "Seed": 965400086, "Size": "512x512"}


@pytest.mark.parametrize(("text", "expected"), [
    # a trailing newline (text copied from a page or a file) still leaves the last line the settings line
    (f"a cat\nNegative prompt: ugly\n{SETTINGS}\n", {"Prompt": "a cat", "Negative prompt": "ugly", **PARSED}),
    (f"a cat\n{SETTINGS}\n\n  ", {"Prompt": "a cat", "Negative prompt": "", **PARSED}),
    # "Negative prompt:" with no space after the colon
    (f"a cat\nNegative prompt:ugly, blurry\n{SETTINGS}",
     {"Prompt": "a cat", "Negative prompt": "ugly, blurry", **PARSED}),
    # a stretch that is no `key: value` pair (an extension's unquoted list) is skipped; the pairs still count
    ("a cat\nSteps: 20, Sampler: Euler a, Template: red, blue cat, CFG scale: 7, Lora hashes: \"x: 1a, y: 2b\"",
     {"Prompt": "a cat", "Negative prompt": "", "Steps": 20, "Sampler": "Euler a", "Template": "red",
      "CFG scale": 7, "Lora hashes": "x: 1a, y: 2b"}),
    # no settings line: trailing blank lines are not part of the prompt either
    ("a cat\n\n", {"Prompt": "a cat", "Negative prompt": ""}),
    # fewer than three pairs: the line is prompt text ("style: anime" is part of the prompt)
    ("masterpiece, portrait\nstyle: anime", {"Prompt": "masterpiece, portrait\nstyle: anime", "Negative prompt": ""}),
    ("a cat\nSteps: 20, Seed: 1", {"Prompt": "a cat\nSteps: 20, Seed: 1", "Negative prompt": ""}),
    # a quote that does not end the pair, or never closes, is text up to the comma (A1111's `[^,]*`); a quoted
    # value that is not JSON stays as written (A1111's `unquote`)
    ('p\nSteps: 2, Sampler: "Euler, a" junk, Seed: 1, Size: 5x5',
     {"Prompt": "p", "Negative prompt": "", "Steps": 2, "Sampler": '"Euler', "Seed": 1, "Size": "5x5"}),
    ('p\nSteps: 2, Sampler: "unclosed, Seed: 1', {"Prompt": "p", "Negative prompt": "", "Steps": 2,
                                                  "Sampler": '"unclosed', "Seed": 1}),
    ('p\nSteps: 2, Template: "\\x", Seed: 1', {"Prompt": "p", "Negative prompt": "", "Steps": 2,
                                               "Template": '"\\x"', "Seed": 1}),
    # a multi-line negative prompt runs up to the settings line
    (f"a\nb\nNegative prompt: c\nd\n{SETTINGS}", {"Prompt": "a\nb", "Negative prompt": "c\nd", **PARSED}),
])
def test_a1111_infotext_reads_as_a1111_reads_it(text: str, expected: dict) -> None:
    assert parse_parameters(text) == expected


def test_written_text_keeps_a1111_spelling_and_reads_back() -> None:
    text = format_parameters("a cat", " soft", {"Steps": 2, "Sampler": "Euler", "Seed": 3})
    assert text == "a cat\nNegative prompt:  soft\nSteps: 2, Sampler: Euler, Seed: 3"
    assert parse_parameters(text) == {"Prompt": "a cat", "Negative prompt": " soft", "Steps": 2, "Sampler": "Euler",
                                      "Seed": 3}


@pytest.mark.parametrize("junk", ["a" * 300_000, 'k: "a, ' * 40_000, " " * 300_000 + ":", "a, " * 100_000])
def test_a_long_settings_line_is_read_in_one_pass(junk: str) -> None:
    """PNG info reads text chunks of up to a megabyte from visitors' files: the settings line is read in one pass
    (a pattern searched from every position, as A1111's, would take minutes here)."""
    parsed = parse_parameters(f"a cat\n{junk}, {SETTINGS}")
    assert {key: parsed[key] for key in PARSED} == PARSED and parsed["Prompt"] == "a cat"
