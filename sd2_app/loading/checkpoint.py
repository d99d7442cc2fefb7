"""Safetensors -> a module on the target device and dtype, with no random initialisation and strict keys.

Modules are built with their parameters on the meta device (so the 866M-parameter UNet costs no init time
and no memory), then the checkpoint tensors, already on the device in the target dtype, are assigned in
place of them with `load_state_dict(strict=True, assign=True)`. Buffers are still built for real, so
non-persistent ones (computed in `__init__`, absent from checkpoints) keep their values.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from sd2_app.errors import LoadError
from sd2_app.fork_safety import renew_in_forked_child
from sd2_app.loading.staged_read import read_header, read_to_device, stageable

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)
Rename = tuple[str, str]  # (regex on the checkpoint key, replacement)

# diffusers <= 0.13 saved the VAE mid-block attention as `AttentionBlock` (diffusers PR #3387 renamed it);
# all SD2 repos were converted with 0.8-0.10. One rule per line; the weights are Linear (or 1x1 conv, squeezed).
LEGACY_VAE_RENAMES: tuple[Rename, ...] = (
    (r"(\.attentions\.\d+)\.query\.", r"\1.to_q."),
    (r"(\.attentions\.\d+)\.key\.", r"\1.to_k."),
    (r"(\.attentions\.\d+)\.value\.", r"\1.to_v."),
    (r"(\.attentions\.\d+)\.proj_attn\.", r"\1.to_out.0."),
)

_BUILD_LOCK = threading.Lock()  # the meta patch below is process-wide: one build at a time
renew_in_forked_child(sys.modules[__name__], _BUILD_LOCK=threading.Lock)  # a ZeroGPU worker (forked) builds too


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Inside, every nn.Parameter this thread registers is moved to the meta device at once (buffers stay real).

    The patch is on the class, so it is seen by every thread; only the building thread's modules are affected
    (a module built elsewhere meanwhile, e.g. by a request thread, keeps real weights).
    """
    builder = threading.get_ident()
    with _BUILD_LOCK:  # first, then read what to restore: another build may be restoring it
        original = nn.Module.register_parameter

        def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
            original(module, name, param)
            if threading.get_ident() != builder:
                return
            if param is not None and param.device.type != "meta":
                module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

        nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]


def read_safetensors(
    path: Path, device: torch.device | str, dtype: torch.dtype, *, repo: str, file: str
) -> dict[str, torch.Tensor]:
    """All tensors of `path`, read straight onto `device`; floating ones in `dtype`.

    On CUDA a file whose floats are already in `dtype` (the fp16 variants this app loads) is read in large
    chunks through pinned buffers (staged_read: the transfer overlaps the read). Anything else goes through
    safetensors' reader, one tensor at a time, which also names what is wrong: a cast, an odd or damaged
    file, and CPU loads (there its tensors map the file: no copy at all).
    """
    if not path.is_file():
        raise LoadError(repo, file, "not found")
    device = torch.device(device)
    if device.type == "cuda":
        try:
            data_start, entries = read_header(path)
            if stageable(entries, dtype, path.stat().st_size, data_start):
                return read_to_device(path, entries, data_start, device)
        except ValueError:
            pass  # safetensors' reader below reports it
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, OSError) as e:  # e.g. no page-locked memory: the plain reader still works
            logger.warning("%s: chunked read failed (%s: %s); reading tensor by tensor", file, type(e).__name__, e)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    except SafetensorError as e:
        raise LoadError(repo, file, f"corrupt or truncated safetensors file ({e})") from e
    return tensors


def check_header(path: Path, *, repo: str, file: str) -> list[str]:
    """The tensor names of a safetensors file; reading the header is enough to catch truncation."""
    if not path.is_file():
        raise LoadError(repo, file, "not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except SafetensorError as e:
        raise LoadError(repo, file, f"corrupt or truncated safetensors file ({e})") from e


def rename_keys(state_dict: dict[str, torch.Tensor], renames: Sequence[Rename]) -> dict[str, torch.Tensor]:
    """Apply the rename table; logs how many keys it changed (so a legacy checkpoint is visible in logs)."""
    renamed: dict[str, torch.Tensor] = {}
    changed = 0
    for key, tensor in state_dict.items():
        new = key
        for pattern, replacement in renames:
            new = re.sub(pattern, replacement, new)
        changed += new != key
        renamed[new] = tensor
    if changed:
        logger.info("renamed %d legacy checkpoint keys", changed)
    return renamed


def _fit_1x1(tensor: torch.Tensor, expected: torch.Size) -> torch.Tensor:
    """[C,C,1,1] conv weight for a Linear [C,C], or the reverse; anything else is returned unchanged."""
    if tensor.shape[2:] == (1, 1) and tensor.shape[:2] == expected:
        return tensor[:, :, 0, 0]
    if expected[2:] == (1, 1) and expected[:2] == tensor.shape:
        return tensor[:, :, None, None]
    return tensor


def _summarise(keys: list[str]) -> str:
    shown = ", ".join(keys[:5])
    return shown if len(keys) <= 5 else f"{shown}, ... ({len(keys)} in all)"


def match_state_dict(
    module: nn.Module, state_dict: dict[str, torch.Tensor], *, repo: str, file: str
) -> dict[str, torch.Tensor]:
    """Check keys and shapes against `module`, raising LoadError that names the first offending key."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        raise LoadError(repo, file, f"missing keys: {_summarise(missing)}")
    if unexpected:
        raise LoadError(repo, file, f"unexpected keys: {_summarise(unexpected)}")
    fitted: dict[str, torch.Tensor] = {}
    for key, want in expected.items():
        tensor = _fit_1x1(state_dict[key], want.shape)
        if tensor.shape != want.shape:
            raise LoadError(
                repo,
                file,
                f"shape mismatch for {key}: checkpoint {tuple(tensor.shape)}, model {tuple(want.shape)}",
            )
        fitted[key] = tensor
    return fitted


def build_and_load(
    build: Callable[[], M],
    path: Path,
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    repo: str,
    file: str,
    renames: Sequence[Rename] = (),
) -> M:
    """`build()` with meta parameters, then the checkpoint assigned strictly; returns an eval-mode module."""
    with params_on_meta():
        module = build()
    state_dict = rename_keys(read_safetensors(path, device, dtype, repo=repo, file=file), renames)
    state_dict = match_state_dict(module, state_dict, repo=repo, file=file)
    module.load_state_dict(state_dict, strict=True, assign=True)
    module.to(device=device, dtype=dtype)  # only moves buffers that the checkpoint does not hold
    on_meta = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    assert not on_meta, f"left on the meta device: {on_meta[:5]}"
    module.eval().requires_grad_(False)
    return module
