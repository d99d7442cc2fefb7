"""Prompt -> text-encoder context for the UNet, following diffusers' `encode_prompt` (pipeline_stable_diffusion.py).

CLIP sees at most 77 tokens (BOS + 75 + EOS). Longer prompts are cut like the reference does, but never
silently: the caller gets a warning naming how many tokens were dropped and what text they held.
"""

from __future__ import annotations

from typing import Any

import torch

MAX_TOKENS = 77


def tokenize(tokenizer: Any, text: str) -> tuple[torch.Tensor, str | None]:
    """(1, 77) input ids (max-length padding, truncation) and a warning if tokens were dropped."""
    ids = tokenizer(text, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    ids = ids.input_ids  # (1, 77)
    full = tokenizer(text, truncation=False).input_ids  # BOS, tokens..., EOS
    dropped = len(full) - MAX_TOKENS
    if dropped <= 0:
        return ids, None
    removed = tokenizer.decode(full[MAX_TOKENS - 1 : -1])
    if len(removed) > 80:
        removed = removed[:77] + "..."
    return ids, f"{dropped} tokens over the {MAX_TOKENS}-token limit were dropped: {removed!r}"


def encode_prompts(
    text_encoder: Any,
    tokenizer: Any,
    prompt: str,
    negative_prompt: str,
    *,
    batch_size: int,
    use_cfg: bool,
    device: torch.device,
) -> tuple[torch.Tensor, list[str]]:
    """Context (2B, 77, D) = [uncond x B; cond x B] with guidance, else (B, 77, D); plus warnings.

    The negative prompt ("" when empty) is encoded exactly like the prompt: padded with id 0, no mask.
    Both go through the text encoder in one batch.
    """
    warnings: list[str] = []
    cond_ids, warning = tokenize(tokenizer, prompt)
    if warning:
        warnings.append(f"Prompt truncated: {warning}")
    ids = [cond_ids]
    if use_cfg:
        uncond_ids, warning = tokenize(tokenizer, negative_prompt)
        if warning:
            warnings.append(f"Negative prompt truncated: {warning}")
        ids = [uncond_ids, cond_ids]
    with torch.no_grad():
        hidden = text_encoder(torch.cat(ids).to(device))[0]  # (1|2, 77, D) last_hidden_state
    parts = [h[None].expand(batch_size, -1, -1) for h in hidden]  # each (B, 77, D)
    return torch.cat(parts).contiguous(), warnings
