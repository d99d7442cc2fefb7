"""The fallback ladder (sd2_app/api/fallback.py): normal -> fp32 -> free memory + tiled decode -> clear error,
and the per-call fp32 attention switch it relies on (sd2_app/nn/attention.py)."""

from __future__ import annotations

import pytest
import torch

from sd2_app.api.fallback import (
    FP32_ATTENTION_NOTE,
    FP32_DECODE_NOTE,
    LOW_MEMORY_NOTE,
    OUT_OF_MEMORY_MESSAGE,
    non_finite_message,
    run_with_fallbacks,
)
from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.nn.attention import Attention
from sd2_app.pipelines.run_mode import NORMAL, NonFiniteError, RunMode


def _scripted(*failures: BaseException | None) -> tuple[list[RunMode], object]:
    """An attempt that raises `failures[i]` on call i (None: succeeds), recording the modes it was given."""
    modes: list[RunMode] = []

    def attempt(mode: RunMode) -> str:
        modes.append(mode)
        failure = failures[len(modes) - 1] if len(modes) <= len(failures) else None
        if failure is not None:
            raise failure
        return "image"

    return modes, attempt


def test_a_clean_run_is_one_normal_attempt() -> None:
    modes, attempt = _scripted()
    freed: list[int] = []
    assert run_with_fallbacks(attempt, lambda: freed.append(1)) == ("image", [])
    assert modes == [NORMAL] and freed == []


def test_nan_latents_then_out_of_memory_climb_both_rungs_in_order() -> None:
    modes, attempt = _scripted(NonFiniteError("latents"), torch.OutOfMemoryError("injected"))
    freed: list[int] = []
    result, notes = run_with_fallbacks(attempt, lambda: freed.append(1))
    assert result == "image" and notes == [FP32_ATTENTION_NOTE, LOW_MEMORY_NOTE] and freed == [1]
    assert modes == [NORMAL, RunMode(fp32_attention=True), RunMode(fp32_attention=True, tiled_decode=True)]


def test_nan_pixels_rerun_with_an_fp32_decode() -> None:
    modes, attempt = _scripted(NonFiniteError("image"))
    assert run_with_fallbacks(attempt, lambda: None) == ("image", [FP32_DECODE_NOTE])
    assert modes == [NORMAL, RunMode(fp32_decode=True)]


@pytest.mark.parametrize("stage", ["latents", "image"])
def test_nan_again_in_fp32_is_a_clear_error(stage: str) -> None:
    modes, attempt = _scripted(NonFiniteError(stage), NonFiniteError(stage))
    with pytest.raises(InvalidRequest) as caught:
        run_with_fallbacks(attempt, lambda: None)
    assert str(caught.value) == non_finite_message(stage) and len(modes) == 2


def test_out_of_memory_twice_is_a_clear_error_after_one_retry() -> None:
    modes, attempt = _scripted(torch.OutOfMemoryError("a"), torch.OutOfMemoryError("b"))
    freed: list[int] = []
    with pytest.raises(InvalidRequest) as caught:
        run_with_fallbacks(attempt, lambda: freed.append(1))
    assert str(caught.value) == OUT_OF_MEMORY_MESSAGE
    assert modes == [NORMAL, RunMode(tiled_decode=True)] and freed == [1]


def test_cancel_and_other_errors_pass_through_without_a_retry() -> None:
    for error in (Cancelled(), ValueError("bug")):
        modes, attempt = _scripted(error)
        with pytest.raises(type(error)):
            run_with_fallbacks(attempt, lambda: None)
        assert modes == [NORMAL]


def test_per_call_fp32_attention_computes_the_product_in_fp32_and_stores_nothing() -> None:
    torch.manual_seed(0)
    attention = Attention(16, 8, heads=2, head_dim=8).to(torch.bfloat16)
    q, k, v = (torch.randn(2, 2, 5, 8, dtype=torch.bfloat16) * 4 for _ in range(3))
    fp32 = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(torch.bfloat16)
    assert torch.equal(attention.attend(q, k, v, fp32_attention=True), fp32)
    x, context = torch.randn(2, 5, 16, dtype=torch.bfloat16), torch.randn(2, 7, 8, dtype=torch.bfloat16)
    assert not torch.equal(attention(x, context, fp32_attention=True), attention(x, context))  # it changes the math
    assert vars(attention).keys() == vars(Attention(16, 8, heads=2, head_dim=8)).keys()  # no state was added
