"""Prompt editing encodes each distinct text once: a schedule of three prompt texts with one negative prompt
is one text-encoder call of four chunk rows (it was one call of two rows per phase), and each phase's context
is still its pair's plain encoding, bit for bit. On the tiny checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tests.pipeline_fixtures import ComponentCache

from sd2_app.testing.prompt_pair import encode_prompt_pair
from sd2_app.pipelines.prompt_plan import PromptSteps
from sd2_app.pipelines.prompt_schedule import encode_prompt_schedule

CPU = torch.device("cpu")


@contextmanager
def encoder_calls(encoder: torch.nn.Module) -> Iterator[list[tuple[int, ...]]]:
    """The shape of the ids of every call of `encoder` while in the block."""
    calls: list[tuple[int, ...]] = []
    hook = encoder.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    try:
        yield calls
    finally:
        hook.remove()


def test_three_phases_with_one_negative_prompt_encode_four_rows_in_one_call(components: ComponentCache) -> None:
    c = components("sd2-base")
    prompt, negative = "a [red|green|blue] fox", "blurry"
    with encoder_calls(c.text_encoder) as calls:
        encoded = encode_prompt_schedule(c, prompt, negative, batch_size=2, use_cfg=True, steps=PromptSteps(6))
    assert calls == [(4, 77)]  # "blurry" and the three prompt texts, one chunk each
    assert encoded.phases == (0, 0, 1, 2, 0, 1)  # A1111's pick: call 0 reads step 1's text
    assert encoded.context.shape == (3, 4, 77, 32)
    for phase, colour in enumerate(["red", "green", "blue"]):
        alone = encode_prompt_pair(c.text_encoder, c.tokenizer, f"a {colour} fox", negative, batch_size=2,
                                   use_cfg=True, device=CPU).context
        assert torch.equal(encoded.context[phase], alone)


def test_a_text_shared_by_prompt_and_negative_prompt_is_encoded_once(components: ComponentCache) -> None:
    c = components("sd2-base")
    with encoder_calls(c.text_encoder) as calls:
        encoded = encode_prompt_schedule(c, "[cat:dog:2]", "[dog:cat:2]", batch_size=1, use_cfg=True,
                                         steps=PromptSteps(4))
    assert calls == [(2, 77)]  # "cat" and "dog": two texts, two phases
    assert encoded.phases == (0, 0, 0, 1)
    assert torch.equal(encoded.context[0].flip(0), encoded.context[1])  # the halves swap
