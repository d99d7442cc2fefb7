"""The prompt styles' rules (sd2_app/prompt_styles.py) as tables: applying (A1111's modules/styles.py,
`merge_prompts`), reading a pasted prompt back (`extract_styles_from_prompt`), and reading the host's styles.csv
within its bounds."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sd2_app import prompt_styles as ps
from sd2_app.errors import InvalidRequest
from sd2_app.prompt_styles import PromptStyle, StyleBook, load_styles, merge_style, read_styles

BOOK = StyleBook((
    PromptStyle("oil", "oil painting, thick brush", "photo"),
    PromptStyle("frame", "a picture of {prompt}, framed", "blurry, {prompt}"),
    PromptStyle("neg only", "", "lowres"),
    PromptStyle("empty"),
))


@pytest.mark.parametrize(("style", "prompt", "merged"), [
    ("oil painting", "a cat", "a cat, oil painting"),
    ("  oil painting ", " a cat ", "a cat, oil painting"),  # both ends stripped
    ("oil painting", "", "oil painting"),  # an empty part is left out
    ("", "a cat", "a cat"),
    ("", "", ""),
    ("a picture of {prompt}, framed", "a cat", "a picture of a cat, framed"),
    ("{prompt} and {prompt}", "a cat", "a cat and a cat"),  # every placeholder
    ("a picture of {prompt}", " a cat ", "a picture of  a cat "),  # the prompt as written
    ("a picture of {prompt}", "", "a picture of "),
])
def test_merge_style(style: str, prompt: str, merged: str) -> None:
    assert merge_style(style, prompt) == merged


@pytest.mark.parametrize(("names", "prompt", "negative", "expected"), [
    ([], "a cat", "ugly", ("a cat", "ugly")),
    (None, "a cat", "ugly", ("a cat", "ugly")),
    (["oil"], "a cat", "ugly", ("a cat, oil painting, thick brush", "ugly, photo")),
    (["frame"], "a cat", "ugly", ("a picture of a cat, framed", "blurry, ugly")),
    # in the order picked: each style takes the result of the one before
    (["oil", "frame"], "a cat", "", ("a picture of a cat, oil painting, thick brush, framed", "blurry, photo")),
    # "blurry, " is stripped before ", photo" is added
    (["frame", "oil"], "a cat", "", ("a picture of a cat, framed, oil painting, thick brush", "blurry,, photo")),
    (["neg only"], "a cat", "", ("a cat", "lowres")),
    (["empty"], "a cat", "ugly", ("a cat", "ugly")),
])
def test_apply_in_the_order_picked(names: list[str] | None, prompt: str, negative: str,
                                   expected: tuple[str, str]) -> None:
    assert BOOK.apply(prompt, negative, names) == expected


@pytest.mark.parametrize(("names", "message"), [
    (["oil", "watercolor"], "Unknown style 'watercolor'; this server's styles: 'oil', 'frame', 'neg only', 'empty'."),
    ("oil", "styles must be a list of style names."),
    ([1], "styles must be a list of style names."),
    (["oil"] * 21, "At most 20 styles may be applied at once; 21 were sent."),
    (["w" * 100_000], f"Unknown style '{'w' * 60}'...; this server's styles: 'oil', 'frame', 'neg only', 'empty'."),
])
def test_what_is_refused(names: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        BOOK.apply("a cat", "", names)
    assert str(error.value) == message


@pytest.mark.parametrize("negative", ["ugly", ""])  # "" with frame: "blurry, " (its placeholder left empty)
@pytest.mark.parametrize("names", [[], ["oil"], ["frame"], ["oil", "frame"], ["neg only", "oil"]])
def test_a_pasted_prompt_gives_back_its_styles(names: list[str], negative: str) -> None:
    styled = BOOK.apply("a cat", negative, names)
    assert BOOK.extract(*styled) == (names, "a cat", negative)


def test_an_images_parameters_give_back_a_style_applied_to_an_empty_negative_prompt() -> None:
    """The parameters text keeps "blurry, " as written, and PNG info's send reads the style back from it."""
    from sd2_app.pipelines.metadata import format_parameters, parse_parameters

    text = format_parameters(*BOOK.apply("a cat", "", ["frame"]), {"Steps": 20, "Sampler": "DDIM", "CFG scale": 7})
    fields = ps.with_styles_read(parse_parameters(text), BOOK)
    assert (fields["Prompt"], fields["Negative prompt"], fields["Styles array"]) == ("a cat", "", ["frame"])


