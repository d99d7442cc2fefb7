"""The CLIP text transformer's forward from token embeddings instead of token ids.

transformers' `CLIPTextModel.forward` only takes ids, but a textual-inversion embedding is a vector that no
id stands for. This runs the same network on given token embeddings, reading the model's own modules (whose
names mirror the checkpoint keys, stable across transformers versions): position embeddings added, each
pre-norm layer (causal self-attention, then the MLP), the final layer norm — the architecture of CLIP's
text tower (Radford et al. 2021; transformers models/clip/modeling_clip.py). Nothing is written into the
model, so concurrent calls with different embeddings cannot see each other's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from transformers import CLIPTextConfig
    from transformers.modeling_outputs import BaseModelOutputWithPooling


class TextEncoder(Protocol):
    """What a pipeline calls as the text encoder: transformers' CLIPTextModel, or something that runs it
    (accel's CudaGraphTextEncoder, whose `module` is the model). The pipelines read `text_encoder(ids)[0]`,
    the last hidden state (N, T, D), and reach the model's own modules through `text_model_of`."""

    @property
    def config(self) -> CLIPTextConfig: ...

    def __call__(self, input_ids: Tensor) -> BaseModelOutputWithPooling | tuple[Tensor, ...]: ...


def text_model_of(text_encoder: TextEncoder) -> torch.nn.Module:
    """The module holding `embeddings`, `encoder` and `final_layer_norm` (transformers 4.x nests it under
    `text_model`, a CLIPTextTransformer; in 5.x it is the CLIPTextModel), unwrapping a CUDA-graph wrapper
    (`.module`) first."""
    module = getattr(text_encoder, "module", text_encoder)
    return getattr(module, "text_model", module)


def token_embeddings(text_encoder: TextEncoder, ids: Tensor) -> Tensor:
    """(N, T, D) token embeddings of `ids` (N, T), before positions are added."""
    return text_model_of(text_encoder).embeddings.token_embedding(ids)


def encode_from_embeddings(text_encoder: TextEncoder, embeds: Tensor) -> Tensor:
    """last_hidden_state (N, T, D) of the text transformer for token embeddings `embeds` (N, T, D)."""
    model = text_model_of(text_encoder)
    n, length, width = embeds.shape
    heads = model.config.num_attention_heads
    positions = model.embeddings.position_embedding.weight[:length]  # (T, D)
    x = embeds + positions
    for layer in model.encoder.layers:
        attention = layer.self_attn
        h = layer.layer_norm1(x)
        q, k, v = (proj(h).view(n, length, heads, -1).transpose(1, 2)
                   for proj in (attention.q_proj, attention.k_proj, attention.v_proj))  # each (N, heads, T, hd)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attention.scale)
        x = x + attention.out_proj(out.transpose(1, 2).reshape(n, length, width))
        x = x + layer.mlp(layer.layer_norm2(x))
    return model.final_layer_norm(x)


@torch.no_grad()
def encode_with_inserts(text_encoder: TextEncoder, ids: Tensor, inserts: list[list[tuple[int, Tensor]]]) -> Tensor:
    """last_hidden_state (N, T, D) of `ids` (N, T) with, per row, vectors (n, D) written over the token
    embeddings from a position on: `inserts[row] = [(position, vectors), ...]`."""
    embeds = token_embeddings(text_encoder, ids).clone()  # (N, T, D), this call's own tensor
    for row, row_inserts in enumerate(inserts):
        for position, vectors in row_inserts:
            embeds[row, position:position + vectors.shape[0]] = vectors.to(embeds.device, embeds.dtype)
    return encode_from_embeddings(text_encoder, embeds)
