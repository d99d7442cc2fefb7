"""Single-file (LDM / A1111) SD2 checkpoints: our key names read a file exactly as diffusers' own single-file loader
does, the conversion keeps every weight bit for bit and skips what SD2 does not use, the right configs are
borrowed (the yaml beside the file, or A1111's v test), a conversion is done once per version of the file, and a
file that is not a whole SD 2.x checkpoint is refused with its reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sd2_app.checkpoints.catalog import tiny_registry
from sd2_app.checkpoints.files import CheckpointFiles
from sd2_app.errors import LoadError
from sd2_app.loading import ldm_names, single_file
from sd2_app.loading.checkpoint import LEGACY_VAE_RENAMES, rename_keys
from sd2_app.loading.single_file import convert_networks, predicts_v, prepare
from sd2_app.testing.ldm_file import ldm_state, write_ldm_file
from sd2_app.testing.tiny import ensure_tiny_repos
from tests.pipeline_fixtures import tiny_dir

WEIGHTS = {"unet": "unet/diffusion_pytorch_model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors",
           "text_encoder": "text_encoder/model.safetensors"}


@pytest.fixture(scope="module")
def repos() -> dict[str, Path]:
    return ensure_tiny_repos(tiny_dir())


def _repo_weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    state = rename_keys(load_file(str(folder / WEIGHTS[component])), LEGACY_VAE_RENAMES)
    state.pop("text_model.embeddings.position_ids", None)
    return state


def _configs_of(repos: dict[str, Path]):
    registry = tiny_registry(repos)
    return lambda key: Path(registry[key].repos[0])


@pytest.mark.parametrize("kind", ["sd2-base", "sd21", "sd2-inpainting"])
def test_our_names_read_a_file_as_diffusers_single_file_loader_does(repos, kind: str, tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    pipeline_class = diffusers.StableDiffusionInpaintPipeline if kind == "sd2-inpainting" \
        else diffusers.StableDiffusionPipeline
    # diffusers skips only layer 23 of the text tower (the real one's last): the tiny file has no extra layer here
    path = write_ldm_file(repos[kind], tmp_path / "model.safetensors", extra_text_layer=False)
    pipe = pipeline_class.from_single_file(str(path), config=str(repos[kind]), local_files_only=True,
                                           safety_checker=None)
    ours = convert_networks(path, repos[kind])
    for component in ("unet", "vae", "text_encoder"):
        theirs = getattr(pipe, component).state_dict()
        if component == "text_encoder":  # transformers 5 holds the tower without the Hub files' prefix
            theirs = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in theirs.items()
                      if not k.endswith("position_ids")}
        assert sorted(ours[component]) == sorted(theirs), component
        assert len(theirs) == {"unet": 684, "vae": 244, "text_encoder": 36}[component]
        for key, value in ours[component].items():
            assert torch.equal(value, theirs[key]), f"{component}: {key}"


def test_the_conversion_keeps_each_weight_bit_for_bit_and_skips_what_sd2_does_not_use(repos, tmp_path: Path) -> None:
    path = write_ldm_file(repos["sd2-base"], tmp_path / "model.safetensors", dtype=torch.float16)
    skipped = {"cond_stage_model.model.transformer.resblocks.2.ln_1.weight", "cond_stage_model.model.text_projection",
               "cond_stage_model.model.logit_scale", "alphas_cumprod", "model_ema.decay"}
    assert skipped <= set(load_file(str(path)))  # what a real file holds besides the three networks
    converted = convert_networks(path, repos["sd2-base"])
    for component in WEIGHTS:
        expected = _repo_weights(repos["sd2-base"], component)
        assert sorted(converted[component]) == sorted(expected)
        for key, value in converted[component].items():
            assert value.dtype == torch.float16, key  # the file's own dtype
            assert torch.equal(value, expected[key].half()), f"{component}: {key}"
    attention = converted["vae"]["decoder.mid_block.attentions.0.to_q.weight"]
    assert attention.shape == (64, 64)  # ldm's 1x1 convolution, a Linear in the Hub layout


def test_a_missing_or_misshapen_tensor_is_named(repos, tmp_path: Path) -> None:
    state = ldm_state(repos["sd2-base"])
    missing = "first_stage_model.decoder.up.0.block.1.conv2.weight"
    save_file({k: v.contiguous() for k, v in state.items() if k != missing}, str(tmp_path / "a.safetensors"))
    with pytest.raises(LoadError) as error:
        convert_networks(tmp_path / "a.safetensors", repos["sd2-base"])
    assert str(error.value) == f"a.safetensors: {missing}: not found (is this an SD 2.x checkpoint?)"
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    state[key] = torch.zeros(32, 48)  # a context width the SD 2.x text encoder does not have
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "b.safetensors"))
    with pytest.raises(LoadError) as error:
        convert_networks(tmp_path / "b.safetensors", repos["sd2-base"])
    assert str(error.value) == (f"b.safetensors: {key}: shape (32, 48), expected (32, 32) for an SD 2.x checkpoint "
                                "of this kind")
    state = ldm_state(repos["sd2-base"])
    state.update({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4),  # e.g. an unCLIP UNet's
                  "model.diffusion_model.label_emb.0.2.weight": torch.zeros(4, 4),
                  "first_stage_model.loss.logvar": torch.zeros(())})  # ldm's training-only VAE loss: skipped
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "c.safetensors"))
    with pytest.raises(LoadError) as error:
        convert_networks(tmp_path / "c.safetensors", repos["sd2-base"])
    assert str(error.value) == ("c.safetensors: model.diffusion_model.label_emb.0.0.weight: not part of an SD 2.x UNet "
                                "or VAE (2 such tensors)")


class _Constant(torch.nn.Module):
    """A UNet stand-in whose output is its input plus `shift`."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift
        self.calls: list[tuple[tuple[int, ...], float, tuple[int, ...]]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(x.shape), float(t), tuple(context.shape)))
        return x + self.shift


