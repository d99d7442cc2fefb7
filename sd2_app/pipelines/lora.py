"""LoRAs merged into a checkpoint's weights for one job, and the weights put back exactly after it.

Each layer of a LoRA file changes one Linear or Conv2d weight W of the UNet or the text encoder by
multiplier x scale x change, reshaped to W's shape, where the change is a LoRA's up @ down (Hu et al. 2021,
"LoRA", eq. 3; a conv layer's down is (rank, in, kh, kw) and its up (out, rank, 1, 1), as sd-scripts
networks/lora.py `LoRAModule` makes them), a LyCORIS LoHa's (w1_a @ w1_b) ⊙ (w2_a @ w2_b) or a LoKr's w1 ⊗ w2
(sd2_app/loading/loras.py; `LayerChange`). The scale is alpha / rank, or 1 without an alpha, and 1 for a LoKr
whose factors are both whole, which has no rank (A1111's extensions-builtin/Lora network_lora.py, network_hada.py,
network_lokr.py, `calc_scale`). The change is added in place, in float32 and rounded once to W's dtype, so
everything that reads W (the fused projections' stacked views, CUDA graphs, the compiled UNet, a tiled twin)
sees it without a re-capture, and a module that derives values from W is told (`weights_changed`); a copy of
each changed weight is kept and copied back when the job ends, bit for bit, so no request sees another's LoRA.
Merging costs one product per layer per job, and the job then runs at full speed; diffusers' PEFT layers
instead add the low-rank path to each forward (`load_lora_weights` without `fuse_lora`): the same function up
to float rounding.

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
from sd2_app.loading.loras import ALPHA, DOWN, HADA, MAX_FILE_BYTES, UP, LoraFile, layer_kinds
from sd2_app.nn.clip_text import text_model_of

log = logging.getLogger(__name__)

UNET_PREFIX, TE_PREFIX = "lora_unet_", "lora_te_text_model_"
CACHE_BYTES = 2 * 2**30  # LoRA tensors kept in host memory between jobs, at most
BACKUP_HEADROOM_BYTES = 4 * 2**30  # GPU memory left free for the job when the weights' copies stay on the GPU


@dataclass(frozen=True)
class LayerChange:
    """One layer's change before its scale (module docstring): `kind` ("lora", "loha", "lokr") and its tensors,
    float32 on the CPU: (down, up), (w1_a, w1_b, w2_a, w2_b), or (w1, w2) with each LoKr factor whole."""

    kind: str
    factors: tuple[Tensor, ...] = field(repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """The change's shape: a LoRA's (out, *down's input shape), else (out, in·kh·kw)."""
        if self.kind == "lora":
            down, up = self.factors
            return (up.shape[0], *down.shape[1:])
        if self.kind == "loha":
            w1_a, w1_b, _, _ = self.factors
            return (w1_a.shape[0], w1_b[0].numel())
        w1, w2 = self.factors
        return (w1.shape[0] * w2.shape[0], w1.shape[1] * w2[0].numel())

    def well_formed(self) -> bool:
        """Whether the factors are matrices (or convs' weights) whose inner sides agree (a LoRA's up is (out,
        rank[, 1, 1]))."""
        if any(factor.dim() < 2 for factor in self.factors):
            return False
        if self.kind == "lora":
            down, up = self.factors
            return up.shape[1] == down.shape[0] and up[0].numel() == up.shape[1]
        if self.kind == "loha":
            w1_a, w1_b, w2_a, w2_b = (factor.flatten(1) for factor in self.factors)
            return w1_a.shape[1] == w1_b.shape[0] and w2_a.shape[1] == w2_b.shape[0] \
                and w1_a.shape[0] == w2_a.shape[0] and w1_b.shape[1] == w2_b.shape[1]
        return True

    def matrix(self, device: torch.device) -> Tensor:
        """The change as an (out, in·kh·kw) float32 matrix on `device`."""
        flat = [factor.to(device).flatten(1) for factor in self.factors]
        if self.kind == "lora":
            return flat[1] @ flat[0]
        if self.kind == "loha":
            return (flat[0] @ flat[1]) * (flat[2] @ flat[3])
        return torch.kron(flat[0], flat[1])

    @property
    def nbytes(self) -> int:
        return sum(factor.nbytes for factor in self.factors)


@dataclass(frozen=True)
class LoraWeights:
    """One LoRA file's layers: name -> (change, scale), and A1111's short hash."""

    name: str
    shorthash: str  # first 12 hex digits of the file's sha256, as A1111 writes in `Lora hashes:`
    layers: dict[str, tuple[LayerChange, float]] = field(repr=False)
    nbytes: int = 0  # the tensors' bytes as kept (float32)


def _layer_change(name: str, layer: str, kind: str, tensors: Mapping[str, Tensor]) -> tuple[LayerChange, float]:
    """A layer's change and scale from the file's tensors (module docstring: A1111's `calc_scale`); a LoKr factor
    given as two halves is kept as their product (InvalidRequest when they do not multiply)."""
    def get(suffix: str) -> Tensor:
        return tensors[layer + suffix].float()

    rank: int | None
    if kind == "lora":
        change, rank = LayerChange(kind, (get(DOWN), get(UP))), tensors[layer + DOWN].shape[0]
    elif kind == "loha":
        change, rank = LayerChange(kind, tuple(get(suffix) for suffix in HADA)), tensors[layer + HADA[1]].shape[0]
    else:
        factors, rank = [], None
        for w in ("w1", "w2"):
            if layer + f".lokr_{w}" in tensors:
                factors.append(get(f".lokr_{w}"))
            else:
                half_a, half_b = get(f".lokr_{w}_a"), get(f".lokr_{w}_b")
                if half_a.dim() != 2 or half_b.dim() < 2 or half_a.shape[1] != half_b.shape[0]:
                    raise InvalidRequest(f"The LoRA {name!r} cannot be used: its layer {layer}'s {w} halves do not "
                                         f"multiply ({tuple(half_a.shape)} and {tuple(half_b.shape)}).")
                factors.append(half_a @ half_b.flatten(1))
                rank = rank or half_b.shape[0]
        change = LayerChange(kind, tuple(factors))
    alpha = float(tensors[layer + ALPHA]) if layer + ALPHA in tensors else None
    return change, (alpha / rank if alpha is not None and rank else 1.0)


def lora_weights(name: str, tensors: Mapping[str, Tensor], shorthash: str = "") -> LoraWeights:
    """A LoRA's layers from its tensors as safetensors reads them."""
    layers = {layer: _layer_change(name, layer, kind, tensors) for layer, kind in layer_kinds(tensors).items()}
    return LoraWeights(name, shorthash, layers, sum(change.nbytes for change, _ in layers.values()))


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


def _fits(change: LayerChange, shape: torch.Size) -> bool:
    """Whether the well-formed `change` is a change of a weight of `shape` (out, in[, kh, kw]); a Linear's and a
    1x1 conv's changes fit either (trainers write both forms), a LoHa's or LoKr's (out, in·kh·kw) fits a conv,
    and a conv's change fits a conv with more input channels (`_extra_inputs`)."""
    product, target = _squeezed(change.shape), _squeezed(tuple(shape))
    if len(product) == 2 and len(target) == 4:  # the conv's kernel flattened into the input side
        kernel = target[2] * target[3]
        if product[1] % kernel:
            return False
        product = (product[0], product[1] // kernel, *target[2:])
    return product == target or _extra_inputs(product, target)


def _extra_inputs(product: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """A conv LoRA for a model whose conv takes more input channels, the first ones the LoRA's: the inpainting
    UNet's conv_in (4 latent + 5 mask and masked-image channels), the depth UNet's (4 + depth). A1111 pads the
    change with zeros for the inpainting model's extra channels (extensions-builtin/Lora/networks.py,
    `network_apply_weights`); so does this, for any such conv."""
    return len(product) == len(target) == 4 and product[0] == target[0] and product[2:] == target[2:] \
        and product[1] < target[1]


LayerPlan = dict[str, list[tuple[LayerChange, float]]]  # layer -> (change, multiplier x scale) each


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
            change, scale = weights.layers[layer]
            if not change.well_formed():
                shapes = ", ".join(str(tuple(factor.shape)) for factor in change.factors)
                raise InvalidRequest(f"The LoRA {weights.name!r} cannot be used: its layer {layer}'s tensors do not "
                                     f"go together ({shapes}).")
            if not _fits(change, targets[layer].shape):
                raise InvalidRequest(f"The LoRA {weights.name!r} does not fit this checkpoint: its layer {layer} "
                                     f"is {change.shape}, the model's "
                                     f"{tuple(targets[layer].shape)} (a LoRA made for another model).")
            factor = (te if layer.startswith(TE_PREFIX) else unet) * scale
            if factor:
                plan.setdefault(layer, []).append((change, factor))
    return plan


def _change(terms: list[tuple[LayerChange, float]], weight: Tensor) -> Tensor:
    """The float32 sum of factor x change over `terms`, shaped and placed as `weight`."""
    total = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    for change, factor in terms:
        product = change.matrix(weight.device)
        if product.numel() != weight.numel():  # a conv with extra input channels: no change to those
            product = product.reshape(weight.shape[0], -1, *weight.shape[2:])
            product = F.pad(product, (0, 0, 0, 0, 0, weight.shape[1] - product.shape[1]))
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
