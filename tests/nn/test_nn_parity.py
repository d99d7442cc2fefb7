"""Our UNet / VAE against diffusers' (the reference oracle) with one shared random state dict, fp32 on CPU.

Loading diffusers' safetensors with strict=True also proves that our attribute paths equal the checkpoint keys.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sd2_app.nn.config import UNetConfig, VAEConfig
from sd2_app.nn.unet import UNet
from sd2_app.nn.vae import AutoencoderKL
from sd2_app.testing.configs import UNET_CONFIGS, tiny_unet_config, tiny_vae_config

diffusers = pytest.importorskip("diffusers")

log = logging.getLogger(__name__)
ATOL = 1e-5
MAX_DIFFS: dict[str, float] = {}  # filled by the tests; printed at the end with -s


def _perturb_vectors(model: nn.Module, seed: int) -> None:
    """Norm weights start at 1 and biases at 0; randomise every 1-D tensor so swapped names would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))


def _twins(reference_cls: Callable[..., nn.Module], ours_cls: Callable[[Any], nn.Module], config: Any,
           tmp_path: Path) -> tuple[nn.Module, nn.Module]:
    """diffusers' model made from `config` (seed 0, its vectors perturbed) and ours, loaded strictly from the
    reference's saved safetensors; both in eval mode."""
    torch.manual_seed(0)
    reference = reference_cls(**config.to_dict()).eval()
    _perturb_vectors(reference, 1)
    ours = ours_cls(config).eval()
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    ours.load_state_dict(load_file(str(path)), strict=True)
    return reference, ours


def _record(name: str, ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    diff = (ours - ref).abs().max().item()
    MAX_DIFFS[name] = diff
    log.info("%s: max abs diff %.3g (ref max %.3g)", name, diff, ref.abs().max().item())
    assert ref.abs().max().item() > 1e-3, f"{name}: reference output is ~0, the comparison would prove nothing"
    assert diff <= ATOL, f"{name}: max abs diff {diff:.3g} > {ATOL}"
    return diff


UNET_CASES = list(UNET_CONFIGS) + ["sd2-base-conv-proj"]


def _tiny_unet(case: str) -> UNetConfig:
    if case == "sd2-base-conv-proj":  # SD1-style 1x1 conv projections, for robustness
        d = tiny_unet_config("sd2-base")
        d["use_linear_projection"] = False
        return UNetConfig.from_dict(d)
    return UNetConfig.from_dict(tiny_unet_config(case))


@pytest.mark.parametrize("case", UNET_CASES)
def test_unet_matches_diffusers(case: str, tmp_path: Path) -> None:
    config = _tiny_unet(case)
    reference, ours = _twins(diffusers.UNet2DConditionModel, UNet, config, tmp_path)

    g = torch.Generator().manual_seed(2)
    context = torch.randn(2, 77, config.cross_attention_dim, generator=g)
    labels = torch.tensor([20, 350]) if config.num_class_embeds else None
    # (latent size, timestep): square, then 5x3 and 10x6 latents that need the explicit upsample sizes;
    # timesteps as python float, 0-dim tensor and (B,) tensor.
    cases = [((8, 8), 999.0), ((5, 3), torch.tensor(17.5)), ((10, 6), torch.tensor([1.0, 500.0]))]
    with torch.no_grad():
        for (h, w), t in cases:
            x = torch.randn(2, config.in_channels, h, w, generator=g)
            want = reference(x, t, context, class_labels=labels).sample
            got = ours(x, t, context, class_labels=labels)
            _record(f"unet[{case}] {h}x{w}", got, want)


def test_unet_requires_class_labels_for_x4() -> None:
    ours = UNet(UNetConfig.from_dict(tiny_unet_config("x4-upscaler")))
    x = torch.zeros(1, 7, 8, 8)
    with pytest.raises(ValueError, match="class_labels"):
        ours(x, 1.0, torch.zeros(1, 77, 32))


def test_x4_class_embedding_changes_output() -> None:
    torch.manual_seed(0)
    ours = UNet(UNetConfig.from_dict(tiny_unet_config("x4-upscaler"))).eval()
    x = torch.randn(1, 7, 8, 8)
    ctx = torch.randn(1, 77, 32)
    with torch.no_grad():
        a = ours(x, 10.0, ctx, class_labels=torch.tensor([20]))
        b = ours(x, 10.0, ctx, class_labels=torch.tensor([300]))
    assert (a - b).abs().max().item() > 1e-4


@pytest.mark.parametrize("name", ["sd2", "x4-upscaler"])
def test_vae_matches_diffusers(name: str, tmp_path: Path) -> None:
    config = VAEConfig.from_dict(tiny_vae_config(name))
    reference, ours = _twins(diffusers.AutoencoderKL, AutoencoderKL, config, tmp_path)

    g = torch.Generator().manual_seed(3)
    f = config.spatial_factor
    # 40x24 px: latent 5x3 (SD2) / 10x6 (x4); 20x12 px for x4 gives 5x3; none are multiples of 8.
    sizes = [(40, 24), (32, 32)] + ([(20, 12)] if f == 4 else [])
    with torch.no_grad():
        for h, w in sizes:
            x = torch.rand(2, 3, h, w, generator=g) * 2 - 1
            want = reference.encode(x).latent_dist
            got = ours.encode(x)
            tag = f"vae[{name}] {h}x{w}"
            _record(f"{tag} mean", got.mean, want.mean)
            _record(f"{tag} logvar", got.logvar, want.logvar)
            _record(f"{tag} std", got.std, want.std)
            assert torch.equal(got.mode(), got.mean)
            z_want = want.sample(generator=torch.Generator().manual_seed(7))
            z_got = got.sample(generator=torch.Generator().manual_seed(7))
            _record(f"{tag} sample", z_got, z_want)
            assert z_got.shape == (2, config.latent_channels, h // f, w // f)
            _record(f"{tag} decode", ours.decode(z_got), reference.decode(z_want).sample)


def test_posterior_logvar_is_clamped() -> None:
    from sd2_app.nn.vae import DiagonalGaussian

    moments = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 100.0)], dim=1)
    posterior = DiagonalGaussian(moments)
    assert posterior.logvar.max().item() == 20.0
    moments[:, 4:] = -100.0
    assert DiagonalGaussian(moments).std.min().item() == pytest.approx(torch.exp(torch.tensor(-15.0)).item())


