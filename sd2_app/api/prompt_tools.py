"""What the prompt boxes ask of the service besides generating: the token counter and the embeddings list.

The counter is called on every pause in typing, by every visitor, so it is kept light and apart from the GPU
queue: it only tokenizes (the same parser and chunker generation uses), holds one of a few slots of its own
(waiting at most half a second for one; then it answers None and the box keeps its last count), and reads the
checkpoint's tokenizer without loading its models.

A prompt with editing or alternation (sd2_app/prompt_editing.py) counts as its longest plain prompt, as A1111's
counter does (modules/ui.py, `update_token_counter`); A1111 reads the schedule at the steps slider's value, the
counter here at the most UNet calls a run may have (every alternative and edit a run could reach). Like
A1111's, it leaves extra-network tags (`<lora:name:0.8>`) out of either box's count.

`check` is the pipeline's own prompt check (`sd2_app.pipelines.prompt_plan.plan_prompts`: the chunk limit, the
phases x chunks limit) made when the Service validates a request, for every pass that encodes its prompts, so
a refused prompt gets its message before the job waits for the GPU, from every front end alike. The plans it
makes are kept in the Service's `PromptPlans` (`plans`), which `lend` hands to each job with the embeddings:
the pipeline takes the plan its validation made instead of planning the prompts again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sd2_app.api.checks import MAX_PROMPT_CHARS, Catalog
from sd2_app.api.hires_x4 import x4_request
from sd2_app.api.plot import cell_caption
from sd2_app.api.requests import X4_UPSCALER, Request, Txt2ImgRequest, guidance_on
from sd2_app.api.upscaler_names import x4_checkpoint
from sd2_app.api.watched_folder import WatchedFolder
from sd2_app.errors import InvalidRequest, LoadError, shown
from sd2_app.fork_safety import renew_in_forked_child
from sd2_app.pipelines.prompt_chunks import MAX_CHUNKS, tokenize_prompts
from sd2_app.pipelines.prompt_plan import (CarriedPlan, PlotTextRefused, PromptPlans, PromptSteps, ReadBudget,
                                           hires_prompt_steps, plan_key, prompt_steps)
from sd2_app.prompt_editing import prompt_variants
from sd2_app.prompt_syntax import prompt_parts, without_extra_networks
from sd2_app.samplers.registry import SAMPLERS

if TYPE_CHECKING:
    from sd2_app.api.plot_cells import PlotCell
    from sd2_app.api.service import Service  # the Service owns its PromptTools: it imports this module
    from sd2_app.loading.embeddings import EmbeddingLibrary

log = logging.getLogger(__name__)

COUNTER_SLOTS = 4  # token counts computed at once
SLOT_WAIT_S = 0.5  # how long a count waits for a slot (a page load asks for every tab's counts together)


PromptPass = tuple[str, str, str, bool, PromptSteps]  # checkpoint, prompt, negative prompt, guidance, schedule


def prompt_passes(request: Request, catalog: Catalog) -> list[PromptPass]:
    """The passes of a validated request that encode its prompts: its own run, and with the hires fix the
    second pass (`hires_prompt_steps`, with its own prompts where it has them: `HiresFix.prompts`) and, for the
    "SD2 x4" upscaler, the x4 stage (`x4_request`, the first pass's prompts) between. Empty for a request without
    prompts."""
    prompt = getattr(request, "prompt", None)
    sampling = getattr(request, "sampling", None)
    if not isinstance(prompt, str) or sampling is None:
        return []
    negative = request.negative_prompt  # type: ignore[union-attr]  # every request with a prompt has one
    passes = [(request.checkpoint, prompt, negative, guidance_on(sampling.cfg_scale), prompt_steps(sampling))]
    hires = request.hires if isinstance(request, Txt2ImgRequest) else None
    if hires is not None:
        upscaler = x4_checkpoint(catalog) if hires.upscaler == X4_UPSCALER else None
        if upscaler is not None:
            x4 = x4_request(request, None, upscaler)  # type: ignore[arg-type]  # a Txt2ImgRequest
            passes.append((upscaler, prompt, negative, guidance_on(x4.sampling.cfg_scale), prompt_steps(x4.sampling)))
        passes.append((request.checkpoint, *hires.prompts(prompt, negative), guidance_on(sampling.cfg_scale),
                       hires_prompt_steps(sampling, hires)))
    return passes


class PromptTools:
    """Token counting, prompt checks and what a job borrows (embeddings, prompt plans) for one `Service` (reads
    its manager, registry and library)."""

    def __init__(self, service: Service, embeddings: EmbeddingLibrary | None = None,
                 slots: int = COUNTER_SLOTS) -> None:
        self._service = service
        self._embeddings = WatchedFolder(embeddings) if embeddings is not None else None  # read again when changed
        self.plans = PromptPlans()  # the plans `check` made, for the jobs of the same requests
        self._slots = threading.BoundedSemaphore(slots)
        self._tokenizers: dict[str, Any] = {}
        self._tokenizer_lock = threading.Lock()  # one tokenizer read at a time (the first may download)
        # ZeroGPU's GPU calls run in forked workers: fresh ones there (sd2_app/fork_safety.py)
        renew_in_forked_child(self, _slots=lambda: threading.BoundedSemaphore(slots), _tokenizer_lock=threading.Lock)

    def embedding_library(self, refresh: bool = False) -> EmbeddingLibrary | None:
        """The embeddings folder as last read (`refresh`: looked at now); None without one."""
        if self._embeddings is None:
            return None
        return self._embeddings.refresh() if refresh else self._embeddings.library

    def _library(self) -> dict[str, Any]:
        library = self.embedding_library()
        return dict(library.embeddings) if library is not None else {}

    def embedding_names(self) -> list[str]:
        return sorted(self._library())

    def lend(self, components: Any) -> Any:
        """A copy of `components` that carries the embeddings (when the library has any) and the prompt plans
        (the shared models are untouched)."""
        if not dataclasses.is_dataclass(components):
            return components
        library = self._library()
        lent = {"embeddings": library} if library else {}
        return dataclasses.replace(components, prompt_plans=self.plans, **lent)

    def _tokenizer(self, checkpoint: str) -> Any:
        with self._tokenizer_lock:
            if checkpoint not in self._tokenizers:
                manager = self._service.manager
                if manager is None:  # a Service that only validates
                    return None
                self._tokenizers[checkpoint] = manager.tokenizer(checkpoint)
            return self._tokenizers[checkpoint]

    def check(self, request: Request, checked: set[PromptPass] | None = None, budget: ReadBudget | None = None) -> None:
        """Raise the InvalidRequest the pipeline would raise for a validated request's prompts (too long, too
        many phases x chunks); passes in `checked` are skipped, and each one checked is added; `budget`: the
        plot's (`check_cells`). A checkpoint whose tokenizer cannot be read here is left to the pipeline."""
        for one_pass in prompt_passes(request, self._service.catalog):
            if checked is not None:
                if one_pass in checked:
                    continue
                checked.add(one_pass)
            checkpoint, prompt, negative, guided, steps = one_pass
            try:
                tokenizer = self._tokenizer(checkpoint)
            except LoadError as error:
                log.warning("prompt check: no tokenizer for %s: %s", checkpoint, error)
                continue
            if tokenizer is not None:
                self.plans.plan(tokenizer, prompt, negative, use_cfg=guided, steps=steps, embeddings=self._library(),
                                budget=budget)

    def carried(self, requests: Iterable[Request]) -> tuple[CarriedPlan, ...]:
        """The plans `check` kept for the prompt passes of the validated `requests`, as plain data for the process
        that runs them (`Checked.plans`)."""
        keys = []
        for request in requests:
            for checkpoint, prompt, negative, guided, steps in prompt_passes(request, self._service.catalog):
                try:
                    tokenizer = self._tokenizer(checkpoint)
                except LoadError:  # `check` left it to the pipeline
                    continue
                if tokenizer is not None:
                    keys.append(plan_key(tokenizer, prompt, negative, guided, steps))
        return self.plans.carried(keys)

    def adopt(self, carried: Iterable[CarriedPlan]) -> None:
        """Keep plans `carried` from the process that checked the request, made with this library."""
        self.plans.adopt(carried, self._library())

    def check_cells(self, cells: list[PlotCell]) -> None:
        """`check` of every cell of an X/Y/Z plot, a pass several cells share once, all of them within the plot's
        `ReadBudget` (`Limits.max_plot_prompt_chars`); a refusal of one cell's prompts names its cell's values
        first, as the plot's other cell refusals do (`sd2_app.api.plot.plan_cells`)."""
        checked: set[PromptPass] = set()
        budget = ReadBudget(self._service.limits.max_plot_prompt_chars)
        for cell in cells:
            try:
                self.check(cell.request, checked, budget)
            except PlotTextRefused:
                raise
            except InvalidRequest as error:
                raise InvalidRequest(f"{cell_caption(cell)}: {error}") from error

    def count(self, text: Any, checkpoint: Any, *, negative: bool = False) -> str | None:
        """"23/75", "93/150" or "612/600 (over the 8-chunk limit)"; None when all slots stay busy. A prompt's
        count is its longest composable part's (A1111's counter cuts the prompt at AND, not the `negative` one).

        Raises InvalidRequest for a text that is not a string or is over the prompt length limit, or an
        unknown checkpoint.
        """
        if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
            raise InvalidRequest(f"A prompt is a text of at most {MAX_PROMPT_CHARS} characters.")
        if not isinstance(checkpoint, str) or checkpoint not in self._service.registry:
            raise InvalidRequest(f"Unknown checkpoint {shown(checkpoint)}.")
        if not self._slots.acquire(timeout=SLOT_WAIT_S):
            return None
        try:
            tokenizer = self._tokenizer(checkpoint)
            if tokenizer is None:
                return None
            horizon = self._service.limits.max_steps * max(spec.order for spec in SAMPLERS.values())
            parts = [text for text, _ in prompt_parts(text)] if not negative else [without_extra_networks(text)]
            variants = tokenize_prompts(tokenizer, [variant for part in parts for variant in
                                                    prompt_variants(part, horizon)], self._library())
            tokens = max(variants, key=lambda variant: variant.token_count)  # the first of the longest
        except LoadError as error:
            log.warning("token counter: no tokenizer for %s: %s", checkpoint, error)
            return None
        finally:
            self._slots.release()
        counted = f"{tokens.token_count}/{tokens.token_limit}"
        if len(tokens.chunks) > MAX_CHUNKS:
            counted += f" (over the {MAX_CHUNKS}-chunk limit)"
        return counted
