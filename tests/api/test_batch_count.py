"""Batch count (A1111's n_iter) in the Service: its limits and cost, each batch's seed, progress over all batches,
Stop between and within them and Skip (sd2_app/api/batch_count.py). The pipelines are the doubles of
tests/ui_doubles.py, which keep no image so far (the tiny real pipelines do: tests/ui/test_browser_stop.py).
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from PIL import Image

from sd2_app.api.batch_count import batch_requests, batch_status, stopped_in_batch
from sd2_app.api.requests import HiresFix, Sampling, SeedExtras, Txt2ImgRequest, UpscaleRequest
from sd2_app.api.checks import Limits
from sd2_app.api.validation import validate
from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.pipelines.metadata import read_png_parameters
from tests.ui_doubles import fake_catalog, fake_service

CATALOG = fake_catalog()


def _txt(**sampling: object) -> Txt2ImgRequest:
    settings: dict[str, object] = {"seed": 100, "steps": 3, **sampling}
    return Txt2ImgRequest("a cat", width=64, height=64, sampling=Sampling(**settings))  # type: ignore[arg-type]


def test_batches_follow_on_from_the_seed_and_a_variation_seed_advances_instead() -> None:
    """Batch k runs at seed + k x images per prompt (A1111's numbering, the A1111 API's n_iter before); with a
    variation strength A1111 keeps the seed and advances the variation seed (its all_subseeds)."""
    batches = batch_requests(_txt(batch_size=2, batch_count=3))
    assert [(b.sampling.seed, b.sampling.batch_size, b.sampling.batch_count) for b in batches] == [
        (100, 2, 1), (102, 2, 1), (104, 2, 1)]
    varied = replace(_txt(batch_count=3), seed_extras=SeedExtras(variation_seed=7, variation_strength=0.3))
    assert [(b.sampling.seed, b.seed_extras.variation_seed) for b in batch_requests(varied)] == [
        (100, 7), (100, 8), (100, 9)]
    assert batch_requests(_txt()) == [_txt()]  # one batch: the request as it is


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"batch_count": 0}, "Batch count must be between 1 and 32, got 0."),
        ({"batch_count": 33}, "Batch count must be between 1 and 32, got 33."),
        ({"batch_count": 2.5}, "Batch count must be a whole number, got 2.5."),
        ({"batch_count": "4"}, "Batch count must be a whole number, got '4'."),
        ({"batch_count": 5, "batch_size": 8},
         "Batch count x Images per prompt is 40; this server makes at most 32 images per request."),
    ],
)
def test_batch_count_out_of_bounds_is_refused_in_words(sampling: dict, message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate(_txt(**sampling), CATALOG, Limits())
    assert str(error.value) == message


def test_each_batch_counts_in_the_jobs_cost() -> None:
    """One 64x64 image at 10 steps with guidance costs 10 x 2 x 8 x 8 = 1,280: four batches of it are 5,120, over
    a cap of 5,000 that one batch of four images (the same work) is over too."""
    limits = Limits(max_job_cost=5000)
    validate(_txt(steps=10, batch_count=3), CATALOG, limits)  # 3,840
    with pytest.raises(InvalidRequest) as error:
        validate(_txt(steps=10, batch_count=4), CATALOG, limits)
    assert str(error.value) == (
        "This job is too large for this server: it costs 5,120 UNet evaluations x latent pixels and the limit is "
        "5,000. Lower the steps, the batch count, the images per prompt, the width and height or the hires fix (at "
        "most 9 steps fit with the other settings unchanged).")
    with pytest.raises(InvalidRequest, match="it costs 5,120 UNet"):
        validate(_txt(steps=10, batch_size=4), CATALOG, limits)
    upscale = UpscaleRequest("x", image=Image.new("RGB", (64, 64)),
                             sampling=Sampling(steps=2, batch_count=2))
    with pytest.raises(InvalidRequest, match="Lower the steps, the batch count, the images per prompt or the input"):
        validate(upscale, CATALOG, Limits(max_job_cost=10))


def test_each_part_of_a_composable_prompt_counts_in_the_jobs_cost() -> None:
    """Each part joined by AND is one more UNet row per image and step: 10 steps x (1 + 3 parts) x 8 x 8 = 2,560;
    a part's weight costs nothing more."""
    limits = Limits(max_job_cost=2560)
    validate(replace(_txt(steps=10), prompt="a AND b AND c"), CATALOG, limits)
    validate(replace(_txt(steps=20), prompt="a:1.5"), CATALOG, limits)  # 20 x 2 x 64
    with pytest.raises(InvalidRequest, match="it costs 3,200 UNet"):
        validate(replace(_txt(steps=10), prompt="a AND b AND c AND d"), CATALOG, limits)


def test_a_hires_prompt_counts_its_own_parts_and_its_lora_tags_are_the_prompts() -> None:
    """The second pass of 10 steps at strength 1 costs 10 x 2 x 8 x 8 = 1,280 like the first; its own prompt with
    two parts makes it 1,920. A hires prompt naming other LoRAs is said to run with the prompt's."""
    hires = HiresFix(scale=1.0, denoising_strength=1.0)
    limits = Limits(max_job_cost=2560)
    validate(replace(_txt(steps=10), hires=hires), CATALOG, limits)
    with pytest.raises(InvalidRequest, match="it costs 3,200 UNet"):
        validate(replace(_txt(steps=10), hires=replace(hires, prompt="a cat AND a hat")), CATALOG, limits)
    _, warnings = validate(replace(_txt(), hires=replace(hires, prompt="a cat <lora:x:1>")), CATALOG, Limits())
    assert warnings == ["The hires prompt's LoRA tags differ from the prompt's; both passes run with the prompt's "
                        "LoRAs."]
    with pytest.raises(InvalidRequest, match="^Hires negative prompt must be text, got int.$"):
        validate(replace(_txt(), hires=replace(hires, negative_prompt=5)), CATALOG, Limits())


