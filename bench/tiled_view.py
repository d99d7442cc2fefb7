"""What a seamless-tiling job's own view of the UNet and the VAE costs to make (pipelines/seamless.py).

Full-size SD2 architectures with random weights on the CPU (no checkpoint, no GPU): the plain modules and the
fused twins (accel/fused/, which swap on the CPU too), the median of `--reps` views, and a check that every
parameter and buffer of the view is the live module's own tensor (no weight memory). Run from the repository
root: `python -m bench.tiled_view`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from sd2_app.accel.fused import fuse_modules
from sd2_app.nn.config import UNetConfig, VAEConfig
from sd2_app.nn.unet import UNet
from sd2_app.nn.vae import AutoencoderKL
from sd2_app.pipelines.seamless import tiled_view
from sd2_app.testing.configs import unet_config, vae_config


def _shares_every_tensor(live: nn.Module, view: nn.Module) -> bool:
    pairs = zip([*live.parameters(), *live.buffers()], [*view.parameters(), *view.buffers()], strict=True)
    return all(a is b for a, b in pairs)


def median_ms(modules: tuple[nn.Module, ...], reps: int) -> float:
    """Median milliseconds to make a view of each of `modules`, after checking the views share every tensor."""
    assert all(_shares_every_tensor(module, tiled_view(module)) for module in modules)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for module in modules:
            tiled_view(module)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with torch.no_grad():
        unet = UNet(UNetConfig.from_dict(unet_config("sd2"))).eval()
        vae = AutoencoderKL(VAEConfig.from_dict(vae_config("sd2"))).eval()
    modules = sum(1 for _ in unet.modules()) + sum(1 for _ in vae.modules())
    print(f"SD2 UNet + VAE, {modules} modules: view {median_ms((unet, vae), args.reps):.1f} ms (median of {args.reps})")
    fuse_modules(unet)
    fuse_modules(vae)
    print(f"with the fused twins: view {median_ms((unet, vae), args.reps):.1f} ms")


if __name__ == "__main__":
    main()
