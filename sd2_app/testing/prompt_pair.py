"""One (prompt, negative prompt) pair tokenized, checked and encoded in one call, without a prompt plan: the tests'
and the benchmarks' reference for the plain path. The pipeline plans first (sd2_app/pipelines/prompt_plan.py:
prompt editing, the limits, the plan its request's validation made) and encodes the plan
(sd2_app/pipelines/prompt_schedule.py); a plan of one phase goes through `encode_tokenized_pair`, as this does,
so both give one context bit for bit (tests/pipelines/test_prompt_editing_runs.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from sd2_app.nn.clip_text import TextEncoder
from sd2_app.pipelines.prompt import EncodedPrompts, encode_tokenized_pair
from sd2_app.pipelines.prompt_chunks import check_length, tokenize_prompts

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from sd2_app.loading.embeddings import TextualInversion


def encode_prompt_pair(
    text_encoder: TextEncoder,
    tokenizer: CLIPTokenizer,
    prompt: str,
    negative_prompt: str,
    *,
    batch_size: int,
    use_cfg: bool,
    device: torch.device,
    embeddings: Mapping[str, TextualInversion] | None = None,
) -> EncodedPrompts:
    """Context (2B, 77·k, D) = [uncond x B; cond x B] with guidance, else (B, 77·k, D).

    The negative prompt ("" when empty) is read exactly like the prompt. `embeddings` maps names to the
    request's TextualInversions. Raises InvalidRequest for a prompt over MAX_CHUNKS chunks.
    """
    tokenized = tokenize_prompts(tokenizer, [prompt, negative_prompt] if use_cfg else [prompt], embeddings)
    for tokens, label in zip(tokenized, ("prompt", "negative prompt")):
        check_length(tokens, label)
    return encode_tokenized_pair(text_encoder, tokenizer, tokenized, batch_size=batch_size, device=device)
