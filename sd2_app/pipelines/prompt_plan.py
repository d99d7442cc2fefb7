"""A run's prompts before any model: the phases of its prompt schedule, each distinct text tokenized once, and
the two limits on them. No torch: the pipeline encodes a `PromptPlan` (`prompt_schedule.py`), and the Service
makes the same plan when it validates a request (`sd2_app.api.prompt_tools`), so a prompt over a limit is
refused with the same message before the job waits for the GPU.

The schedules (`sd2_app.prompt_editing`) count UNet calls as A1111 does: its CFG denoiser counts its calls
from 0 and call i reads the first schedule entry whose last step is >= i (A1111 modules/prompt_parser.py,
`reconstruct_cond_batch`; modules/sd_samplers_cfg_denoiser.py, `CFGDenoiser.forward`), over a schedule of
`steps` x the sampler's UNet calls per step (A1111 modules/processing.py, `setup_conds`, with
modules/sd_samplers_common.py `SamplerData.total_steps`: Heun and DPM2 call it twice). An image-to-image run
counts from 0 at its first call over all its `steps`, whatever the strength cuts, and the hires fix's second
pass over its hires steps, counted on from the first pass (`hires_prompt_steps`), as there.

The prompt is first cut into its composable parts (`prompt_syntax.subprompts`: A1111's AND and part weights), each
with its own schedule. A phase is one text of each part and the negative prompt's, (part 1, ..., part K, negative
prompt): a (prompt, negative prompt) pair for a prompt of one part. The limits: each text at most MAX_CHUNKS chunks
of 75 tokens (`prompt_chunks.check_length`), at most MAX_PARTS parts, which need guidance, and phases x parts x
chunks per text at most MAX_PHASE_CHUNKS.

A request is planned once: the Service keeps the plans its validation makes in its `PromptPlans` and lends them to the job
(`Components.prompt_plans`), so the pipeline, and a second validation of the same request (ZeroGPU's duration
estimate validates before the run does), take the plan made for the same inputs instead of planning again. A
process that did not make the plans (ZeroGPU's worker, forked before the request came) gets them with the
request, as plain data (`CarriedPlan`), and keeps them (`PromptPlans.adopt`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sd2_app.errors import InvalidRequest
from sd2_app.fork_safety import renew_in_forked_child
from sd2_app.pipelines.prompt_chunks import TokenizedPrompt, check_length, tokenize_prompts
from sd2_app.prompt_editing import Schedule, prompt_schedule
from sd2_app.prompt_syntax import prompt_parts
from sd2_app.samplers.registry import SAMPLERS

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from sd2_app.api.requests import HiresFix, Sampling
    from sd2_app.loading.embeddings import TextualInversion

MAX_PHASE_CHUNKS = 64  # phases x parts x chunks per text: bounds the encoder's work and the contexts' memory
MAX_PARTS = 8  # composable parts of a prompt (A1111's AND): each adds the images' rows to every UNet call
MAX_PART_WEIGHT = 10.0  # a part's weight multiplies its guidance: past this the image is noise (A1111 has no limit)
KEPT_CHUNKS = 2048  # the chunks a Service's PromptPlans keeps (each ~5 KB of Python ids and weights)


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


Phase = tuple[str, ...]  # a text of each schedule: (prompt part 1, ..., part K, negative prompt)


def call_phases(schedules: Sequence[Schedule], calls: int) -> tuple[list[Phase], tuple[int, ...]]:
    """The distinct phases (a text of each schedule, in the schedules' order) in order of first use, and the phase
    of each call 0..calls-1.

    Call i reads each schedule's first entry whose last step is >= i (A1111's pick); past the end, the last
    entry (it cannot happen with these call counts). The schedules ascend, so one pass walks them."""
    phase_of: dict[Phase, int] = {}
    order: list[int] = []
    at = [0] * len(schedules)
    for call in range(calls):
        for index, schedule in enumerate(schedules):
            while at[index] < len(schedule) - 1 and schedule[at[index]][0] < call:
                at[index] += 1
        phase = tuple(schedule[at[index]][1] for index, schedule in enumerate(schedules))
        order.append(phase_of.setdefault(phase, len(phase_of)))
    return list(phase_of), tuple(order)


def check_phase_cost(phases: int, chunks: int, parts: int = 1) -> None:
    """Refuse `phases` phases of `parts` prompt parts, with texts of `chunks` chunks each, over MAX_PHASE_CHUNKS."""
    if phases * parts * chunks <= MAX_PHASE_CHUNKS:
        return
    if parts == 1:
        raise InvalidRequest(
            f"The prompt editing and alternation make {phases} different prompt pairs of {chunks} chunk(s) each; "
            f"at most {MAX_PHASE_CHUNKS} pairs x chunks are allowed. Use fewer alternatives or shorter prompts.")
    raise InvalidRequest(
        f"The prompt's {parts} parts joined by AND, with its prompt editing and alternation, make {phases} different "
        f"steps of {chunks} chunk(s) per part; at most {MAX_PHASE_CHUNKS} steps x parts x chunks are allowed. Use "
        "fewer parts, fewer alternatives or shorter prompts.")


def check_parts(parts: Sequence[tuple[str, float]], use_cfg: bool) -> None:
    """Refuse more than MAX_PARTS composable parts, a weight beyond ±MAX_PART_WEIGHT, and parts or a part weight
    other than 1 without guidance (their pulls are measured from the negative prompt's prediction, which only
    guidance computes)."""
    if len(parts) > MAX_PARTS:
        raise InvalidRequest(f"The prompt has {len(parts)} different parts joined by AND; at most {MAX_PARTS} are "
                             "allowed.")
    for text, weight in parts:
        if abs(weight) > MAX_PART_WEIGHT:
            shown = text if len(text) <= 30 else text[:29] + "…"
            raise InvalidRequest(f'The prompt\'s part "{shown}" has weight {weight:g} (the number after its last '
                                 f"colon, as A1111 reads it); a part's weight is limited to ±{MAX_PART_WEIGHT:g}. "
                                 'End it with "," to keep the number as text.')
    if not use_cfg and (len(parts) > 1 or parts[0][1] != 1.0):
        what = ("parts joined by AND need" if len(parts) > 1
                else f"weight {parts[0][1]:g} (the number after its last colon) needs")
        raise InvalidRequest(f"The prompt's {what} classifier-free guidance: set the CFG scale above 1.")


@dataclass(frozen=True)
class PromptPlan:
    """What the text encoder reads for one run."""

    pairs: list[Phase]  # the phases' (prompt part 1, ..., part K, negative prompt) texts, in order of first use
    order: tuple[int, ...]  # the phase of each UNet call
    texts: dict[str, TokenizedPrompt]  # each distinct text read (negative ones only with guidance), once
    use_cfg: bool
    weights: tuple[float, ...] = (1.0,)  # each prompt part's weight (`prompt_syntax.subprompts`)

    @property
    def chunks(self) -> int:
        """Chunks per phase: the longest text's."""
        return max(len(tokens.chunks) for tokens in self.texts.values())

    @property
    def padded(self) -> bool:
        """Whether a text has fewer chunks than the longest, so the encoder pads it with the empty chunk."""
        return any(len(tokens.chunks) < self.chunks for tokens in self.texts.values())

    def read(self, pair: Phase) -> list[TokenizedPrompt]:
        """The phase's tokenized texts: [part 1, ..., part K, negative prompt] with guidance, else [prompt]."""
        return [self.texts[text] for text in (pair if self.use_cfg else pair[:1])]

    def embeddings(self) -> list[TextualInversion]:
        """The embeddings the texts use, phase by phase, the prompt's before the negative prompt's."""
        used = {e.name: e for pair in self.pairs for tokens in self.read(pair) for e in tokens.embeddings}
        return list(used.values())


