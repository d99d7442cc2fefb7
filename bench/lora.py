"""What merging a LoRA for one job costs (pipelines/lora.py): the merge before the job, the put-back after it.

Full-size SD2 UNet with random weights (no checkpoint; the text encoder left out: its 23 layers are a small
share), with accel's fused twins as the default path has them, on CUDA in fp16 when there is one (else the CPU in
fp32). Two random LoRAs in A1111's layout at rank 32: the transformer layers only (sd-scripts' default LoRA) and a
LoCon (the convolutions too). For each: the layers changed, the bytes of the weights' copies, the median merge and
put-back milliseconds (CUDA-synchronised), and a check that the put-back weights equal the originals bit for bit.
`python -m bench.lora [--reps 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from torch import nn

from sd2_app.accel.fused import fuse_modules
from sd2_app.nn.config import UNetConfig
from sd2_app.nn.unet import UNet
from sd2_app.pipelines.lora import LoraWeights, lora_targets, lora_weights, merged, plan_changes
from sd2_app.testing.configs import unet_config
from sd2_app.testing.tiny_lora import random_lora


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(components: SimpleNamespace, weights: LoraWeights, reps: int) -> dict[str, float]:
    """Median merge and put-back milliseconds of `weights` on `components`, the layers and the copies' bytes."""
    targets = lora_targets(components)
    plan = plan_changes(targets, [(weights, 1.0, 1.0)])
    before = {layer: targets[layer].detach().clone() for layer in plan}
    device = next(iter(before.values())).device
    merge, put_back = [], []
    for _ in range(reps):
        _synchronise(device)
        started = time.perf_counter()
        with merged(components, [(weights, 1.0, 1.0)]):
            _synchronise(device)
            merge.append(time.perf_counter() - started)
            started = time.perf_counter()
        _synchronise(device)
        put_back.append(time.perf_counter() - started)
    assert all(torch.equal(targets[layer], weight) for layer, weight in before.items()), "not put back exactly"
    return {"layers": len(plan), "copies_mb": sum(w.numel() * w.element_size() for w in before.values()) / 2**20,
            "file_mb": weights.nbytes / 2**20, "merge_ms": 1e3 * statistics.median(merge),
            "put_back_ms": 1e3 * statistics.median(put_back)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    with torch.no_grad():
        unet = UNet(UNetConfig.from_dict(unet_config("sd2"))).eval().to(device, dtype)
    fuse_modules(unet)
    components = SimpleNamespace(unet=unet, text_encoder=nn.Module())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"SD2 UNet, {name}, {dtype}, rank {args.rank}, median of {args.reps}")
    for label, conv in (("LoRA (transformer layers)", False), ("LoCon (and convolutions)", True)):
        tensors = random_lora(components, rank=args.rank, conv=conv, text_encoder=False)  # type: ignore[arg-type]
        row = measure(components, lora_weights("bench", tensors), args.reps)
        print(f"{label}: {row['layers']} layers, file {row['file_mb']:.0f} MB, copies {row['copies_mb']:.0f} MB, "
              f"merge {row['merge_ms']:.1f} ms, put back {row['put_back_ms']:.1f} ms")


if __name__ == "__main__":
    main()
