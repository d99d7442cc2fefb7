"""Prompt editing and alternation on the encoder side: a run's contexts, one per phase of its prompt schedule.

The schedules (`sd2_app.prompt_editing`) count UNet calls as A1111 does: its CFG denoiser counts its calls
from 0 and call i reads the first schedule entry whose last step is >= i (A1111 modules/prompt_parser.py,
`reconstruct_cond_batch`; modules/sd_samplers_cfg_denoiser.py, `CFGDenoiser.forward`), over a schedule of
`steps` x the sampler's UNet calls per step (A1111 modules/processing.py, `setup_conds`, with
modules/sd_samplers_common.py `SamplerData.total_steps`: Heun and DPM2 call it twice). An image-to-image run
counts from 0 at its first call over all its `steps`, whatever the strength cuts, and the hires fix's second
pass over its hires steps, counted on from the first pass (`hires_prompt_steps`), as there.

A phase is one (prompt text, negative prompt text) pair; each distinct pair is encoded once before sampling,
by the same `encode_prompt_pair` a plain prompt goes through, so a prompt without editing or alternation
gives the very context it always did, and a phase's context is what that pair gives alone. Phases with fewer
75-token chunks than the longest are padded with the encoded empty chunk (A1111 pads cond and uncond so,
`pad_cond`), so every phase has one shape and the loop picks a phase per call by index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sd2_app.checkpoints.components import Components
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.prompt import EncodedPrompts, encode_prompt_pair, encode_weighted_chunks
from sd2_app.pipelines.prompt_chunks import CHUNK_LENGTH, empty_chunk
from sd2_app.prompt_editing import Schedule, prompt_schedule
from sd2_app.samplers.registry import SAMPLERS

if TYPE_CHECKING:
    from sd2_app.api.requests import HiresFix, Sampling

MAX_PHASE_CHUNKS = 64  # phases x chunks per phase: bounds the encoder's work and the contexts' memory


@dataclass(frozen=True)
class PromptSteps:
    """The UNet calls a schedule spans (A1111's `total_steps`), and the first pass's for a hires second pass."""

    calls: int
    first_pass_calls: int | None = None


def unet_calls(sampling: Sampling) -> int:
    """A run's schedule length in UNet calls: its steps x the sampler's calls per step."""
    return sampling.steps * SAMPLERS[sampling.sampler].order


def prompt_steps(sampling: Sampling) -> PromptSteps:
    """The prompt schedule of a run with `sampling` (image-to-image too: all its steps, whatever the strength)."""
    return PromptSteps(unet_calls(sampling))


def hires_prompt_steps(first_pass: Sampling, hires: HiresFix) -> PromptSteps:
    """The hires fix's second pass: its hires steps x its sampler's calls per step (not the longer schedule whose
    end it runs), counted on from the first pass's calls (A1111 modules/processing.py, `setup_conds`: the hr
    conds are built for the hires steps with the first pass's as base)."""
    sampler = SAMPLERS[hires.sampler or first_pass.sampler]
    return PromptSteps((hires.steps or first_pass.steps) * sampler.order, unet_calls(first_pass))


def _entry_at(schedule: Schedule, call: int) -> int:
    """A1111's pick: the first entry whose last step is >= call. Past the end A1111 falls back to the first
    entry; we keep the last (it cannot happen with these call counts)."""
    for index, (last_step, _) in enumerate(schedule):
        if call <= last_step:
            return index
    return len(schedule) - 1


def call_phases(prompt: Schedule, negative: Schedule, calls: int) -> tuple[list[tuple[str, str]], tuple[int, ...]]:
    """The distinct (prompt, negative prompt) texts in order of first use, and the phase of each call 0..calls-1."""
    pairs: list[tuple[str, str]] = []
    order: list[int] = []
    for call in range(calls):
        pair = (prompt[_entry_at(prompt, call)][1], negative[_entry_at(negative, call)][1])
        if pair not in pairs:
            pairs.append(pair)
        order.append(pairs.index(pair))
    return pairs, tuple(order)


def _check_cost(phases: int, chunks: int) -> None:
    if phases * chunks > MAX_PHASE_CHUNKS:
        raise InvalidRequest(
            f"The prompt editing and alternation make {phases} different prompt pairs of {chunks} chunk(s) each; "
            f"at most {MAX_PHASE_CHUNKS} pairs x chunks are allowed. Use fewer alternatives or shorter prompts."
        )


def encode_prompt_schedule(components: Components, prompt: str, negative_prompt: str, *, batch_size: int,
                           use_cfg: bool, steps: PromptSteps) -> EncodedPrompts:
    """`encode_prompt_pair` for each phase of the prompts' schedules (the negative one's only with guidance),
    with the components' text encoder, tokenizer, device and embeddings.

    One phase: exactly `encode_prompt_pair`'s context, `phases` (). Several: context (P, 2B|B, 77·k, D) and
    the phase of every UNet call. Raises InvalidRequest for a prompt over the chunk limit or a schedule over
    MAX_PHASE_CHUNKS.
    """
    positive = prompt_schedule(prompt, steps.calls, steps.first_pass_calls)
    negative = (prompt_schedule(negative_prompt, steps.calls, steps.first_pass_calls) if use_cfg
                else [(steps.calls, negative_prompt)])
    pairs, order = call_phases(positive, negative, steps.calls)
    _check_cost(len(pairs), 1)

    c = components

    def encode(pair: tuple[str, str]) -> EncodedPrompts:
        return encode_prompt_pair(c.text_encoder, c.tokenizer, *pair, batch_size=batch_size, use_cfg=use_cfg,
                                  device=c.device, embeddings=c.embeddings)

    if len(pairs) == 1:
        return encode(pairs[0])
    encoded = [encode(pair) for pair in pairs]
    lengths = [e.context.shape[1] for e in encoded]
    _check_cost(len(pairs), max(lengths) // CHUNK_LENGTH)
    if len(set(lengths)) > 1:
        with torch.no_grad():
            empty = encode_weighted_chunks(c.text_encoder, [empty_chunk(c.tokenizer)], c.device)  # (1, 77, D)
        for e in encoded:
            missing = (max(lengths) - e.context.shape[1]) // CHUNK_LENGTH  # chunks this phase lacks
            e.context = torch.cat([e.context, empty.repeat(e.context.shape[0], missing, 1)], dim=1)
    used = {t.name: t for e in encoded for t in e.embeddings}
    return EncodedPrompts(torch.stack([e.context for e in encoded]), list(used.values()), order)
