"""LoRAs merged into a checkpoint's weights for one job, and the weights put back exactly after it.

Each LoRA layer changes one Linear or Conv2d weight W of the UNet or the text encoder by
multiplier x alpha / rank x (up @ down), reshaped to W's shape (Hu et al. 2021, "LoRA", eq. 3; a conv layer's
down is (rank, in, kh, kw) and its up (out, rank, 1, 1), as sd-scripts networks/lora.py `LoRAModule` makes
them). The change is added in place, in float32 and rounded once to W's dtype, so everything that reads W
(the fused projections' stacked views, CUDA graphs, the compiled UNet, a tiled twin) sees it without a
re-capture, and a module that derives values from W is told (`weights_changed`); a copy of each changed
weight is kept and copied back when the job ends, bit for bit, so no request sees another's LoRA. Merging
costs one rank-r matmul per layer per job, and the job then runs at full speed; diffusers' PEFT layers instead
add the low-rank path to each forward (`load_lora_weights` without `fuse_lora`): the same function up to float
rounding.

A layer's name is `lora_unet_` or `lora_te_text_model_` followed by the module's path with "_" for "."
(sd2_app/loading/loras.py); our modules' paths are the checkpoint's keys, so the names match directly.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import Tensor, nn

from sd2_app.checkpoints.components import Components
from sd2_app.errors import InvalidRequest
from sd2_app.loading.loras import ALPHA, DOWN, MAX_FILE_BYTES, UP, LoraFile, lora_layers
from sd2_app.nn.clip_text import text_model_of

log = logging.getLogger(__name__)

UNET_PREFIX, TE_PREFIX = "lora_unet_", "lora_te_text_model_"
CACHE_BYTES = 2 * 2**30  # LoRA tensors kept in host memory between jobs, at most
BACKUP_HEADROOM_BYTES = 4 * 2**30  # GPU memory left free for the job when the weights' copies stay on the GPU


@dataclass(frozen=True)
class LoraWeights:
    """One LoRA file's layers: name -> (down, up, alpha / rank), float32 on the CPU, and A1111's short hash."""

    name: str
    shorthash: str  # first 12 hex digits of the file's sha256, as A1111 writes in `Lora hashes:`
    layers: dict[str, tuple[Tensor, Tensor, float]] = field(repr=False)
    nbytes: int = 0  # the tensors' bytes as kept (float32)


def lora_weights(name: str, tensors: Mapping[str, Tensor], shorthash: str = "") -> LoraWeights:
    """A LoRA's layers from its tensors as safetensors reads them (no `.alpha`: alpha = rank, as sd-scripts)."""
    layers = {}
    for layer in lora_layers(tensors):
        down, up = tensors[layer + DOWN].float(), tensors[layer + UP].float()
        alpha = float(tensors[layer + ALPHA]) if layer + ALPHA in tensors else float(down.shape[0])
        layers[layer] = (down, up, alpha / down.shape[0])
    nbytes = sum(down.nbytes + up.nbytes for down, up, _ in layers.values())
    return LoraWeights(name, shorthash, layers, nbytes)


def read_lora(file: LoraFile) -> LoraWeights:
    """Read `file`'s tensors. Its layers are read from the file as it is now: the library checked its header when it
    last read the folder, and a file replaced since is refused if it holds no LoRA layers any more."""
    if file.path.stat().st_size > MAX_FILE_BYTES:
        raise InvalidRequest(f"The LoRA file {file.path.name!r} has grown over {MAX_FILE_BYTES} bytes since it was "
                             "listed.")
    data = file.path.read_bytes()
    try:
        tensors = load_safetensors(data)
    except SafetensorError as error:
        raise InvalidRequest(f"The LoRA file {file.path.name!r} cannot be read any more ({error}).") from error
    weights = lora_weights(file.name, tensors, hashlib.sha256(data).hexdigest()[:12])
    if not weights.layers:
        raise InvalidRequest(f"The LoRA file {file.path.name!r} holds no LoRA layers any more.")
    return weights


