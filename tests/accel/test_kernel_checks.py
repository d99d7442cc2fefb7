"""The start-up check's orchestration (accel/kernels/checks.py) on CPU: its cases run on a thread pool, so
a cold start compiles several Triton kernels at once. The kernels here are eager stand-ins with the Triton
wrappers' signatures: the test is about what the pool does with them (every case run, every error kept in
order, an exception in a worker reaching the caller), not about the kernels (test_accel_kernels checks those
in the interpreter)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sd2_app.accel.kernels.checks import _kernel_errors


def _eager_kernels(wrong: str | None = None, fails: str | None = None) -> SimpleNamespace:
    """The wrappers of accel.kernels.elementwise as eager math; `wrong` names one whose output is off by 1,
    `fails` one that raises. Each records the thread it ran on."""
    threads: set[str] = set()

    def tracked(name: str, fn):
        def run(*args, **kwargs):
            threads.add(threading.current_thread().name)
            if name == fails:
                raise RuntimeError(f"{name} did not compile")
            out = fn(*args, **kwargs)
            if name != wrong:
                return out
            return tuple(o + 1 for o in out) if isinstance(out, tuple) else out + 1
        return run

    def group_norm_silu(x, groups, weight, bias, eps, apply_silu=True, shift_bias=None, shift_temb=None,
                        concat=None):
        x = x.float() if concat is None else torch.cat([x, concat], 1).float()
        if shift_bias is not None:
            x = x + shift_bias.float()[None, :, None, None] + shift_temb.float()[:, :, None, None]
        y = F.group_norm(x, groups, weight.float(), bias.float(), eps)
        return F.silu(y) if apply_silu else y

    def group_norm_and_biased_input(x, groups, weight, bias, eps, input_bias):
        return (group_norm_silu(x, groups, weight, bias, eps, apply_silu=False),
                x.float() + input_bias.float()[None, :, None, None])

    def layer_norm(x, weight, bias, eps, residual=None, sum_bias=None):
        summed = (x.float() + residual.float()).to(x.dtype).float()
        normed = F.layer_norm(summed, (x.shape[-1],), weight.float(), bias.float(), eps)
        return (summed if sum_bias is None else summed + sum_bias.float()), normed

    def geglu(projected):
        value, gate = projected.float().chunk(2, dim=-1)
        return value * F.gelu(gate)

    def bias_residual(a, bias, residual, scale=1.0, bias2=None):
        return (a.float() + (bias.float() + bias2.float())[None, :, None, None] + residual.float()) * scale

    fns = dict(group_norm_silu=group_norm_silu, group_norm_and_biased_input=group_norm_and_biased_input,
               layer_norm=layer_norm, geglu=geglu, bias_residual=bias_residual)
    return SimpleNamespace(threads=threads, **{name: tracked(name, fn) for name, fn in fns.items()})


def _errors(kernels: SimpleNamespace, threads: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 12, 10, generator=g).to(memory_format=torch.channels_last)
    errors = _kernel_errors(kernels, torch.nn.GroupNorm(32, 64), g, x, torch.float32, threads=threads)
    return [float(e) for e in errors]


def test_the_cases_run_on_worker_threads_and_keep_their_order() -> None:
    kernels = _eager_kernels()
    parallel = _errors(kernels, threads=4)
    # GEGLU 1, GroupNorm 2, LayerNorm 3 + 2 + 2 (320, 640, 1280 wide), bias + residual 1, and the NHWC
    # GroupNorm's shifted 1, two-source 1 and biased-input 2
    assert len(parallel) == 15 and max(parallel) < 1e-5
    assert any(name.startswith("kernel-check") for name in kernels.threads)
    # the same errors, in the same order, on one thread (the inputs are drawn before any case runs)
    serial_kernels = _eager_kernels(wrong="bias_residual")
    serial = _errors(serial_kernels, threads=1)
    assert serial_kernels.threads == {threading.current_thread().name}
    assert _errors(_eager_kernels(wrong="bias_residual"), threads=4) == serial
    assert [i for i, e in enumerate(serial) if e > 0.5] == [10]


@pytest.mark.parametrize("wrong", ["geglu", "group_norm_and_biased_input", "layer_norm"])
def test_a_wrong_kernel_on_a_worker_shows_in_the_errors(wrong: str) -> None:
    assert max(_errors(_eager_kernels(wrong=wrong), threads=4)) >= 0.5


def test_a_kernel_that_fails_on_a_worker_raises_to_the_caller() -> None:
    with pytest.raises(RuntimeError, match="geglu did not compile"):
        _errors(_eager_kernels(fails="geglu"), threads=4)