def plan_prompts(tokenizer: CLIPTokenizer, prompt: str, negative_prompt: str, *, use_cfg: bool,
                 steps: PromptSteps, embeddings: Mapping[str, TextualInversion] | None = None,
                 budget: ReadBudget | None = None) -> PromptPlan:
    """The run's phases and its texts tokenized (one tokenizer call for all of them), within the limits. The
    prompt's extra-network tags are taken out first, the negative prompt's kept as text (A1111's rule,
    `prompt_syntax.without_extra_networks`); then the prompt is cut into its composable parts (A1111's order:
    modules/processing.py parses extra networks before `get_multicond_learned_conditioning`), the negative prompt
    read whole, AND and all, as A1111 reads it.

    Raises InvalidRequest for too many parts or parts without guidance (`check_parts`), too many phases (checked
    before tokenizing), a text over MAX_CHUNKS chunks (the first in phase order, its prompt before its negative
    prompt), or phases x parts x chunks over MAX_PHASE_CHUNKS; with a `budget`, the characters of the distinct
    texts are spent from it before they are read (it raises once they run over).
    """
    parts = prompt_parts(prompt)
    check_parts(parts, use_cfg)
    positives = [prompt_schedule(text, steps.calls, steps.first_pass_calls) for text, _ in parts]
    negative = (prompt_schedule(negative_prompt, steps.calls, steps.first_pass_calls) if use_cfg
                else [(steps.calls, negative_prompt)])
    pairs, order = call_phases([*positives, negative], steps.calls)
    check_phase_cost(len(pairs), 1, len(parts))
    labels = ("prompt",) * len(parts) + ("negative prompt",)
    read = [(text, label) for pair in pairs for text, label in zip(pair if use_cfg else pair[:1], labels)]
    distinct = list(dict.fromkeys(text for text, _ in read))
    if budget is not None:
        budget.spend(distinct)
    texts = dict(zip(distinct, tokenize_prompts(tokenizer, distinct, embeddings)))
    for text, label in read:
        check_length(texts[text], label)
    plan = PromptPlan(pairs, order, texts, use_cfg, tuple(weight for _, weight in parts))
    check_phase_cost(len(pairs), plan.chunks, len(parts))
    return plan


