"""Tiny repos: exact Hub layout (diffusers' own from_pretrained loads them), deterministic, loadable by our loaders."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch

from sd2_app import loading
from sd2_app.testing.configs import unet_config
from sd2_app.testing.tiny import KINDS, ensure_tiny_repos, main, write_tiny_repo
from tests.pipeline_fixtures import PIPELINES

BASE_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
}
EXTRA_FILES = {
    "sd2-depth": {
        "depth_estimator/config.json",
        "depth_estimator/model.safetensors",
        "depth_estimator/model.fp16.safetensors",
        "feature_extractor/preprocessor_config.json",
    },
    "x4-upscaler": {"low_res_scheduler/scheduler_config.json"},
}
IN_CHANNELS = {"sd2-base": 4, "sd2": 4, "sd21": 4, "sd2-inpainting": 9, "sd2-depth": 5, "x4-upscaler": 7}
PREDICTION = {"sd2-base": "epsilon", "sd2": "v_prediction", "sd21": "v_prediction", "sd2-inpainting": "epsilon",
              "sd2-depth": "epsilon", "x4-upscaler": "v_prediction"}


def _components(kind: str) -> list[str]:
    names = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
    return names + {"sd2-depth": ["depth_estimator", "feature_extractor"], "x4-upscaler": ["low_res_scheduler"]}.get(kind, [])


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}


def _digest(folder: Path) -> dict[str, str]:
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in sorted(_files(folder))}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, float]]:
    """Every kind written once; returns the folders and the seconds each write took."""
    root = tmp_path_factory.mktemp("tiny")
    from transformers import CLIPTextModel, DPTForDepthEstimation  # noqa: F401  (import time is not write time)

    from sd2_app.nn.unet import UNet  # noqa: F401
    seconds = {}
    for kind in KINDS:
        start = time.perf_counter()
        write_tiny_repo(kind, root / kind)
        seconds[kind] = time.perf_counter() - start
    return {kind: root / kind for kind in KINDS}, seconds


@pytest.mark.parametrize("kind", KINDS)
def test_layout_and_speed(written: tuple[dict[str, Path], dict[str, float]], kind: str) -> None:
    folders, seconds = written
    assert seconds[kind] < 20.0  # ~3 s on an idle 2-core machine
    assert _files(folders[kind]) == BASE_FILES | EXTRA_FILES.get(kind, set())
    index = loading.read_model_index(folders[kind])
    assert index["_class_name"] == PIPELINES[kind]
    unet = json.loads((folders[kind] / "unet/config.json").read_text())
    real = unet_config(kind)
    for key in ("down_block_types", "up_block_types", "in_channels", "use_linear_projection"):
        assert unet[key] == real[key]
    assert unet["cross_attention_dim"] == 32 and len(unet["block_out_channels"]) == 4


def test_real_scheduler_values(written: tuple[dict[str, Path], dict[str, float]]) -> None:
    folders, _ = written
    x4 = folders["x4-upscaler"]
    assert loading.read_model_index(x4)["max_noise_level"] == 350
    low = json.loads((x4 / "low_res_scheduler/scheduler_config.json").read_text())
    assert (low["_class_name"], low["beta_start"], low["beta_end"], low["clip_sample"]) == ("DDPMScheduler", 0.0001, 0.02, True)
    high = json.loads((x4 / "scheduler/scheduler_config.json").read_text())
    assert (high["_class_name"], high["beta_start"], high["prediction_type"]) == ("DDIMScheduler", 0.0001, "v_prediction")
    base = json.loads((folders["sd2-base"] / "scheduler/scheduler_config.json").read_text())
    assert (base["_class_name"], base["beta_end"], base["steps_offset"], "prediction_type" in base) == (
        "PNDMScheduler", 0.012, 1, False)
    assert json.loads((folders["sd21"] / "unet/config.json").read_text())["upcast_attention"] is True
    assert json.loads((x4 / "vae/config.json").read_text())["scaling_factor"] == 0.08333
    assert len(json.loads((x4 / "vae/config.json").read_text())["block_out_channels"]) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_our_loaders_load_every_component(written: tuple[dict[str, Path], dict[str, float]], kind: str) -> None:
    folder = loading.resolve_repo(written[0][kind], _components(kind))
    unet = loading.load_unet(folder, "cpu", torch.float32)
    assert unet.conv_in.weight.shape[1] == IN_CHANNELS[kind]
    assert unet.config.upcast_attention == (kind == "sd21")
    assert (unet.config.num_class_embeds == 1000) == (kind == "x4-upscaler")
    vae = loading.load_vae(folder, "cpu", torch.float32)
    assert vae.config.scaling_factor == (0.08333 if kind == "x4-upscaler" else 0.18215)
    encoder = loading.load_text_encoder(folder, "cpu", torch.float32)
    tokenizer = loading.load_tokenizer(folder)
    assert tokenizer.pad_token_id == 0
    ids = tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    context = encoder(ids).last_hidden_state  # (1, 77, 32)
    assert context.shape == (1, 77, unet.config.cross_attention_dim) and torch.isfinite(context).all()
    assert loading.load_scheduler_config(folder).prediction_type == PREDICTION[kind]
    if kind == "x4-upscaler":
        low = loading.load_scheduler_config(folder, "low_res_scheduler")
        assert (low.prediction_type, low.clip_sample, low.steps_offset) == ("epsilon", True, 0)
    if kind == "sd2-depth":
        from PIL import Image

        depth, processor = loading.load_depth_estimator(folder, "cpu", torch.float32)
        pixels = processor(images=Image.new("RGB", (96, 80), (120, 30, 200)), return_tensors="pt").pixel_values
        assert pixels.shape == (1, 3, 64, 64)
        assert depth(pixels).predicted_depth.shape == (1, 64, 64)


@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_loads_each_repo_with_the_same_weights(
    written: tuple[dict[str, Path], dict[str, float]], kind: str
) -> None:
    """diffusers' own loader proves the layout is exact; equal tensors prove we read the same numbers."""
    diffusers = pytest.importorskip("diffusers")
    folder = written[0][kind]
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, variant="fp16", local_files_only=True, use_safetensors=True)
    assert type(pipe).__name__ == PIPELINES[kind]
    assert pipe.tokenizer.pad_token_id == 0
    ours = {"unet": loading.load_unet(folder, "cpu", torch.float32), "vae": loading.load_vae(folder, "cpu", torch.float32)}
    for name, module in ours.items():
        theirs = getattr(pipe, name).state_dict()
        mine = module.state_dict()
        assert set(mine) == set(theirs), name
        assert all(torch.equal(mine[k], theirs[k].float()) for k in mine), name
    encoder = loading.load_text_encoder(folder, "cpu", torch.float32)
    assert torch.equal(encoder.get_input_embeddings().weight, pipe.text_encoder.get_input_embeddings().weight.float())
    if kind == "x4-upscaler":
        assert pipe.low_res_scheduler.config.clip_sample is True
        assert pipe.vae.config.scaling_factor == 0.08333


