"""What every sampler shares: the denoiser and callback types, the ODE derivative, ancestral splits, noise draws."""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Callable, Union

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, float, float], Tensor]  # denoise(x, sigma, t) -> x0, all (B, C, H, W) fp32
StepFn = Callable[[int, Tensor, Tensor], None]  # on_step(i, x after step i, x0 predicted at step i)


def to_d(x: Tensor, sigma: float, x0: Tensor) -> Tensor:
    """dx/dsigma of the probability-flow ODE, (x - x0) / sigma (Karras et al. 2022, eq. 4); equals eps."""
    return (x - x0) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): go deterministically to sigma_down, then add sigma_up noise to land on sigma_to."""
    if sigma_to == 0.0 or eta == 0.0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - sigma_up**2), sigma_up


@dataclass(frozen=True)
class GeneratorParts:
    """The generators of several requests sampled as one batch: (generator, rows) per request, in batch order.

    A draw of shape (B, ...) takes each request's `rows` images from that request's own generator, exactly the
    (rows, ...) draw its solo run makes, and concatenates them; so every image gets the noise its seed gives
    alone, start noise and ancestral noise alike (docs/DESIGN.md, "Batching across users").
    """

    parts: tuple[tuple[torch.Generator, int], ...]

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """Unit noise of `shape` (B, ...), each request's rows from its own generator, on the generators' device."""
        assert shape[0] == sum(rows for _, rows in self.parts), f"{shape} does not match {self.parts}"
        draws = [torch.randn((rows, *shape[1:]), generator=generator, device=generator.device, dtype=dtype)
                 for generator, rows in self.parts]
        return draws[0] if len(draws) == 1 else torch.cat(draws)  # one part: its draw as it is, no copy

    @staticmethod
    def joined(sources: Sequence[tuple[NoiseSource, int]]) -> GeneratorParts:
        """The parts of several (source, rows) in batch order, a source that has parts giving each of them."""
        return GeneratorParts(tuple(part for source, rows in sources
                                    for part in (source.parts if isinstance(source, GeneratorParts)
                                                 else ((source, rows),))))


NoiseSource = Union[torch.Generator, GeneratorParts]  # one request's generator, or several requests' in a batch


def device_of(generator: NoiseSource) -> torch.device:
    """The device `generator` draws on (a batch's generators share the components' device)."""
    return generator.parts[0][0].device if isinstance(generator, GeneratorParts) else generator.device


def randn_from(shape: tuple[int, ...], generator: NoiseSource, dtype: torch.dtype) -> Tensor:
    """Unit noise of `shape` from `generator` (or each part from its own), on the generator's device."""
    if isinstance(generator, GeneratorParts):
        return generator.randn(shape, dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)


def randn_like(x: Tensor, generator: NoiseSource | None) -> Tensor:
    """Unit noise shaped like x, drawn on the generator's device and moved (diffusers' randn_tensor), so seeds match."""
    if generator is None:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype)
    return randn_from(tuple(x.shape), generator, x.dtype).to(x.device)
