"""LoRA files for the app tests: one for the tiny SD 2 base (which the tiny SD 2.1 base shares), one made for
the tiny x4 upscaler (it fits no other checkpoint), an SD 1.x file and a pickle (both refused at start-up)."""

from __future__ import annotations

from pathlib import Path

import torch

from sd2_app.testing.tiny_lora import random_lora, write_lora

SD1_CROSS_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def write_test_loras(folder: Path) -> Path:
    """The files above in `folder`: tiny-detail, upscaler-detail, sd15-detail.safetensors and old-detail.pt."""
    from tests.pipeline_fixtures import load_components

    write_lora(folder / "tiny-detail.safetensors", random_lora(load_components("sd2-base"), seed=11, scale=0.5))
    write_lora(folder / "upscaler-detail.safetensors", random_lora(load_components("x4-upscaler"), seed=12))
    write_lora(folder / "sd15-detail.safetensors", {f"{SD1_CROSS_KEY}.lora_down.weight": torch.zeros(4, 768),
                                                    f"{SD1_CROSS_KEY}.lora_up.weight": torch.zeros(320, 4)})
    (folder / "old-detail.pt").write_bytes(b"pickle")
    return folder