def test_a1111s_v_test_reads_the_output_at_t999() -> None:
    v_like, eps_like, edge = _Constant(-1.5), _Constant(0.3), _Constant(-1.0)
    assert predicts_v(v_like, 1024) and not predicts_v(eps_like, 1024) and not predicts_v(edge, 1024)
    assert v_like.calls == [((1, 4, 8, 8), 999.0, (1, 2, 1024))]


def _scheduler(folder: Path) -> dict:
    return json.loads((folder / "scheduler" / "scheduler_config.json").read_text())


def test_the_yaml_beside_the_file_or_a1111s_test_picks_the_configs(repos, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    configs_of, cache = _configs_of(repos), tmp_path / "cache"
    asked: list[bool] = []
    monkeypatch.setattr(single_file, "predicts_v", lambda unet, width: asked.append(width == 32) or True)
    v_file = write_ldm_file(repos["sd21"], tmp_path / "files" / "vmodel.safetensors")
    folder = prepare(v_file, configs_of, cache)  # no yaml: A1111's test (here: says v)
    assert asked == [True] and _scheduler(folder)["prediction_type"] == "v_prediction"
    assert json.loads((folder / "unet" / "config.json").read_text()) == \
        json.loads((repos["sd21"] / "unet" / "config.json").read_text())
    eps_file = write_ldm_file(repos["sd2-base"], tmp_path / "files" / "base.safetensors")
    (tmp_path / "files" / "base.yaml").write_text('model:\n  params:\n    parameterization: "eps"\n')
    folder = prepare(eps_file, configs_of, cache)
    assert asked == [True] and _scheduler(folder) == _scheduler(repos["sd2-base"])  # the yaml decided
    inpaint = write_ldm_file(repos["sd2-inpainting"], tmp_path / "files" / "fill.safetensors")
    folder = prepare(inpaint, configs_of, cache)
    assert asked == [True] and json.loads((folder / "model_index.json").read_text())["_class_name"] == \
        "StableDiffusionInpaintPipeline"
    assert (folder / ".converted").read_text() == f"{inpaint}\n"  # the file it holds
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"source": "fill.safetensors"}
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        ".converted", "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]