class ReadBudget:
    """The characters that the prompt passes of one X/Y/Z plot may have the parser and the tokenizer read: the
    distinct texts of every pass's phases (after prompt editing and alternation), kept plans counted as if read,
    so the same plot gets the same answer whatever was planned before. `spend` raises InvalidRequest once they
    come to more than `limit` (`Limits.max_plot_prompt_chars`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0

    def spend(self, texts: Iterable[str]) -> None:
        """Count `texts` (about to be read) against the limit."""
        self.spent += sum(len(text) for text in texts)
        if self.spent > self.limit:
            raise PlotTextRefused(
                f"This plot's prompts are too much text to read: after prompt editing and alternation its cells' "
                f"prompts and negative prompts come to more than {self.limit:,} characters (counted once per "
                "different text of each cell). Use fewer cells, shorter prompts or fewer alternatives.")


class PlotTextRefused(InvalidRequest):
    """A plot whose prompts run over its `ReadBudget`: the whole plot's, not one cell's."""


def tokenizer_source(tokenizer: CLIPTokenizer) -> tuple[Any, ...]:
    """What decides how `tokenizer` reads text: the folder it was read from (`loading.tokenizer.load_tokenizer`;
    a Hub snapshot's folder names its commit, so another repo or revision is another folder) with its class and
    vocabulary size; for a tokenizer not read from a folder, the object itself."""
    folder = getattr(tokenizer, "name_or_path", "")
    if not folder:
        return ("object", id(tokenizer))
    return (type(tokenizer).__name__, folder, tokenizer.vocab_size)


PlanKey = tuple[Any, ...]  # what a kept plan is kept for (`plan_key`)


def plan_key(tokenizer: CLIPTokenizer, prompt: str, negative_prompt: str, use_cfg: bool,
             steps: PromptSteps) -> PlanKey:
    return (tokenizer_source(tokenizer), prompt, negative_prompt, use_cfg, steps)


def _same_embeddings(kept: Mapping[str, TextualInversion], given: Mapping[str, TextualInversion]) -> bool:
    """The same names for the very same embedding objects (a library read again is new objects)."""
    return kept.keys() == given.keys() and all(given[name] is embedding for name, embedding in kept.items())


def _same_content(carried: Mapping[str, TextualInversion], given: Mapping[str, TextualInversion]) -> bool:
    """The same names for embeddings of the same file and vectors (a carried plan's are copies)."""
    return carried.keys() == given.keys() and all(
        given[name].shorthash == embedding.shorthash and np.array_equal(given[name].vectors, embedding.vectors)
        for name, embedding in carried.items())


def _chunks(plan: PromptPlan) -> int:
    return sum(len(tokens.chunks) for tokens in plan.texts.values())


@dataclass(frozen=True)
class CarriedPlan:
    """A kept plan as plain data for another process: ZeroGPU's worker, forked from the app's process before the
    request was planned there, gets its plans with the request (`sd2_app.api.checked.Checked.plans`) and keeps
    them (`PromptPlans.adopt`) instead of planning again."""

    key: PlanKey
    plan: PromptPlan
    embeddings: dict[str, TextualInversion]  # the library the plan read


@dataclass(frozen=True)
class _Kept:
    plan: PromptPlan
    tokenizer: CLIPTokenizer | None  # held, so a source that is the object's id stays that object's while kept
    embeddings: dict[str, TextualInversion]  # the library the plan read (its objects held, compared by identity)
    chunks: int


class PromptPlans:
    """The prompt plans one Service made, kept for the rest of their requests (the Service owns one; it lends it
    to each job as `Components.prompt_plans`), so a request is planned once: its validation plans each pass,
    and the pipeline, or a second validation of the same request, gets the same plan back.

    A plan is given back only for the same prompt, negative prompt, guidance and schedule (`PromptSteps`: a hires
    fix's second pass has its own), a tokenizer of the same source (`tokenizer_source`: a checkpoint loaded
    from another repo in between is planned anew) and the very same embeddings; otherwise it is planned again.
    Plans are shared by the runs that get them and never written. At most `max_chunks` chunks are kept, the
    least recently used plans dropped first. The lock guards the table only: planning runs outside it."""

    def __init__(self, max_chunks: int = KEPT_CHUNKS) -> None:
        self._max_chunks = max_chunks
        self._kept: OrderedDict[tuple[Any, ...], _Kept] = OrderedDict()
        self._chunks = 0
        self._lock = threading.Lock()
        renew_in_forked_child(self, _lock=threading.Lock)  # ZeroGPU's GPU calls run in forked workers

    def __len__(self) -> int:
        return len(self._kept)

    def plan(self, tokenizer: CLIPTokenizer, prompt: str, negative_prompt: str, *, use_cfg: bool,
             steps: PromptSteps, embeddings: Mapping[str, TextualInversion] | None = None,
             budget: ReadBudget | None = None) -> PromptPlan:
        """`plan_prompts(...)`: the plan kept for these very inputs (its texts spent from `budget` all the same),
        else a new one, kept. Raises what `plan_prompts` raises (a refused prompt is not kept)."""
        library = dict(embeddings or {})
        key = plan_key(tokenizer, prompt, negative_prompt, use_cfg, steps)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and not _same_embeddings(kept.embeddings, library):
                kept = None
            if kept is not None:
                self._kept.move_to_end(key)
        if kept is not None:
            if budget is not None:
                budget.spend(kept.plan.texts)
            return kept.plan
        plan = plan_prompts(tokenizer, prompt, negative_prompt, use_cfg=use_cfg, steps=steps, embeddings=embeddings,
                            budget=budget)
        self._keep(key, _Kept(plan, tokenizer, library, _chunks(plan)))
        return plan

    def carried(self, keys: Iterable[PlanKey]) -> tuple[CarriedPlan, ...]:
        """The plans kept for `keys`, as plain data (those of a tokenizer not read from a folder stay: their source
        is an object of this process)."""
        with self._lock:
            found = [(key, self._kept.get(key)) for key in dict.fromkeys(keys)]
        return tuple(CarriedPlan(key, kept.plan, kept.embeddings) for key, kept in found
                     if kept is not None and key[0][0] != "object")

    def adopt(self, carried: Iterable[CarriedPlan], library: Mapping[str, TextualInversion]) -> None:
        """Keep plans `carried` from another process that read the same library as `library` (the same names,
        files and vectors), as if made here with it; a plan already kept for the same key stays."""
        library = dict(library)
        for plan in carried:
            with self._lock:
                known = plan.key in self._kept
            if not known and _same_content(plan.embeddings, library):
                self._keep(plan.key, _Kept(plan.plan, None, library, _chunks(plan.plan)))

    def _keep(self, key: tuple[Any, ...], kept: _Kept) -> None:
        with self._lock:
            replaced = self._kept.pop(key, None)
            self._chunks += kept.chunks - (replaced.chunks if replaced is not None else 0)
            self._kept[key] = kept
            while self._chunks > self._max_chunks and len(self._kept) > 1:
                _, dropped = self._kept.popitem(last=False)
                self._chunks -= dropped.chunks