def test_a_style_is_found_only_where_both_its_texts_match() -> None:
    # the prompt ends with oil's text, but the negative prompt lacks oil's "photo"
    assert BOOK.extract("a cat, oil painting, thick brush", "ugly") == ([], "a cat, oil painting, thick brush", "ugly")


CSV = (
    "\ufeffname,prompt,negative_prompt\n"
    "oil,\"oil painting, thick brush\",photo\n"
    "# a comment,x,y\n"
    ",no name,\n"
    "extra,a,b,c\n"  # more fields than the header
    f"long,{'x' * (ps.MAX_TEXT_CHARS + 1)},\n"
    "frame,\"a picture of {prompt}\",\n"
    "oil,\"oil, again\",\n"  # a name given twice keeps its first place, its last texts
)


def test_read_styles_skips_what_it_cannot_use(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        book = read_styles(CSV.removeprefix("\ufeff"))
    assert book.styles == (PromptStyle("oil", "oil, again", ""), PromptStyle("frame", "a picture of {prompt}", ""))
    assert [r.getMessage() for r in caplog.records] == [
        "styles: row 5 skipped: more fields than the header names",
        f"styles: row 6 skipped: its prompt is longer than {ps.MAX_TEXT_CHARS} characters",
    ]


@pytest.mark.parametrize(("content", "log"), [
    (b"name;prompt\na;b\n", "the first row must name the columns name,prompt,negative_prompt"),
    (b"name,prompt\n\xff\xfe,x\n", "not UTF-8 text"),
    (b"name,prompt\n" + b"a,b\n" * (ps.MAX_FILE_BYTES // 4), "the file is larger than 1024 KiB"),
    (None, "No such file or directory"),
])
def test_an_unusable_file_gives_no_styles(tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes | None,
                                          log: str) -> None:
    path = tmp_path / "styles.csv"
    if content is not None:
        path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert load_styles(path) == StyleBook()
    assert log in caplog.text


def test_at_most_max_styles_are_read(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    path.write_text("name,prompt\n" + "".join(f"s{i},p{i}\n" for i in range(ps.MAX_STYLES + 5)), encoding="utf-8")
    book = load_styles(path)
    last = ps.MAX_STYLES - 1
    assert len(book.styles) == ps.MAX_STYLES and book.styles[-1] == PromptStyle(f"s{last}", f"p{last}")
    assert load_styles(None) == StyleBook()


def test_styles_reach_a_hires_fixs_own_prompts() -> None:
    """A1111 styles hr_prompt and hr_negative_prompt too; an empty one stays empty (the first pass's, styled)."""
    from sd2_app.api.requests import HiresFix, Txt2ImgRequest

    request = Txt2ImgRequest(prompt="a cat", negative_prompt="dark", hires=HiresFix(prompt="a cat, 8k"))
    styled = BOOK.applied_to(request, ["frame", "oil"])
    assert (styled.prompt, styled.negative_prompt) == ("a picture of a cat, framed, oil painting, thick brush",
                                                       "blurry, dark, photo")
    assert (styled.hires.prompt, styled.hires.negative_prompt) == (
        "a picture of a cat, 8k, framed, oil painting, thick brush", "")
    assert styled.hires.prompts(styled.prompt, styled.negative_prompt)[1] == styled.negative_prompt
    plain = BOOK.applied_to(Txt2ImgRequest(prompt="a cat", hires=HiresFix()), ["oil"])
    assert (plain.hires.prompt, plain.hires.negative_prompt) == ("", "")


def test_a_prompt_that_is_not_text_is_refused_in_validations_words() -> None:
    """An API caller's prompt of another type (the Generate endpoints take text boxes' values as sent) was a
    TypeError in the styling (HTTP 500); it is refused as validation refuses it."""
    from sd2_app.api.requests import HiresFix, Txt2ImgRequest

    for request, message in [
        (Txt2ImgRequest(prompt=123), "Prompt must be text, got int."),  # type: ignore[arg-type]
        (Txt2ImgRequest("a", negative_prompt=["x"]),  # type: ignore[arg-type]
         "Negative prompt must be text, got list."),
        (Txt2ImgRequest("a", hires=HiresFix(negative_prompt=True)),  # type: ignore[arg-type]
         "Hires negative prompt must be text, got bool."),
    ]:
        with pytest.raises(InvalidRequest) as error:
            BOOK.applied_to(request, ["oil"])
        assert str(error.value) == message
    assert BOOK.apply(None, None, ["oil"]) == ("oil painting, thick brush", "photo")