def test_a_file_is_converted_once_per_version(repos, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs_of, cache = _configs_of(repos), tmp_path / "cache"
    path = write_ldm_file(repos["sd2-base"], tmp_path / "base.safetensors")
    (tmp_path / "base.yaml").write_text("parameterization: eps\n")
    first = prepare(path, configs_of, cache)
    conversions: list[Path] = []
    convert = single_file.convert_networks
    monkeypatch.setattr(single_file, "convert_networks", lambda p, c: conversions.append(p) or convert(p, c))
    assert prepare(path, configs_of, cache) == first and conversions == []  # kept from the first time
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the file was replaced
    second = prepare(path, configs_of, cache)
    assert second != first and conversions == [path]
    assert sorted(p.name for p in (cache / "single-file").iterdir()) == [second.name]  # the old one is gone
    (tmp_path / "base.yaml").write_text("parameterization: v\n")  # a new yaml is a new conversion too
    assert _scheduler(prepare(path, configs_of, cache))["prediction_type"] == "v_prediction"


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(path))


def test_files_that_are_not_whole_sd2_checkpoints_are_refused_with_the_reason(repos, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    write_ldm_file(repos["sd2-base"], folder / "good.safetensors")
    (folder / "good.yaml").write_text('    parameterization: "v"\n')
    write_ldm_file(repos["sd2-inpainting"], folder / "fill.safetensors")
    write_ldm_file(repos["sd2-base"], folder / "SD21.safetensors")
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    unet = {conv_in: torch.zeros(8, 5, 3, 3)}
    parts = {"first_stage_model.quant_conv.bias": torch.zeros(8),
             "cond_stage_model.model.ln_final.bias": torch.zeros(8)}
    _write(folder / "depth.safetensors", {**unet, **parts})
    _write(folder / "x4.safetensors", {conv_in: torch.zeros(8, 7, 3, 3), **parts})
    _write(folder / "odd.safetensors", {conv_in: torch.zeros(8, 6, 3, 3), **parts})
    _write(folder / "sd15.safetensors", {**unet, "cond_stage_model.transformer.text_model.x": torch.zeros(1)})
    _write(folder / "sdxl.safetensors", {**unet, "conditioner.embedders.0.x": torch.zeros(1)})
    _write(folder / "unclip.safetensors", {**unet, **parts,
                                           "model.diffusion_model.label_emb.0.0.weight": torch.zeros(1)})
    _write(folder / "unet-only.safetensors", unet)
    (folder / "old.ckpt").write_bytes(b"\x80\x02")
    (folder / "broken.safetensors").write_bytes(b"\x05")
    (folder / "notes.txt").write_text("ignored")
    files = CheckpointFiles.scan(folder, tiny_registry(repos))
    found = {key: (spec.label, spec.tasks, spec.resolution, spec.original_file) for key, spec in files.specs.items()}
    assert found == {
        "fill": ("fill.safetensors", ("inpaint", "outpaint"), 512, "fill"),
        "good": ("good.safetensors", ("txt2img", "img2img"), 768, "good"),  # its yaml says v: 768
    }
    assert files.specs["good"].repos == (str((folder / "good.safetensors").resolve()),)
    assert files.refused == {
        "SD21.safetensors": "SD21.safetensors: 'SD21' is a built-in checkpoint's name; rename it",
        "broken.safetensors": "broken.safetensors: not a safetensors file (too short)",
        "depth.safetensors": "depth.safetensors: a depth-to-image model: its depth estimator is not in the file, use "
                             "the sd2-depth checkpoint",
        "odd.safetensors": "odd.safetensors: a UNet with 6 input channels; SD 2.x has 4 (or 9 to inpaint)",
        "old.ckpt": "old.ckpt: pickle checkpoints are not loaded; safetensors only",
        "sd15.safetensors": "sd15.safetensors: an SD 1.x checkpoint (CLIP ViT-L text encoder); this app runs SD 2.x",
        "sdxl.safetensors": "sdxl.safetensors: an SDXL checkpoint; this app runs SD 2.x",
        "unclip.safetensors": "unclip.safetensors: a UNet with a class embedding (SD 2.1 unCLIP?): not supported",
        "unet-only.safetensors": "unet-only.safetensors: no VAE (first_stage_model.*): not a whole SD 2.x checkpoint",
        "x4.safetensors": "x4.safetensors: an x4 upscaler: use the x4-upscaler checkpoint",
    }
    assert CheckpointFiles.scan(tmp_path / "absent", tiny_registry(repos)).specs == {}


def test_the_full_size_names_are_stabilitys() -> None:
    """Keys of Stability's v2-1_768-ema-pruned.safetensors (the layout of the Stability-AI/stablediffusion repository's
    openaimodel.UNetModel and autoencoder), where diffusers' loader finds blocks by position and would not notice."""
    from sd2_app.loading import ldm_names
    from sd2_app.testing.configs import unet_config, vae_config

    prefixes = ldm_names.unet_block_prefixes(unet_config("sd2"))
    levels = len(vae_config("sd2")["block_out_channels"])
    assert [ldm_names.unet_name(key, prefixes)[0] for key in (
        "up_blocks.0.upsamplers.0.conv.weight", "up_blocks.1.upsamplers.0.conv.weight",
        "down_blocks.2.downsamplers.0.conv.bias", "down_blocks.3.resnets.1.conv2.weight",
        "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight", "mid_block.resnets.1.time_emb_proj.bias",
    )] == ["model.diffusion_model." + key for key in (
        "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight", "input_blocks.9.0.op.bias",
        "input_blocks.11.0.out_layers.3.weight", "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
        "middle_block.2.emb_layers.1.bias")]
    assert [ldm_names.vae_name(key, levels)[0] for key in (
        "decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.up_blocks.3.resnets.0.conv_shortcut.bias",
        "encoder.mid_block.attentions.0.to_out.0.weight", "decoder.conv_norm_out.bias")] == [
        "first_stage_model." + key for key in (
            "decoder.up.3.upsample.conv.weight", "decoder.up.0.block.0.nin_shortcut.bias",
            "encoder.mid.attn_1.proj_out.weight", "decoder.norm_out.bias")]
    assert ldm_names.text_name("text_model.encoder.layers.22.self_attn.v_proj.bias") == (
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_bias", 2)


_KEYS = [ldm_names.IN_CHANNELS_KEY, "model.diffusion_model.label_emb.0.0.weight", "first_stage_model.quant_conv.bias",
         "cond_stage_model.model.ln_final.bias", "cond_stage_model.transformer.x", "conditioner.embedders.0.x",
         "__metadata__", "other"]
_SCALAR = st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False) | st.text(max_size=4)
_JSON = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=5)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
_ENTRY = st.fixed_dictionaries({"shape": _JSON | st.lists(_JSON, min_size=4, max_size=4)}) | _JSON
# A whole checkpoint's parts, its UNet's first convolution of any shape: the scan's deepest path.
_WHOLE = st.builds(lambda entry, extra: {"first_stage_model.quant_conv.bias": {},
                                          "cond_stage_model.model.ln_final.bias": {},
                                          ldm_names.IN_CHANNELS_KEY: entry, **extra},
                   _ENTRY, st.dictionaries(st.sampled_from(_KEYS), _ENTRY, max_size=3))


@settings(max_examples=200, deadline=None)
@given(headers=st.lists(_WHOLE | st.dictionaries(st.sampled_from(_KEYS), _ENTRY, max_size=8) | _JSON,
                        min_size=1, max_size=4))
def test_no_header_stops_the_scan(headers: list) -> None:
    """Whatever a file's header holds, the start-up scan lists it or refuses it with a reason, and goes on."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for i, header in enumerate(headers):
            text = json.dumps(header).encode()
            (Path(folder) / f"f{i}.safetensors").write_bytes(len(text).to_bytes(8, "little") + text)
        files = CheckpointFiles.scan(folder, {})
        assert sorted([*files.specs, *(name.removesuffix(".safetensors") for name in files.refused)]) == \
            [f"f{i}" for i in range(len(headers))]
        assert all(reason for reason in files.refused.values())
