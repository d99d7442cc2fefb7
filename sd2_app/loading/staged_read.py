"""Weights onto the GPU through two pinned staging buffers: a safetensors file (read_to_device) or a module
that transformers loaded into host memory (module_to_device).

Why: safetensors' own reader (and `module.to`) copies each tensor from the page cache, which is pageable
memory, to the device; the driver stages such a copy through a small pinned buffer of its own and returns when
it is done, so reading and transferring never overlap (docs/PERFORMANCE.md has the measured load speeds,
ours and diffusers'). Here the file is read in large chunks straight into
page-locked memory (a kernel memcpy out of the page cache) while the previous chunk's copy to the device runs
asynchronously; each tensor still gets its own device allocation (a shared one could not be freed piece by
piece when the accelerator re-lays convolutions out or stacks projections).

Only raw little-endian data in the file's own dtypes is read here; `checkpoint.read_safetensors` keeps
safetensors' reader for files that need a cast and for CPU loads.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

HEADER_LIMIT = 100 * 2**20  # a safetensors header larger than this is not one we wrote or the Hub holds
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Entry:
    """One tensor of the file: its dtype name, shape and byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: Path) -> tuple[int, dict[str, Entry]]:
    """(where the data section starts, name -> Entry) from the file's header; ValueError when it is not a
    readable safetensors header (truncated, too large, not JSON, an entry missing a field). Whether the offsets
    fit the shapes and the file is `stageable`'s question."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError("truncated safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > HEADER_LIMIT:
            raise ValueError(f"not a safetensors file (header length {length})")
        raw = f.read(length)
    if len(raw) != length:
        raise ValueError("truncated safetensors header")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable safetensors header ({e})") from e
    entries = {}
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = (int(v) for v in info["data_offsets"])
            entries[name] = Entry(str(info["dtype"]), tuple(int(d) for d in info["shape"]), begin, end)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"malformed safetensors header ({type(e).__name__}: {e})") from e
    return 8 + length, entries


def stageable(entries: dict[str, Entry], dtype: torch.dtype, file_bytes: int, data_start: int) -> bool:
    """True when every tensor can be read raw: a known dtype, floats already in `dtype`, and byte ranges that
    match the shapes and tile the data section exactly, back to back to the end of the file (the checks
    safetensors' reader makes); anything else goes to that reader, which names the problem."""
    position = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        kind = DTYPES.get(entry.dtype)
        if kind is None or (kind.is_floating_point and kind != dtype):
            return False
        numel = 1
        for dim in entry.shape:
            numel *= dim
        if entry.begin != position or entry.end - entry.begin != numel * kind.itemsize:
            return False
        position = entry.end
    return data_start + position == file_bytes


def read_to_device(path: Path, entries: dict[str, Entry], data_start: int, device: torch.device,
                   chunk_bytes: int = CHUNK_BYTES) -> dict[str, Tensor]:
    """Every tensor of `entries` on `device` (each its own allocation), read from `path` in chunks (see
    `_transfer`)."""
    tensors = {name: torch.empty(e.shape, dtype=DTYPES[e.dtype], device=device) for name, e in entries.items()}
    targets = sorted((e.begin, e.end, _bytes(tensors[name])) for name, e in entries.items() if e.end > e.begin)
    with open(path, "rb", buffering=0) as f:
        f.seek(data_start)
        _transfer(lambda staging, start, stop: _read_exactly(f, staging, path), targets, device, chunk_bytes)
    return tensors


def module_to_device(module: torch.nn.Module, device: torch.device, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Move `module`'s host parameters and buffers to `device` in place through the same pinned chunks.

    For the modules transformers loads (the text encoder, DPT) into host memory: their `module.to(device)`
    copies each tensor from pageable memory, synchronously. Here the tensors are packed into the pinned
    buffers chunk by chunk while the previous chunk is copied (one allocation per tensor on the device, each
    tensor object kept, so references to the parameters stay valid). Tensors shared by several names move once.
    A failure leaves every tensor where it was.
    """
    tensors = list({id(t): t for t in [*module.parameters(), *module.buffers()] if t.device.type == "cpu"}.values())
    sources, targets, moved, position = [], [], [], 0
    for tensor in tensors:
        data = tensor.data.contiguous()
        moved.append(torch.empty(data.shape, dtype=data.dtype, device=device))
        size = data.numel() * data.element_size()
        if size:
            sources.append((position, position + size, _bytes(data)))
            targets.append((position, position + size, _bytes(moved[-1])))
            position += size

    def pack(staging: Tensor, start: int, stop: int) -> None:
        for begin, end, source in _overlapping(sources, start, stop):
            low, high = max(begin, start), min(end, stop)
            staging[low - start:high - start].copy_(source[low - begin:high - begin])

    _transfer(pack, targets, device, chunk_bytes)
    for tensor, data in zip(tensors, moved):  # only now: a failed transfer leaves the module where it was
        tensor.data = data


def _bytes(tensor: Tensor) -> Tensor:
    """A contiguous tensor's bytes as a flat uint8 view."""
    return tensor.reshape(-1).view(torch.uint8)


def _transfer(fill: Callable[[Tensor, int, int], None], targets: list[tuple[int, int, Tensor]],
              device: torch.device, chunk_bytes: int) -> None:
    """Bytes [0, end of the last target) in chunks: `fill(staging, start, stop)` puts bytes [start, stop) into
    a staging buffer, which is then copied into every target (begin, end, flat uint8 tensor) it overlaps.

    On CUDA the staging buffers are two pinned ones: chunk i+1 is filled while chunk i is copied, and a buffer
    is refilled only after its previous copies finished (an event). The copies are queued on the current
    stream, so work queued after this call sees the data; the call returns once the last copy is done, since
    the staging buffers are freed on return. Elsewhere (CPU) the same chunking copies synchronously.
    """
    if not targets:
        return
    total = max(end for _, end, _ in targets)
    pinned = device.type == "cuda"
    buffers = [torch.empty(min(chunk_bytes, total), dtype=torch.uint8, pin_memory=pinned) for _ in range(2)]
    events: list[torch.cuda.Event | None] = [None, None]
    for index, (start, stop) in enumerate(_chunks(total, chunk_bytes)):
        slot = index % 2
        if events[slot] is not None:
            events[slot].synchronize()  # its previous copies have left the buffer
        staging = buffers[slot][: stop - start]
        fill(staging, start, stop)
        for begin, end, target in _overlapping(targets, start, stop):
            low, high = max(begin, start), min(end, stop)
            target[low - begin:high - begin].copy_(staging[low - start:high - start], non_blocking=pinned)
        if pinned:
            events[slot] = torch.cuda.Event()
            events[slot].record()
    for event in events:
        if event is not None:
            event.synchronize()


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _overlapping(targets: list[tuple[int, int, Tensor]], start: int, stop: int) -> Iterator[tuple[int, int, Tensor]]:
    """The targets whose byte range meets [start, stop) (targets sorted by start; a linear scan is enough for
    a few thousand tensors and a few dozen chunks)."""
    for begin, end, target in targets:
        if begin >= stop:
            break
        if end > start:
            yield begin, end, target


def _read_exactly(f, into: Tensor, path: Path) -> None:
    view = memoryview(into.numpy()).cast("B")
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise ValueError(f"{path.name}: file ends inside its data section")
        done += got
