"""A request's prompts are tokenized once (issue 24 section 3): the encoder's tokenization also names the
embeddings the parameters text lists, and the empty padding chunk needs no tokenizer. Counted with a spy on
the tokenizer; the images and their parameters text stay what they were."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from sd2_app.api.requests import Img2ImgRequest, Sampling, Txt2ImgRequest
from sd2_app.loading.embeddings import TextualInversion
from sd2_app.nn.clip_text import text_model_of
from sd2_app.pipelines.img2img import img2img
from sd2_app.pipelines.prompt_chunks import empty_chunk, tokenize_prompt
from sd2_app.pipelines.txt2img import txt2img


class CountingTokenizer:
    """The tokenizer, with every call's first argument recorded."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.calls: list[Any] = []

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(text)
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def _embedding(components: Any, text: str, name: str, shorthash: str) -> TextualInversion:
    ids = torch.tensor(components.tokenizer(text, add_special_tokens=False).input_ids)
    with torch.no_grad():
        vectors = text_model_of(components.text_encoder).embeddings.token_embedding(ids).clone()
    return TextualInversion(name, vectors, shorthash)


@pytest.fixture
def spied(components: Any) -> tuple[Any, CountingTokenizer]:
    base = components("sd2-base")
    library = {"pets": _embedding(base, "cat dog", "pets", "a" * 12),
               "style": _embedding(base, "oil painting", "style", "b" * 12)}
    spy = CountingTokenizer(base.tokenizer)
    return replace(base, tokenizer=spy, embeddings=library), spy


def _sampling(seed: int) -> Sampling:
    return Sampling(steps=2, seed=seed, cfg_scale=7.0, sampler="Euler a")


@pytest.mark.parametrize("task", ["txt2img", "img2img"])
def test_a_request_tokenizes_its_prompts_once(spied, task: str) -> None:
    components, spy = spied
    prompt, negative = "a (pets:1.2) hat BREAK on a table", "blurry style"
    if task == "txt2img":
        output = txt2img(components, Txt2ImgRequest(prompt, negative, width=64, height=64, sampling=_sampling(3)))
    else:
        from PIL import Image

        image = Image.new("RGB", (64, 64), (120, 80, 40))
        output = img2img(components, Img2ImgRequest(prompt=prompt, negative_prompt=negative, image=image,
                                                    strength=0.6, sampling=_sampling(3)))
    # one call for the text of both prompts (their attention runs), one for the embeddings' names
    assert spy.calls == [["a ", "pets", " hat", "on a table", "blurry style"], ["pets", "style"]]
    assert "TI hashes: \"pets: aaaaaaaaaaaa, style: bbbbbbbbbbbb\"" in output.images[0].info["parameters"]


def test_the_padding_chunk_is_the_empty_prompts_without_tokenizing(spied) -> None:
    components, spy = spied
    assert empty_chunk(spy) == tokenize_prompt(components.tokenizer.tokenizer, "").chunks[0]
    assert spy.calls == []
