"""Prompt editing and alternation on the encoder side: a run's contexts, one per phase of its prompt schedule.

The phases, their texts and the limits on them are the run's `PromptPlan` (`prompt_plan.py`, no torch). A plan
of one phase is encoded by `encode_tokenized_pair`, the path a plain prompt always took, so a prompt without
editing or alternation gives the very context it always did. With several phases, each distinct text is
encoded once: the chunks of every text (and one empty chunk, when a text needs padding) go through the text
encoder in one call, and each phase's context is assembled from its two texts' states. Each chunk row is
encoded on its own (its attention sees only its own row), so this is the context each pair gives alone
(tests/pipelines/test_prompt_editing_runs.py compares them bit for bit on the CPU). Texts with fewer 75-token
chunks than the longest are padded with the encoded empty chunk (A1111 pads cond and uncond so, `pad_cond`),
so every phase has one shape and the loop picks a phase per call by index.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from sd2_app.checkpoints.components import Components
from sd2_app.pipelines.prompt import EncodedPrompts, encode_tokenized_pair, encode_weighted_chunks
from sd2_app.pipelines.prompt_chunks import CHUNK_LENGTH, empty_chunk
from sd2_app.pipelines.prompt_plan import PromptPlan, PromptSteps, plan_prompts


def _encode_phases(components: Components, plan: PromptPlan, batch_size: int) -> torch.Tensor:
    """(P, (1+K)B|B, 77·k, D): each distinct text of `plan` encoded once, in one encoder batch."""
    c = components
    texts = list(plan.texts.values())
    k = plan.chunks
    pad = [empty_chunk(c.tokenizer)] if any(len(tokens.chunks) < k for tokens in texts) else []
    rows = [chunk for tokens in texts for chunk in tokens.chunks] + pad
    hidden = encode_weighted_chunks(c.text_encoder, rows, c.device)  # (sum of chunks [+ 1], 77, D)
    empty, width = hidden[len(rows) - len(pad):], hidden.shape[-1]  # the empty chunk's states, if encoded
    states: dict[str, torch.Tensor] = {}
    start = 0
    for text, tokens in plan.texts.items():
        count = len(tokens.chunks)
        padded = torch.cat([hidden[start:start + count], empty.expand(k - count, -1, -1)])
        states[text] = padded.reshape(k * CHUNK_LENGTH, width)
        start += count
    contexts = []
    for phase in plan.pairs:  # (part 1, ..., part K, negative prompt) -> [uncond; cond of each part]
        halves = [states[phase[-1]], *(states[text] for text in phase[:-1])] if plan.use_cfg else [states[phase[0]]]
        contexts.append(torch.cat([h[None].expand(batch_size, -1, -1) for h in halves]))
    return torch.stack(contexts)


def plan_of(components: Components, prompt: str, negative_prompt: str, *, use_cfg: bool,
            steps: PromptSteps) -> PromptPlan:
    """The prompts' plan: the one the request's validation made when the components carry the Service's
    `prompt_plans` (made again for other inputs), else made here."""
    c = components
    planner = c.prompt_plans.plan if c.prompt_plans is not None else plan_prompts
    return planner(c.tokenizer, prompt, negative_prompt, use_cfg=use_cfg, steps=steps, embeddings=c.embeddings)


def encode_prompt_schedule(components: Components, prompt: str, negative_prompt: str, *, batch_size: int,
                           use_cfg: bool, steps: PromptSteps) -> EncodedPrompts:
    """The prompts' context for each phase of their schedules (the negative one's only with guidance), with the
    components' text encoder, tokenizer, device and embeddings.

    The plan is the one the request's validation made when the components carry the Service's
    `prompt_plans` (made again for other inputs), else made here. One phase: the context of the plain pair
    (`encode_tokenized_pair`), `phases` (). Several: context (P, (1+K)B|B, 77·k, D) and the phase of every UNet
    call. K is the prompt's composable parts, whose weights come along. Raises InvalidRequest for a prompt over
    the chunk limit or a schedule over MAX_PHASE_CHUNKS (`plan_prompts`).
    """
    c = components
    plan = plan_of(c, prompt, negative_prompt, use_cfg=use_cfg, steps=steps)
    if len(plan.pairs) == 1:
        encoded = encode_tokenized_pair(c.text_encoder, c.tokenizer, plan.read(plan.pairs[0]), batch_size=batch_size,
                                        device=c.device)
        return replace(encoded, weights=plan.weights)
    return EncodedPrompts(_encode_phases(c, plan, batch_size), plan.embeddings(), plan.order, plan.weights,
                          plan.padded)