def test_batches_run_one_after_another_with_their_own_seeds_and_progress_over_all(tmp_path) -> None:
    service = fake_service(tmp_path)
    events: list[tuple[int, int]] = []
    result = service.run(_txt(batch_size=2, batch_count=3), lambda done, total, preview: events.append((done, total)),
                         owner="visitor")
    assert len(result.images) == 6 and result.seed == 100 and not result.stopped
    seeds = [text.split("Seed: ")[1].split(",")[0] for text in (image.info["parameters"] for image in result.images)]
    assert seeds == ["100", "101", "102", "103", "104", "105"]  # the double labels rows seed + row
    assert events == [(done, 9) for done in range(1, 10)]  # 3 steps x 3 batches
    assert result.request.sampling.batch_count == 3
    assert [read_png_parameters(path) for path in result.saved] == [i.info["parameters"] for i in result.images]
    assert [len(entry.images) for entry in service.history("visitor")] == [6]  # one History entry


def test_stop_between_or_within_batches_keeps_the_batches_finished_before_it(tmp_path) -> None:
    """Stop in batch 2's first step: batch 1 is the result (kept and saved), said in a warning; Stop in batch 1:
    Cancelled, nothing kept."""
    service = fake_service(tmp_path)
    seen: list[int] = []
    result = service.run(_txt(batch_count=3, seed=5), lambda done, total, preview: seen.append(done),
                         should_stop=lambda: len(seen) >= 4)
    assert result.stopped and len(result.images) == 1 and len(result.saved) == 1
    assert result.warnings == ["Stopped in batch 2/3: these are the images of the 1 batch before it."]
    assert seen == [1, 2, 3, 4]  # the run ended at batch 2's next step
    stopped_between = service.run(_txt(batch_count=3, seed=5), lambda done, total, preview: seen.append(done),
                                  should_stop=lambda: len(seen) >= 10)  # after batch 2's last step
    assert len(stopped_between.images) == 2 and len(seen) == 10
    with pytest.raises(Cancelled):
        service.run(_txt(batch_count=3), should_stop=lambda: True)


def test_skip_ends_the_running_batch_and_the_run_goes_on_with_the_next(tmp_path) -> None:
    """Skip in batch 2 (of 3 steps each) ends it at its next step and batch 3 runs whole; the result is not
    stopped, the skip is cleared for the next batch. Skip with one batch ends the run: with nothing kept, Cancelled.
    A Stop after a skip still stops."""
    service = fake_service(tmp_path)
    skip = threading.Event()
    seen: list[int] = []

    def progress(done: int, total: int, preview: object) -> None:
        seen.append(done)
        if done == 4:  # batch 2's first step
            skip.set()

    result = service.run(_txt(batch_count=3, seed=5), progress, skip=skip, owner="visitor")
    assert not result.stopped and result.stopped_at is None and not skip.is_set()
    assert result.image_seeds == [5, 7]  # batch 2 (seed 6) was skipped and the doubles keep no image so far
    assert seen[:4] == [1, 2, 3, 4] and seen[-3:] == [7, 8, 9] and 5 not in seen and 6 not in seen
    assert [len(entry.images) for entry in service.history("visitor")] == [2]
    skip.set()
    with pytest.raises(Cancelled):
        service.run(_txt(seed=5), skip=skip)
    skip.clear()
    after_skip: list[int] = []

    def skip_then_stop(done: int, total: int, preview: object) -> None:
        after_skip.append(done)
        if done == 2:
            skip.set()

    stopped = service.run(_txt(batch_count=3, seed=5), skip_then_stop, skip=skip,
                          should_stop=lambda: len(after_skip) >= 5)
    assert stopped.stopped and stopped.image_seeds == [6]  # batch 1 skipped, batch 2 finished, Stop in batch 3
    assert stopped.warnings == ["Stopped in batch 3/3: these are the images of the 2 batches before it."]


def test_the_progress_line_and_stop_say_the_batch() -> None:
    assert batch_status(23, 80, 4) == "Batch 2/4, step 3/20"
    assert batch_status(20, 80, 4) == "Batch 1/4, step 20/20"
    assert batch_status(3, 20, 1) == "Step 3/20"
    assert stopped_in_batch(3, 60, 3) == "Stopped in batch 1/3 after 3/20 steps."
    assert stopped_in_batch(43, 60, 3) == "Stopped in batch 3/3 after 3/20 steps. 2 finished batches kept (History)."
    assert stopped_in_batch(20, 60, 3) == "Stopped in batch 1/3 after 20/20 steps. 1 finished batch kept (History)."
    # a ZeroGPU call's result comes back through the stream Stop closes: nothing is kept, so nothing is said
    assert stopped_in_batch(43, 60, 3, kept=False) == "Stopped in batch 3/3 after 3/20 steps."

