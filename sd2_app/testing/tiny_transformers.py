"""Tiny random-weight transformers parts of a Hub repo: CLIP tokenizer, CLIP text encoder, DPT depth estimator.

They are written exactly as the SD2 repos hold them (same file names, the fp16 variant beside the full-precision
file, the SD2 tokenizer quirk of pad "!" = id 0 in special_tokens_map.json), so the loaders run the real path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD = "!"  # SD2 pads with "!" (id 0), as OpenCLIP pads with zeros
# A handful of merges so that common words become single tokens (the real file has 48,894).
TINY_MERGES = ("t h", "th e</w>", "a n", "an d</w>", "c a", "ca t</w>", "d o", "do g</w>", "o f</w>", "i n")
TEXT_HIDDEN = 32  # the UNet's cross_attention_dim follows it
DPT_IMAGE_SIZE = 64  # the real processor uses 384; small keeps CPU tests fast


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP byte-level BPE alphabet: printable bytes map to themselves (in order, "!" first), the rest above 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def tiny_vocab() -> list[str]:
    """Token strings in id order: bytes, bytes at word end, merges, then BOS and EOS (as in CLIP's vocab.json)."""
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in TINY_MERGES]
    return [*tokens, BOS, EOS]


def _added_token(content: str) -> dict[str, object]:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_tokenizer(folder: Path) -> None:
    """tokenizer/: vocab.json, merges.txt, special_tokens_map.json (pad "!"), tokenizer_config.json (pad EOS, as on the Hub)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TINY_MERGES) + "\n")
    special = {"bos_token": _added_token(BOS), "eos_token": _added_token(EOS), "pad_token": PAD, "unk_token": _added_token(EOS)}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    typed = {key: {"__type": "AddedToken", **_added_token(value)} for key, value in (("bos_token", BOS), ("eos_token", EOS), ("unk_token", EOS))}
    config = {
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": EOS,  # stale on the Hub too; special_tokens_map.json wins
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        **typed,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def fill_deterministic(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The module's state dict with every floating tensor redrawn from a seeded generator (module untouched).

    Scales keep activations O(1) through a deep net: weights ~ N(0, 1/fan_in), norm gains near 1, small biases.
    One draw for the whole model keeps this fast (hundreds of tensors).
    """
    state = module.state_dict()
    names = sorted(k for k, v in state.items() if v.is_floating_point())
    total = sum(state[k].numel() for k in names)
    noise = torch.randn(total, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    filled = dict(state)
    offset = 0
    for name in names:
        shape = state[name].shape
        part = noise[offset : offset + state[name].numel()].view(shape)
        offset += state[name].numel()
        if len(shape) >= 2:
            filled[name] = part / math.sqrt(state[name][0].numel())
        elif name.endswith("weight"):
            filled[name] = 1.0 + 0.1 * part
        else:
            filled[name] = 0.1 * part
    return filled


def save_weights(state: dict[str, torch.Tensor], folder: Path, stem: str) -> None:
    """`<stem>.safetensors` (fp32) and `<stem>.fp16.safetensors`, the layout of the Hub repos."""
    folder.mkdir(parents=True, exist_ok=True)
    full = {k: v.detach().contiguous() for k, v in state.items()}
    half = {k: v.half() if v.is_floating_point() else v for k, v in full.items()}
    save_file(full, str(folder / f"{stem}.safetensors"), metadata={"format": "pt"})
    save_file(half, str(folder / f"{stem}.fp16.safetensors"), metadata={"format": "pt"})


def _build_quietly(build: type[nn.Module], config: object) -> nn.Module:
    """Construct without disturbing the caller's global RNG (transformers initialises from it)."""
    with torch.random.fork_rng(devices=[]):
        return build(config)


def write_text_encoder(folder: Path, seed: int) -> None:
    """text_encoder/: a 2-layer CLIPTextModel with hidden 32 and the tiny vocab; gelu and 77 positions as in SD2."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tiny_vocab()),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=0,  # 0/2/1: the artefacts the SD2 config carries, not the real token ids
        eos_token_id=2,
        pad_token_id=1,
    )
    config.architectures = ["CLIPTextModel"]
    model = _build_quietly(CLIPTextModel, config)
    config.save_pretrained(folder)
    state = fill_deterministic(model, seed)
    # The Hub files were saved by transformers 4.25: keys under "text_model." and the position_ids buffer
    # stored too. transformers 5 holds the tower without that prefix and maps the old names on load.
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # (1, 77) int64
    save_weights(state, folder, "model")


def write_depth_estimator(depth_folder: Path, processor_folder: Path, seed: int) -> None:
    """depth_estimator/ (a small plain-ViT DPT at 64 px) and feature_extractor/preprocessor_config.json."""
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=DPT_IMAGE_SIZE,
        patch_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_in_index=-1,
        is_hybrid=False,
    )
    config.architectures = ["DPTForDepthEstimation"]
    model = _build_quietly(DPTForDepthEstimation, config)
    config.save_pretrained(depth_folder)
    state = fill_deterministic(model, seed)
    # The head ends in a ReLU: random weights leave most of the map at exactly 0, and a flat map has no
    # min/max normalisation. A positive last bias keeps the tiny depth map varied, like a real one.
    last_bias = next(key for key in state if key.endswith("head.4.bias"))
    state[last_bias] = state[last_bias] + 1.0
    save_weights(state, depth_folder, "model")
    processor = {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "ensure_multiple_of": 1,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "DPTImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "keep_aspect_ratio": False,
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": DPT_IMAGE_SIZE, "width": DPT_IMAGE_SIZE},
    }
    processor_folder.mkdir(parents=True, exist_ok=True)
    (processor_folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