@pytest.mark.parametrize("math_only", [False, True])
@pytest.mark.parametrize("upcast", [False, True])
def test_upcast_attention_runs_in_fp32_only_where_sdpa_would_use_its_math_backend(
        upcast: bool, math_only: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """SD2.1-768's upcast_attention guards against an fp16 QK^T overflowing: the product sees fp32 q, k, v
    where SDPA would run its math backend (QK^T in the inputs' dtype), and the inputs' own dtype where a
    fused kernel (fp32 accumulation) serves them, as in diffusers' AttnProcessor2_0."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sd2_app.nn import attention

    seen: list[torch.dtype] = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seen.append(q.dtype)
        return original(q, k, v)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    block = attention.BasicTransformerBlock(32, 2, 16, 24, upcast=upcast).to(torch.bfloat16)
    x, context = torch.randn(1, 6, 32, dtype=torch.bfloat16), torch.randn(1, 5, 24, dtype=torch.bfloat16)
    with sdpa_kernel([SDPBackend.MATH]) if math_only else contextlib.nullcontext():
        fused = attention.sdpa_runs_fused(x[None], x[None], x[None])
        out = block(x, context)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 6, 32)
    assert fused is not math_only  # PyTorch has a fused CPU kernel for bf16 (flash), none in the math-only context
    assert seen == [torch.float32 if upcast and not fused else torch.bfloat16] * 2  # attn1 and attn2


def test_report_max_diffs(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this file: prints the table of measured differences (visible with -s or -rP)."""
    if not MAX_DIFFS:
        pytest.skip("no parity test ran before this one")
    worst = max(MAX_DIFFS.values())
    with capsys.disabled():
        for name, diff in sorted(MAX_DIFFS.items()):
            print(f"{name:40s} {diff:.3g}")  # noqa: T201 (test report)
    assert worst <= ATOL
