"""X/Y/Z plot axis values a script writes to break the number parser, sent to the running app through
gradio_client: numbers too long for Python's int and float conversions (or for the range arithmetic) and
values of 100,000 characters are refused with a message that repeats at most a few dozen of their characters.

The app is `python app.py --tiny --device cpu --no-save --queue-size 8`, served in-process
(`tests.reliability_support.served_app`).
"""

from __future__ import annotations

import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from sd2_app.api.plot_values import MAX_NUMBER_CHARS
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import one_thread, served_app  # noqa: F401

AREA = "Bad input"
NINES = "9" * 60  # what a message shows of a long token


@pytest.mark.parametrize(("kind", "values", "message"), [
    ("variation_seed", "0-" + "9" * 400,
     f"X values (Var. seed): '0-{NINES[:58]}'... is too long: a whole number here has at most 40 characters."),
    ("seed", "1-2 [" + "9" * 5000 + "]",
     f"X values (Seed): '1-2[{NINES[:56]}'... is too long: a whole number here has at most 40 characters."),
    ("cfg_scale", "0-" + "9" * 300 + " (+." + "0" * 299 + "1)",
     f"X values (CFG scale): '0-{NINES[:58]}'... is too long: a number here has at most 40 characters."),
    ("variation_seed", "x" * 100_000,
     f"X values (Var. seed): '{'x' * 60}'... is too long: a whole number here has at most 40 characters."),
    ("prompt_sr", "y" * 100_000,
     f"Prompt S/R did not find '{'y' * 60}'... in the prompt or the negative prompt."),
    ("prompt_order", "z" * 100_000, f"Prompt order did not find '{'z' * 60}'... in the prompt."),
    ("variation_seed", "0-" + "9" * 38,
     f"X values (Var. seed): '0-{'9' * 38}' gives 99999999999999997748809823456034029569 values; an axis may "
     "have at most 64."),  # 38 digits: still a range, counted in floats
])
def test_axis_numbers_out_of_any_range_are_refused_in_words(served_app, reliability, kind: str, values: str,
                                                           message: str) -> None:
    url, _ = served_app
    with pytest.raises(AppError) as refused:
        Client(url, verbose=False).predict(prompt="x", steps=2, x_type=kind, x_values=values, api_name="/xyz_plot")
    assert str(refused.value) == message
    assert MAX_NUMBER_CHARS == 40
    reliability(AREA, f"X/Y/Z plot, {kind} axis values of {len(values):,} characters ({values[:24]}...)",
                f"refused: {message} (a number of hundreds of digits raised OverflowError or ValueError, the "
                "visitor got Gradio's generic error and the log a traceback; a message repeated the whole value)")


def test_a_prompt_order_of_many_terms_is_refused_at_once(served_app, reliability) -> None:
    """100,000 terms (690 KB): the check for a term listed twice compared each term with all before it, 68 s of
    the server's CPU on the request before the count's refusal; now one pass."""
    url, _ = served_app
    values = ",".join(f"t{i}" for i in range(100_000))
    started = time.monotonic()
    with pytest.raises(AppError) as refused:
        Client(url, verbose=False).predict(prompt="t0 t1", steps=2, x_type="prompt_order", x_values=values,
                                           api_name="/xyz_plot")
    seconds = time.monotonic() - started
    message = ("X values (Prompt order): 100000 terms give 100000! orders; an axis may have at most 64 values, so "
               "list at most 4 terms.")
    assert str(refused.value) == message
    assert seconds < 15, seconds
    reliability(AREA, "X/Y/Z plot, a Prompt order axis of 100,000 terms (690 KB)",
                f"refused in {seconds:.1f} s: {message} (was 68 s of the server's CPU before the refusal)")


def test_a_plot_whose_prompts_are_too_much_text_is_refused_before_it_is_all_read(served_app, reliability,
                                                                                 monkeypatch) -> None:
    """64 Prompt S/R cells whose prompt and negative prompt each alternate between 63 words over 63 steps: each
    cell makes 126 different texts to parse and tokenize, 1.7 million characters for the plot, all of it parsed
    and tokenized by the run handler before. It is refused once its texts pass `max_plot_prompt_chars`, with no
    more than that read."""
    import sd2_app.pipelines.prompt_plan as prompt_plan

    read: list[int] = []
    tokenize = prompt_plan.tokenize_prompts
    monkeypatch.setattr(prompt_plan, "tokenize_prompts", lambda tokenizer, texts, *args: read.append(
        sum(map(len, texts))) or tokenize(tokenizer, texts, *args))
    words = "[" + "|".join(f"c{index}" for index in range(63)) + "] " + "(" * 100 + "a" + ")" * 100
    url, demo = served_app
    limit = demo.service.limits.max_plot_prompt_chars  # type: ignore[attr-defined]
    with pytest.raises(AppError) as refused:
        Client(url, verbose=False).predict(prompt=f"KEY {words}", negative_prompt=f"KEY not {words}", steps=63,
                                           cfg_scale=7, sampler="Euler", width=64, height=64, x_type="prompt_sr",
                                           x_values=", ".join(["KEY", *(f"k{index}" for index in range(63))]),
                                           api_name="/xyz_plot")
    message = ("This plot's prompts are too much text to read: after prompt editing and alternation its cells' prompts "
               "and negative prompts come to more than 1,000,000 characters (counted once per different text of "
               "each cell). Use fewer cells, shorter prompts or fewer alternatives.")
    assert (limit, str(refused.value)) == (1_000_000, message)
    assert 0 < sum(read) <= limit, sum(read)
    reliability(AREA, "an X/Y/Z plot of 64 Prompt S/R cells whose prompt and negative prompt alternate between 63 "
                      "words over 63 steps (1.7 million characters to parse and tokenize)",
                f"refused after {sum(read):,} characters were read: {message} (the run handler parsed and "
                "tokenized every cell's texts before the plot could start)")
