"""Random LoRA files in A1111's (kohya-ss) layout for a loaded model: the LoRA tests' and the benchmark's.

The layers are the ones LoRA trainers target (sd-scripts networks/lora.py, `LoRANetwork`; with its conv
option, "LoCon"): the UNet's transformer projections and feed-forward layers, the resnets' convolutions and
time projections, the down- and upsamplers' convolutions, and the text encoder's attention and MLP layers.
Conv layers get a (rank, in, kh, kw) down and a (out, rank, 1, 1) up, as sd-scripts makes them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from sd2_app.checkpoints.components import Components
from sd2_app.pipelines.lora import TE_PREFIX, lora_targets

# module path fragments of the layers a LoRA (a LoCon with `conv`) trains
LINEAR_LAYERS = ("attn1", "attn2", "ff.net", "proj_in", "proj_out", "self_attn", "mlp")
CONV_LAYERS = ("resnets", "time_emb_proj", "downsamplers", "upsamplers")


def _trained(layer: str, *, unet: bool, text_encoder: bool, conv: bool) -> bool:
    if layer.startswith(TE_PREFIX):
        return text_encoder
    fragments = LINEAR_LAYERS + (CONV_LAYERS if conv else ())
    return unet and any(f.replace(".", "_") in layer for f in fragments)


def random_lora(components: Components, *, rank: int = 4, alpha: float | None = 2.0, scale: float = 0.3,
                seed: int = 0, unet: bool = True, text_encoder: bool = True, conv: bool = True,
                dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A random LoRA's tensors for `components`' models (no `.alpha` when `alpha` is None: alpha = rank)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer, weight in lora_targets(components).items():
        if not _trained(layer, unet=unet, text_encoder=text_encoder, conv=conv):
            continue
        out_features, in_features, *kernel = weight.shape
        down = torch.randn(rank, in_features, *kernel, generator=generator) * scale / (in_features ** 0.5)
        up = torch.randn(out_features, rank, *([1] * len(kernel)), generator=generator) * scale
        tensors[f"{layer}.lora_down.weight"] = down.to(dtype)
        tensors[f"{layer}.lora_up.weight"] = up.to(dtype)
        if alpha is not None:
            tensors[f"{layer}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return tensors


def write_lora(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save `tensors` as a LoRA safetensors file at `path` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def as_loha(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LyCORIS LoHa with the same changes as the LoRA `tensors`: (up @ down) ⊙ (ones @ ones), each layer's first
    pair the LoRA's (its rank and alpha too), the second a rank-1 product of ones."""
    loha = {}
    for key, value in tensors.items():
        if key.endswith(".lora_down.weight"):
            layer, down = key[:-len(".lora_down.weight")], value.flatten(1)
            up = tensors[layer + ".lora_up.weight"].flatten(1)
            loha.update({f"{layer}.hada_w1_a": up, f"{layer}.hada_w1_b": down,
                         f"{layer}.hada_w2_a": torch.ones(up.shape[0], 1, dtype=up.dtype),
                         f"{layer}.hada_w2_b": torch.ones(1, down.shape[1], dtype=down.dtype)})
        elif key.endswith(".alpha"):
            loha[key] = value
    return loha


def as_lokr(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LyCORIS LoKr with the same changes as the LoRA `tensors`: [[1]] ⊗ (up @ down), the second factor as its
    two halves (so the rank, and the scale alpha / rank, are the LoRA's)."""
    lokr = {}
    for key, value in tensors.items():
        if key.endswith(".lora_down.weight"):
            layer = key[:-len(".lora_down.weight")]
            lokr.update({f"{layer}.lokr_w1": torch.ones(1, 1, dtype=value.dtype),
                         f"{layer}.lokr_w2_a": tensors[layer + ".lora_up.weight"].flatten(1),
                         f"{layer}.lokr_w2_b": value.flatten(1)})
        elif key.endswith(".alpha"):
            lokr[key] = value
    return lokr
