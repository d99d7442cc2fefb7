"""LoRA tags as A1111 reads them (sd2_app/lora_tags.py), the validation's warnings and refusals, the batch key
that keeps different LoRAs apart, and the picker's toggle."""

from __future__ import annotations

import pytest

from sd2_app.api.batching import batch_key
from sd2_app.api.requests import Sampling, Txt2ImgRequest
from sd2_app.api.task_checks import lora_warnings
from sd2_app.errors import InvalidRequest
from sd2_app.lora_tags import MAX_LORAS, LoraTag, lora_tags
from sd2_app.ui.prompt_tools import toggled_lora


@pytest.mark.parametrize(("prompt", "expected"), [
    ("a cat <lora:detail>", [LoraTag("detail", 1.0, 1.0)]),
    ("<lora:detail:0.8>, a cat", [LoraTag("detail", 0.8, 0.8)]),
    ("<lora:detail:0.8:0.3>", [LoraTag("detail", 0.8, 0.3)]),  # text encoder, then UNet
    ("<lora:detail:unet=0.3>", [LoraTag("detail", 1.0, 0.3)]),
    ("<lora:detail:te=0:unet=-0.5>", [LoraTag("detail", 0.0, -0.5)]),
    ("<lora:detail:0.5:te=0.2>", [LoraTag("detail", 0.2, 0.2)]),  # the UNet's follows te, a named te too (A1111)
    ("<lyco:old style:1.2> <hypernet:h:1> <lora:a:1> <lora:old style:0.3>",
     [LoraTag("old style", 1.5, 1.5), LoraTag("a", 1.0, 1.0)]),  # a name twice: its multipliers add up
    ("<lora:x:1:1:dyn=8>", [LoraTag("x", 1.0, 1.0)]),  # A1111's dyn= (DyLoRA rank) has nothing to do here
    ("a cat, no tags, a<b>c, <lora>", []),
])
def test_tags_are_read_as_a1111_reads_them(prompt: str, expected: list[LoraTag]) -> None:
    assert list(lora_tags(prompt)) == expected


@pytest.mark.parametrize(("prompt", "message"), [
    ("<lora:detail:abc>", "The LoRA tag <lora:detail:abc> has the multiplier 'abc'; a multiplier is a number from -10 "
                          "to 10."),
    ("<lora:detail:11>", "The LoRA tag <lora:detail:11> has the multiplier '11'; a multiplier is a number from -10 to "
                         "10."),
    ("<lora:detail:unet=nan>", "The LoRA tag <lora:detail:unet=nan> has the multiplier 'nan'; a multiplier is a "
                               "number from -10 to 10."),
    ("<lora: :1>", "The LoRA tag <lora: :1> names no LoRA; write <lora:NAME:0.8>."),
    (" ".join(f"<lora:l{i}>" for i in range(MAX_LORAS + 1)), f"The prompt names {MAX_LORAS + 1} LoRAs; at most "
                                                              f"{MAX_LORAS} are used at once."),
])
def test_unreadable_tags_are_refused_with_the_reason(prompt: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        lora_tags(prompt)
    assert str(refused.value) == message


def test_missing_names_and_negative_prompt_tags_are_warned_about() -> None:
    have = frozenset({"detail", "style"})
    assert lora_warnings("a <lora:detail:1>", "<hypernet:h:1>", have) == []
    assert lora_warnings("a <lora:gone:1> <lora:detail> <lyco:lost>", "", have) == [
        "LoRAs not found: 'gone', 'lost' (the LoRAs here are detail, style); their tags are left out of the prompt."]
    assert lora_warnings("a <lora:gone:1>", "ugly <lora:detail:1>", frozenset()) == [
        "LoRA not found: 'gone' (this app has no LoRAs); its tag is left out of the prompt.",
        'The negative prompt has a LoRA tag, "<lora:detail:1>": as in A1111, LoRAs are read from the prompt only; '
        "in the negative prompt the tag is read as plain text."]


def test_requests_with_other_loras_never_share_a_batch() -> None:
    def key(prompt: str) -> object:
        return batch_key("txt2img", Txt2ImgRequest(prompt=prompt, width=64, height=64, sampling=Sampling(seed=1)))

    assert key("a cat <lora:detail:0.8>") == key("a dog <lora:detail:0.8>")  # prompts may differ
    assert key("a cat") != key("a cat <lora:detail:0.8>")
    assert key("a cat <lora:detail:0.8>") != key("a cat <lora:detail:0.7>")
    assert key("a cat <lora:detail:0.8> <lora:style>") != key("a cat <lora:detail:0.8>")


def test_the_picker_adds_a_tag_and_takes_it_out_again() -> None:
    assert toggled_lora("detail", "") == "<lora:detail:1>"
    assert toggled_lora("detail", "a cat  ") == "a cat <lora:detail:1>"
    assert toggled_lora("detail", "a cat <lora:detail:0.6>, blue") == "a cat, blue"
    assert toggled_lora("detail", "<lyco:detail> a cat") == "a cat"
    assert toggled_lora("d.l", "a <lora:dxl:1>") == "a <lora:dxl:1> <lora:d.l:1>"  # the name is no pattern
