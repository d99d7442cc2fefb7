"""Prompt -> text-encoder context for the UNet: A1111's attention syntax, 75-token chunks, embeddings.

The reference's `encode_prompt` (§4.1) reads one 77-token row per prompt. Here a prompt becomes k chunks of
77 (see `prompt_chunks`), all chunks of the prompt and of the negative prompt go through the text encoder in
one batch, and each prompt's chunk states are concatenated: the context is (B, 77·k, D). The shorter of the
two is padded with encoded empty chunks, so both halves of the guidance batch have the same length (A1111
pads the same way, modules/sd_samplers_cfg_denoiser.py `pad_cond`).

Weights follow A1111's "Original" emphasis (modules/sd_emphasis.py): each token's states are multiplied by its
weight, then the chunk is rescaled so its mean is what it was before. A chunk whose weights are all 1 is left
exactly as the encoder returned it, so a plain one-chunk prompt gives the plain encoder's output bit for bit
(the parity tests against diffusers hold, and seeds reproduce across tools).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sd2_app import infotext_keys as keys
from sd2_app.errors import InvalidRequest
from sd2_app.nn.clip_text import TextEncoder, encode_with_inserts, text_model_of
from sd2_app.pipelines.prompt_chunks import CHUNK_LENGTH, Chunk, TokenizedPrompt, empty_chunk

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from sd2_app.checkpoints.components import Components

    from sd2_app.loading.embeddings import TextualInversion


@dataclass
class EncodedPrompts:
    context: torch.Tensor  # ((1+K)B|B, 77·k, D), uncond first when guided, then each of the prompt's K parts;
    # with `phases`: (P, (1+K)B|B, 77·k, D)
    # used by the prompt, then those only the negative prompt uses (when guidance reads it), in order of use
    embeddings: list[TextualInversion] = field(default_factory=list)
    phases: tuple[int, ...] = ()  # prompt editing: the context phase of each UNet call (pipelines/prompt_schedule.py)
    weights: tuple[float, ...] = (1.0,)  # the K parts' weights (A1111's AND, `prompt_syntax.subprompts`)
    padded: bool = False  # a text was padded with the empty chunk to the longest's length (`PromptPlan.padded`)


def _hash_list(pairs: Iterable[tuple[str, str]]) -> str:
    """"name: shorthash, ..." with ":" and "," taken out of the names, as A1111 writes its hash lists."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {shorthash}" for name, shorthash in pairs)


def prompt_settings(embeddings: list[TextualInversion], components: Components, *,
                    padded: bool = False) -> dict[str, str | bool]:
    """{"TI hashes": ..., "Lora hashes": ..., "Pad conds": True} as A1111 writes them, for the embeddings the
    prompts used, the LoRAs merged into `components` for the job and whether the context was `padded`
    (`EncodedPrompts.padded`); each key only when there are some (padding: only when it happened, as A1111)."""
    settings: dict[str, str | bool] = {}
    if embeddings:
        settings[keys.TI_HASHES] = _hash_list((e.name, e.shorthash) for e in embeddings)
    if components.loras:
        settings[keys.LORA_HASHES] = _hash_list(components.loras)
    if padded:
        settings[keys.PAD_CONDS] = True
    return settings


def restore_mean_weighting(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis on one chunk: `states` (77, D) x `weights` (77,), rescaled to the old mean.

    Computed in float32 and returned in the states' dtype. When the weighted mean is 0 (every weight 0), the
    rescale is skipped rather than dividing by zero.
    """
    z = states.float()
    original_mean = z.mean()
    z = z * weights.to(z.device, torch.float32)[:, None]
    new_mean = z.mean()
    z = z * torch.where(new_mean != 0, original_mean / new_mean, 1.0)  # no host sync: the choice stays on device
    return z.to(states.dtype)


def _check_widths(chunks: list[Chunk], width: int) -> None:
    for chunk in chunks:
        for _, embedding in chunk.inserts:
            if embedding.vectors.shape[1] != width:
                raise InvalidRequest(
                    f"The embedding {embedding.name!r} has {embedding.vectors.shape[1]}-wide vectors; this "
                    f"checkpoint's text encoder needs {width}-wide ones."
                )


def encode_chunks(text_encoder: TextEncoder, chunks: list[Chunk], device: torch.device) -> torch.Tensor:
    """(N, 77, D) states of N chunks in one encoder batch: ids as they are, or with embeddings inserted."""
    ids = torch.tensor([chunk.ids for chunk in chunks], dtype=torch.long)
    if not any(chunk.inserts for chunk in chunks):
        return text_encoder(ids.to(device))[0]
    _check_widths(chunks, text_model_of(text_encoder).config.hidden_size)
    # the library's vectors are float32 numpy arrays (sd2_app/loading/embeddings.py): shared, never written
    inserts = [[(at, torch.as_tensor(embedding.vectors)) for at, embedding in chunk.inserts] for chunk in chunks]
    return encode_with_inserts(text_encoder, ids.to(device), inserts)


def encode_weighted_chunks(text_encoder: TextEncoder, rows: list[Chunk], device: torch.device) -> torch.Tensor:
    """(N, 77, D) states of N chunks in one encoder batch, each weighted chunk given its emphasis."""
    with torch.no_grad():
        hidden = encode_chunks(text_encoder, rows, device)
        if any(chunk.weighted for chunk in rows):
            hidden = hidden.clone()
            for index, chunk in enumerate(rows):
                if chunk.weighted:
                    hidden[index] = restore_mean_weighting(hidden[index], torch.tensor(chunk.weights))
    return hidden


def encode_tokenized_pair(text_encoder: TextEncoder, tokenizer: CLIPTokenizer, tokenized: list[TokenizedPrompt], *,
                          batch_size: int, device: torch.device) -> EncodedPrompts:
    """Context ((1+K)B, 77·k, D) = [uncond x B; cond x B of each part] with guidance, else (B, 77·k, D), of
    prompts already tokenized and checked (a one-phase `PromptPlan`'s texts, pipelines/prompt_schedule.py):
    `tokenized` is [prompt part 1, ..., part K, negative prompt] with guidance (K = 1: [prompt, negative prompt]),
    else [prompt]; all their chunks go through the encoder in one batch, the shorter prompts padded with encoded
    empty chunks."""
    prompts = tokenized[-1:] + tokenized[:-1]  # [uncond, cond of each part] with guidance, else [cond]
    k = max(len(p.chunks) for p in prompts)
    pad = empty_chunk(tokenizer)
    rows = [chunk for p in prompts for chunk in p.chunks + [pad] * (k - len(p.chunks))]
    hidden = encode_weighted_chunks(text_encoder, rows, device)  # (P·k, 77, D)
    width = hidden.shape[-1]
    halves = [hidden[i * k:(i + 1) * k].reshape(k * CHUNK_LENGTH, width) for i in range(len(prompts))]
    context = torch.cat([h[None].expand(batch_size, -1, -1) for h in halves]).contiguous()
    used = {e.name: e for p in tokenized for e in p.embeddings}
    return EncodedPrompts(context, list(used.values()), padded=any(len(p.chunks) < k for p in prompts))