def test_legacy_vae_kind_matches_diffusers_decode(written: tuple[dict[str, Path], dict[str, float]]) -> None:
    """sd2-base is written with the old VAE attention names; the decode must agree with diffusers."""
    diffusers = pytest.importorskip("diffusers")
    folder = written[0]["sd2-base"]
    theirs = diffusers.AutoencoderKL.from_pretrained(folder / "vae", variant="fp16", use_safetensors=True).eval()
    ours = loading.load_vae(folder, "cpu", torch.float32)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # (B, 4, h, w)
    with torch.no_grad():
        difference = (ours.decode(z) - theirs.decode(z).sample).abs().max().item()
    assert difference < 1e-4


def test_writing_is_deterministic_and_leaves_global_rng_alone(
    written: tuple[dict[str, Path], dict[str, float]], tmp_path: Path
) -> None:
    state = torch.get_rng_state()
    again = write_tiny_repo("x4-upscaler", tmp_path / "again")
    assert torch.equal(torch.get_rng_state(), state)
    assert _digest(again) == _digest(written[0]["x4-upscaler"])


def test_ensure_tiny_repos_writes_once(tmp_path: Path) -> None:
    first = ensure_tiny_repos(tmp_path, ("sd2",))
    weights = first["sd2"] / "unet/diffusion_pytorch_model.fp16.safetensors"  # the file the loader reads
    stamp = weights.stat().st_mtime_ns
    assert ensure_tiny_repos(tmp_path, ("sd2",)) == first
    assert weights.stat().st_mtime_ns == stamp  # reused
    (first["sd2"] / ".tiny-complete").unlink()  # as after an interrupted write
    weights.write_bytes(b"half written")
    ensure_tiny_repos(tmp_path, ("sd2",))
    assert loading.load_unet(first["sd2"], "cpu", torch.float32).conv_in.weight.shape == (32, 4, 3, 3)


def test_command_line_writes_the_requested_kinds(tmp_path: Path) -> None:
    main([str(tmp_path), "--kind", "sd2-inpainting"])
    assert [p.name for p in tmp_path.iterdir()] == ["sd2-inpainting"]
    assert _files(tmp_path / "sd2-inpainting") == BASE_FILES
