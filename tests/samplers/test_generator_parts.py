"""GeneratorParts: a batch of requests draws each request's noise from its own generator, as its solo run does."""

from __future__ import annotations

import pytest
import torch

from sd2_app.pipelines.sampling import draw_noise, make_generator
from sd2_app.samplers import SAMPLERS, make_schedule
from sd2_app.samplers.base import GeneratorParts, randn_like
from sd2_app.samplers.schedules import SchedulerConfig

CPU = torch.device("cpu")


def _parts(seeds_rows: list[tuple[int, int]]) -> GeneratorParts:
    return GeneratorParts(tuple((make_generator(CPU, seed), rows) for seed, rows in seeds_rows))


def test_each_part_draws_what_its_solo_generator_draws() -> None:
    layout = [(11, 1), (22, 2), (33, 1)]
    batch = draw_noise((4, 4, 8, 8), _parts(layout), CPU, torch.float32)
    solo = torch.cat([draw_noise((rows, 4, 8, 8), make_generator(CPU, seed), CPU, torch.float32)
                      for seed, rows in layout])
    assert batch.shape == (4, 4, 8, 8)
    assert torch.equal(batch, solo)
    assert not torch.equal(batch[0], batch[1])  # different seeds, different noise


def test_successive_draws_follow_each_generator_stream() -> None:
    parts = _parts([(5, 2), (6, 1)])
    x = torch.zeros(3, 4, 2, 2)
    first, second = randn_like(x, parts), randn_like(x, parts)
    solo5, solo6 = make_generator(CPU, 5), make_generator(CPU, 6)
    expected_first = torch.cat([randn_like(x[:2], solo5), randn_like(x[:1], solo6)])
    expected_second = torch.cat([randn_like(x[:2], solo5), randn_like(x[:1], solo6)])
    assert torch.equal(first, expected_first) and torch.equal(second, expected_second)


def test_rows_must_match_the_batch() -> None:
    with pytest.raises(AssertionError):
        draw_noise((3, 4, 8, 8), _parts([(1, 1), (2, 1)]), CPU, torch.float32)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DPM++ 3M SDE", "DPM2 a", "DDPM"])
def test_stochastic_sampler_batch_equals_solo_runs(sampler: str) -> None:
    """A per-image denoiser (no mixing across the batch): the batched run equals the solo runs exactly."""
    config = SchedulerConfig()
    schedule = make_schedule(config, sampler, 6)

    def denoise(x: torch.Tensor, sigma: float, t: float) -> torch.Tensor:
        return torch.tanh(x) * 0.5

    def run(x: torch.Tensor, generator: object) -> torch.Tensor:
        return SAMPLERS[sampler].fn(denoise, x, schedule, generator=generator)

    layout = [(101, 1), (202, 2)]
    starts = [draw_noise((rows, 4, 8, 8), make_generator(CPU, seed), CPU, torch.float32) for seed, rows in layout]
    solo = []
    for (seed, rows), start in zip(layout, starts):
        generator = make_generator(CPU, seed)
        draw_noise((rows, 4, 8, 8), generator, CPU, torch.float32)  # the start draw, as a solo run makes it
        solo.append(run(start, generator))
    parts = _parts(layout)
    draw_noise((3, 4, 8, 8), parts, CPU, torch.float32)
    batched = run(torch.cat(starts), parts)
    assert SAMPLERS[sampler].is_stochastic
    assert torch.equal(batched, torch.cat(solo))


def test_one_part_draws_without_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch group of one request (the others refused or split off): its draws are its solo draws, with no
    concatenation per step; several parts are concatenated once per draw."""
    cats: list[int] = []
    original = torch.cat
    monkeypatch.setattr(torch, "cat", lambda tensors, *args, **kwargs: cats.append(len(tensors)) or original(
        tensors, *args, **kwargs))
    one = draw_noise((2, 4, 8, 8), _parts([(7, 2)]), CPU, torch.float32)
    assert cats == []
    assert torch.equal(one, draw_noise((2, 4, 8, 8), make_generator(CPU, 7), CPU, torch.float32))
    draw_noise((3, 4, 8, 8), _parts([(7, 2), (8, 1)]), CPU, torch.float32)
    assert cats == [2]
