"""Batch count (A1111's "Batch count", its API's `n_iter`): a request's batches, run one after another.

The one rule of every front end that offers it (the web tabs and their gradio API parameter `batch_count`, the
A1111 API's `n_iter`):
- Limits (`checked_batch_count`): 1 to `Limits.max_images` batches, and batch count x images per prompt at most
  `Limits.max_images` images per request. A job's cost (`sd2_app.api.cost.job_cost`) is one batch's times the
  batch count, so the operator's cost cap (and a ZeroGPU call's duration) covers all the batches together.
- Seeds (`batch_requests`): batch k (from 0) runs at seed + k x images per prompt, so every image's seed
  follows on from the one before, within a batch and across batches (api/requests.py, `numbered_seeds`), as A1111
  numbers them (modules/processing.py, `process_images_inner`: `all_seeds` are seed + x for the x-th image);
  with a variation seed (variation strength above 0) A1111 keeps the seed and advances the variation seed
  instead (`all_subseeds`), and so does this.
- Each batch is a request of its own (batch count 1): its images carry its own parameters text, each with the
  image's own seed; the text has no batch count, as A1111 writes none ("Batch size" and "Batch pos" only).
- Stop ends the running batch at its next step and starts no other; the batches finished before it are the
  result (`Result.stopped`), with the stopped batch's image so far where the run keeps it (a visitor's Stop:
  `Service.run`'s `keep_stopped`), as A1111's Interrupt keeps the images made so far. Nothing kept: `Cancelled`.
- Skip (A1111's Skip) ends the running batch at its next step, keeps its image so far as Stop would, and goes
  on with the next batch: the result has every batch, the skipped ones' images so far among them, each said in a
  warning. A batch skipped before its first step has no image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from sd2_app.api.checks import Limits, integer
from sd2_app.api.progress import kept_so_far, said_skipped
from sd2_app.api.results import ProgressFn, Result
from sd2_app.errors import Cancelled, InvalidRequest

R = TypeVar("R")


def checked_batch_count(count: Any, batch_size: Any, limits: Limits,
                        names: tuple[str, str] = ("Batch count", "Images per prompt")) -> int:
    """`count` as a whole number within the limits (raises `InvalidRequest`); `names` are the two settings' names
    in the caller's words (the A1111 API's: "n_iter", "batch_size"). The batch size is checked by its own check;
    a size that is not a whole number is left to it."""
    count = integer(count, names[0], 1, limits.max_images)
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and count * batch_size > limits.max_images:
        raise InvalidRequest(f"{names[0]} x {names[1]} is {count * batch_size}; this server makes at most "
                             f"{limits.max_images} images per request.")
    return count


def count_of(request: Any) -> int:
    """The batch count of a request (1 for one without sampling settings, such as a hires pass)."""
    count = getattr(getattr(request, "sampling", None), "batch_count", 1)
    return count if isinstance(count, int) and count > 1 else 1


def batch_requests(request: R) -> list[R]:
    """The batches of a validated `request` (seeds resolved): one request per batch, batch count 1, each at its
    seed (the module's rule). A variation seed left to draw (None or -1) is drawn per batch by its validation."""
    sampling = request.sampling  # type: ignore[attr-defined]
    extras = getattr(request, "seed_extras", None)
    vary = extras is not None and extras.variation_strength > 0
    batches = []
    for k in range(count_of(request)):
        step = k * sampling.batch_size
        one = replace(request, sampling=replace(sampling, batch_count=1,  # type: ignore[type-var]
                                                seed=sampling.seed if vary else sampling.seed + step))
        if vary and extras.variation_seed not in (None, -1):
            one = replace(one, seed_extras=replace(extras, variation_seed=extras.variation_seed + step))
        batches.append(one)
    return batches


def in_batch(on_progress: ProgressFn | None, index: int, count: int) -> ProgressFn | None:
    """`on_progress` for batch `index` (from 0) of `count` equal batches: steps counted over all of them."""
    if on_progress is None:
        return None

    def report(done: int, steps: int, preview: Any) -> None:
        on_progress(index * steps + done, count * steps, preview)

    return report


def where(done: int, total: int, count: int) -> tuple[int, int, int]:
    """(batch from 1, its step, its steps) of step `done` of `total` over `count` equal batches."""
    steps = max(1, total // max(1, count))
    batch = min(count, max(1, (done - 1) // steps + 1))
    return batch, done - (batch - 1) * steps, steps


def batch_status(done: int, total: int, count: int) -> str:
    """The progress line of a run of `count` batches: "Batch 2/4, step 3/20" (one batch: "Step 3/20")."""
    if count <= 1:
        return f"Step {done}/{total}"
    batch, step, steps = where(done, total, count)
    return f"Batch {batch}/{count}, step {step}/{steps}"


def stopped_in_batch(done: int, total: int, count: int, kept: bool = True) -> str:
    """What Stop says of a run of `count` batches stopped after step `done` of `total`; `kept`: whether the run
    keeps the batches finished before it (not where its result would come back through the closed stream: a
    ZeroGPU call's, `sd2_app.api.gpu_call`)."""
    batch, step, steps = where(done, total, count)
    finished = batch if step >= steps else batch - 1
    plural = "" if finished == 1 else "es"
    said = f" {finished} finished batch{plural} kept (History)." if finished and kept else ""
    return f"Stopped in batch {batch}/{count} after {step}/{steps} steps.{said}"


class StopOrSkip:
    """A batch's stop check: the run's `should_stop()` (None: never) or its Skip. It compares and hashes equal to
    `should_stop`, the callable a run's caller knows its job by while it waits at the GPU gate
    (`Service.jobs_ahead`, `GpuGate.ahead_of`, the batcher's `ahead_of`)."""

    def __init__(self, should_stop: Callable[[], bool] | None, skip: threading.Event) -> None:
        self.should_stop = should_stop
        self.skip = skip

    def __call__(self) -> bool:
        return (self.should_stop is not None and self.should_stop()) or self.skip.is_set()

    def __eq__(self, other: object) -> bool:
        return other is self or other == self.should_stop

    def __hash__(self) -> int:
        return hash(self.should_stop)


def run_request(run_one: Callable[[Any, ProgressFn | None, Callable[[], bool] | None], Result], request: Any,
                on_progress: ProgressFn | None, should_stop: Callable[[], bool] | None,
                keep_stopped: Callable[[], bool] | None = None, skip: threading.Event | None = None) -> Result:
    """The validated `request` with its batches (`run_batches`); one batch runs as it is, Skip ending it as Stop
    would."""
    if count_of(request) > 1:
        return run_batches(run_one, request, on_progress, should_stop, keep_stopped, skip)
    return run_one(request, on_progress, should_stop if skip is None else StopOrSkip(should_stop, skip))


def run_batches(run_one: Callable[[Any, ProgressFn | None, Callable[[], bool]], Result], request: Any,
                on_progress: ProgressFn | None, should_stop: Callable[[], bool] | None,
                keep_stopped: Callable[[], bool] | None = None, skip: threading.Event | None = None) -> Result:
    """Every batch of the validated `request`, one after another (`run_one(batch, on_progress, should_stop)` runs
    one), as one `Result`: their images in order with each one's seed, the first batch's seed; after Stop, the
    batches finished before it and, where `keep_stopped()` says so, the stopped batch's image so far
    (`progress.kept_so_far`; `stopped`, with a warning that says so), or `Cancelled` when nothing was kept. `skip`
    set ends the running batch the same way and the run goes on (the module's rule); it is cleared for the next."""
    batches = batch_requests(request)
    results: list[Result] = []
    stopped = (lambda: False) if should_stop is None else should_stop
    skipped = (lambda: False) if skip is None else skip.is_set
    batch_stop = should_stop if skip is None else StopOrSkip(should_stop, skip)
    stopped_in = None  # the batch (from 1) Stop ended the run in
    for index, batch in enumerate(batches):
        try:
            if stopped():
                raise Cancelled
            report = in_batch(on_progress, index, len(batches))
            done = kept_so_far(lambda: run_one(batch, report, batch_stop), keep_stopped)  # noqa: B023
        except Cancelled:
            if skipped() and not stopped():  # skipped before its first step: no image
                skip.clear()  # type: ignore[union-attr]
                continue
            if not results:
                raise
            stopped_in = index + 1
            break
        if done.stopped_at is not None and stopped():  # Stop ended it: its image so far, the last one
            results.append(done)
            stopped_in = index + 1
            break
        results.append(_said_skipped(done, index, len(batches)) if skipped() else done)
        if skip is not None:
            skip.clear()
    if not results:  # every batch skipped before its first step
        raise Cancelled
    return _joined(request, results, len(batches), stopped_in)


def _said_skipped(result: Result, index: int, count: int) -> Result:
    """A skipped batch's image so far, its warning saying Skip (not Stop) ended it."""
    if result.stopped_at is None:  # it had finished when Skip came
        return result
    step, steps = result.stopped_at
    said = f"Skipped batch {index + 1}/{count} at step {step}/{steps}; kept its image so far."
    return replace(result, warnings=said_skipped(result.warnings, result.stopped_at, said))


def _joined(request: Any, results: list[Result], count: int, stopped_in: int | None) -> Result:
    """The batches' results as one; `stopped_in`: the batch (from 1) Stop ended the run in, None if it ran out."""
    first = results[0]
    warnings = [w for i, result in enumerate(results) for w in result.warnings
                if w not in [v for earlier in results[:i] for v in earlier.warnings]]
    stopped = stopped_in is not None
    so_far = stopped and results[-1].stopped_at is not None  # the last is the stopped batch's image so far
    if stopped:
        before = stopped_in - 1
        warnings.append(f"Stopped in batch {stopped_in}/{count}: these are the images of the {before} "
                        f"batch{'' if before == 1 else 'es'} before it{' and its image so far' if so_far else ''}.")
    timings: dict[str, float] = {}
    for result in results:
        for phase, seconds in result.timings.items():
            timings[phase] = timings.get(phase, 0.0) + seconds
    return replace(first, request=request, images=[image for result in results for image in result.images],
                   warnings=warnings, timings=timings, stopped=stopped,
                   stopped_at=results[-1].stopped_at if stopped else None,
                   seeds=[result.image_seed(index) for result in results for index in range(len(result.images))])