class LoraCache:
    """The LoRA files read so far, least recently used dropped beyond `max_bytes`; safe across threads."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[tuple[str, int, float], LoraWeights] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, file: LoraFile) -> LoraWeights:
        stat = file.path.stat()
        key = (str(file.path), stat.st_size, stat.st_mtime)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        weights = read_lora(file)
        with self._lock:
            self._kept[key] = weights
            while len(self._kept) > 1 and sum(w.nbytes for w in self._kept.values()) > self.max_bytes:
                self._kept.popitem(last=False)
        return weights


def lora_targets(components: Components) -> dict[str, nn.Parameter]:
    """Every weight a LoRA layer can change, by the layer's name: the UNet's and the text encoder's Linear and
    Conv2d weights (a CUDA-graph wrapper's `module` unwrapped)."""
    unet = getattr(components.unet, "module", components.unet)
    parts = ((UNET_PREFIX, unet), (TE_PREFIX, text_model_of(components.text_encoder)))
    return {prefix + path.replace(".", "_"): module.weight for prefix, model in parts
            for path, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))}


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape` without trailing 1s past the second dimension: a 1x1 conv's (out, in, 1, 1) reads as (out, in)."""
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _fits(down: Tensor, up: Tensor, shape: torch.Size) -> bool:
    """Whether up @ down is a change of a weight of `shape` (out, in[, kh, kw]); a Linear's and a 1x1 conv's
    LoRAs fit either (trainers write both forms), and a conv's LoRA fits a conv with more input channels
    (`_extra_inputs`)."""
    if up.shape[1] != down.shape[0] or up[0].numel() != up.shape[1]:
        return False
    product, target = _squeezed((up.shape[0], *down.shape[1:])), _squeezed(tuple(shape))
    return product == target or _extra_inputs(product, target)


def _extra_inputs(product: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """A conv LoRA for a model whose conv takes more input channels, the first ones the LoRA's: the inpainting
    UNet's conv_in (4 latent + 5 mask and masked-image channels), the depth UNet's (4 + depth). A1111 pads the
    change with zeros for the inpainting model's extra channels (extensions-builtin/Lora/networks.py,
    `network_apply_weights`); so does this, for any such conv."""
    return len(product) == len(target) == 4 and product[0] == target[0] and product[2:] == target[2:] \
        and product[1] < target[1]


LayerPlan = dict[str, list[tuple[Tensor, Tensor, float]]]  # layer -> (down, up, multiplier x alpha / rank) each


def plan_changes(targets: dict[str, nn.Parameter], loras: Sequence[tuple[LoraWeights, float, float]]) -> LayerPlan:
    """What each weight the `loras` ((weights, te, unet multiplier) each) touch gets added. Raises
    InvalidRequest for a LoRA made for another model: one whose layers this checkpoint lacks, or whose layer's
    shape does not fit. Layers the checkpoint lacks are skipped while others fit (A1111 skips them with a note in
    its log; so does this, `log`)."""
    plan: LayerPlan = {}
    for weights, te, unet in loras:
        known = [layer for layer in weights.layers if layer in targets]
        if not known:
            raise InvalidRequest(f"The LoRA {weights.name!r} does not fit this checkpoint: none of its "
                                 f"{len(weights.layers)} layers is one of the model's (a LoRA made for another "
                                 "model).")
        if len(known) < len(weights.layers):
            log.info("LoRA %s: %d of its %d layers are not in this checkpoint", weights.name,
                     len(weights.layers) - len(known), len(weights.layers))
        for layer in known:
            down, up, scale = weights.layers[layer]
            if not _fits(down, up, targets[layer].shape):
                raise InvalidRequest(f"The LoRA {weights.name!r} does not fit this checkpoint: its layer {layer} "
                                     f"is {(up.shape[0], *down.shape[1:])}, the model's "
                                     f"{tuple(targets[layer].shape)} (a LoRA made for another model).")
            factor = (te if layer.startswith(TE_PREFIX) else unet) * scale
            if factor:
                plan.setdefault(layer, []).append((down, up, factor))
    return plan


def _change(terms: list[tuple[Tensor, Tensor, float]], weight: Tensor) -> Tensor:
    """The float32 sum of factor x up @ down over `terms`, shaped and placed as `weight`."""
    total = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    for down, up, factor in terms:
        product = up.to(weight.device).flatten(1) @ down.to(weight.device).flatten(1)
        if product.numel() != weight.numel():  # a conv with extra input channels: no change to those
            extra = weight.shape[1] - down.shape[1]
            product = F.pad(product.reshape(up.shape[0], *down.shape[1:]), (0, 0, 0, 0, 0, extra))
        total += product.reshape(weight.shape) * factor
    return total


@contextmanager
def merged(components: Components, loras: Sequence[tuple[LoraWeights, float, float]]) -> Iterator[None]:
    """The `loras` merged into `components`' weights while the block runs; put back after it, also when it
    raises (`plan_changes` refuses a LoRA that does not fit before anything changes). One layer's change at a
    time is in memory; each changed weight's copy is kept until the end (`backup_device` says where)."""
    targets = lora_targets(components)
    plan = plan_changes(targets, loras)
    if not plan:
        yield
        return
    device = targets[next(iter(plan))].device
    needed = sum(targets[layer].numel() * targets[layer].element_size() for layer in plan)
    keep_on = backup_device(device, needed, _free_bytes(device))
    kept: list[tuple[Tensor, Tensor]] = []
    try:
        with torch.no_grad():
            for layer, terms in plan.items():
                weight = targets[layer].data
                kept.append((weight, weight.to(keep_on, copy=True)))
                weight.copy_(weight.float() + _change(terms, weight))
        _tell_derived(components)
        yield
    finally:
        with torch.no_grad():
            for weight, original in kept:
                weight.copy_(original)
        _tell_derived(components)


def _free_bytes(device: torch.device) -> int | None:
    """What the job could still allocate on a CUDA `device`: the driver's free memory and the blocks PyTorch's
    allocator holds unused; None elsewhere."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def backup_device(device: torch.device, needed: int, free: int | None) -> torch.device:
    """Where the copies of the changed weights wait for the job's end: beside them while the GPU has `needed`
    bytes free and BACKUP_HEADROOM_BYTES more for the job itself (a copy back is then a device copy), else in host
    memory (a LoRA over most of the UNet on a small GPU: slower to put back, but no job runs out of memory for
    it). `free` None: not a CUDA device, where there is no such limit."""
    if free is None or free >= needed + BACKUP_HEADROOM_BYTES:
        return device
    return torch.device("cpu")


def _tell_derived(components: Components) -> None:
    """Have the modules that keep values derived from their weights (accel's sub-pixel upsampler keeps summed
    kernels) derive them again, in place."""
    unet = getattr(components.unet, "module", components.unet)
    for model in (unet, text_model_of(components.text_encoder)):
        for module in model.modules():
            if callable(getattr(module, "weights_changed", None)):
                module.weights_changed()
