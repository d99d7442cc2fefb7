"""Loading: fp16 variant preference, fallback, legacy keys, strictness and the errors that name repo and file."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from sd2_app.errors import LoadError
from sd2_app import loading
from sd2_app.loading.checkpoint import build_and_load, params_on_meta
from sd2_app.loading.hub import PICKLE_REASON, allow_patterns, matches_any, repo_label, select_files
from sd2_app.testing.tiny import ensure_tiny_repos
from sd2_app.testing.tiny_transformers import tiny_vocab

UNET_FP16 = "unet/diffusion_pytorch_model.fp16.safetensors"
UNET_FP32 = "unet/diffusion_pytorch_model.safetensors"
VAE_FP16 = "vae/diffusion_pytorch_model.fp16.safetensors"
COMPONENTS = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_repos(tmp_path_factory.mktemp("tiny"), ("sd2-base",))["sd2-base"]


@pytest.fixture
def repo(tiny_base: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny sd2-base repo that a test may damage."""
    return Path(shutil.copytree(tiny_base, tmp_path / "repo"))


def _rewrite(path: Path, change: dict[str, torch.Tensor | None]) -> None:
    """Rewrite a safetensors file with some tensors replaced (None: removed)."""
    state = load_file(str(path))
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    save_file(state, str(path), metadata={"format": "pt"})


# --- variant choice -------------------------------------------------------------------------------


def test_fp16_variant_is_read_and_full_precision_file_is_not(repo: Path) -> None:
    marker = torch.full((32,), 7.0, dtype=torch.float16)  # conv_in.bias: 32 channels in the tiny UNet
    _rewrite(repo / UNET_FP16, {"conv_in.bias": marker})
    (repo / UNET_FP32).write_bytes(b"not read")  # would raise if the loader opened it
    unet = loading.load_unet(repo, "cpu", torch.float32)
    assert unet.conv_in.bias.dtype == torch.float32
    assert torch.equal(unet.conv_in.bias, torch.full((32,), 7.0))
    assert not unet.conv_in.weight.requires_grad and not unet.training


def test_full_precision_fallback_is_cast_to_target_dtype(repo: Path) -> None:
    (repo / UNET_FP16).unlink()
    unet = loading.load_unet(repo, "cpu", torch.float16)
    full = load_file(str(repo / UNET_FP32))
    assert full["conv_in.weight"].dtype == torch.float32
    assert all(p.dtype == torch.float16 for p in unet.parameters())
    assert torch.equal(unet.conv_in.weight, full["conv_in.weight"].half())
    assert torch.equal(unet.state_dict()["up_blocks.3.attentions.2.proj_out.weight"],
                       full["up_blocks.3.attentions.2.proj_out.weight"].half())


def test_text_encoder_prefers_fp16_variant_too(repo: Path) -> None:
    file = repo / "text_encoder/model.fp16.safetensors"
    key = "text_model.embeddings.token_embedding.weight"  # the Hub name (transformers 4.25 layout)
    marker = torch.full((len(tiny_vocab()), 32), -3.0, dtype=torch.float16)
    _rewrite(file, {key: marker})
    encoder = loading.load_text_encoder(repo, "cpu", torch.float32)
    assert encoder.dtype == torch.float32
    assert torch.equal(encoder.get_input_embeddings().weight, marker.float())
    file.unlink()
    encoder = loading.load_text_encoder(repo, "cpu", torch.float16)
    full = load_file(str(repo / "text_encoder/model.safetensors"))[key]
    assert full.dtype == torch.float32
    assert torch.equal(encoder.get_input_embeddings().weight, full.half())


# --- legacy names and the meta build --------------------------------------------------------------


@pytest.mark.parametrize("written", [None, 0.18215, 0.08333])
def test_x4_vae_scaling_factor_is_forced_like_diffusers(repo: Path, written: float | None) -> None:
    """Old x4 snapshots have no scaling_factor (or SD's 0.18215); the upscale pipeline means 0.08333."""
    config_path = repo / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("scaling_factor", None)
    if written is not None:
        config["scaling_factor"] = written
    config_path.write_text(json.dumps(config))
    assert loading.load_vae(repo, "cpu", torch.float32).config.scaling_factor == (written or 0.18215)
    index_path = repo / "model_index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**index, "_class_name": "StableDiffusionUpscalePipeline"}))
    assert loading.load_vae(repo, "cpu", torch.float32).config.scaling_factor == 0.08333


def test_legacy_vae_attention_names_load(repo: Path) -> None:
    with safe_open(str(repo / VAE_FP16), "pt") as f:
        keys = set(f.keys())
        legacy_query = f.get_tensor("decoder.mid_block.attentions.0.query.weight")
    assert "encoder.mid_block.attentions.0.proj_attn.bias" in keys  # the tiny sd2-base VAE is written legacy
    assert not any(".to_q." in k for k in keys)
    vae = loading.load_vae(repo, "cpu", torch.float32)
    assert torch.equal(vae.decoder.mid_block.attentions[0].to_q.weight, legacy_query.float())


def test_legacy_vae_1x1_conv_weights_are_squeezed(repo: Path) -> None:
    """The LDM layout stores those projections as [C, C, 1, 1] convolutions."""
    state = load_file(str(repo / VAE_FP16))
    key = "encoder.mid_block.attentions.0.value.weight"
    state[key] = state[key][:, :, None, None].contiguous()
    save_file(state, str(repo / VAE_FP16), metadata={"format": "pt"})
    vae = loading.load_vae(repo, "cpu", torch.float32)
    assert torch.equal(vae.encoder.mid_block.attentions[0].to_v.weight, state[key][:, :, 0, 0].float())


class _WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("table", torch.arange(4.0) * 2, persistent=False)  # computed, not in checkpoints
        self.register_buffer("stored", torch.zeros(2))


def test_meta_build_keeps_non_persistent_buffers(tmp_path: Path) -> None:
    values = {"linear.weight": torch.ones(2, 3), "linear.bias": torch.tensor([1.0, 2.0]), "stored": torch.tensor([5.0, 6.0])}
    save_file(values, str(tmp_path / "m.safetensors"))
    module = build_and_load(_WithBuffers, tmp_path / "m.safetensors", "cpu", torch.float64, repo="r", file="m.safetensors")
    assert torch.equal(module.table, torch.tensor([0.0, 2.0, 4.0, 6.0], dtype=torch.float64))
    assert torch.equal(module.stored, torch.tensor([5.0, 6.0], dtype=torch.float64))
    assert module.linear.weight.dtype == torch.float64 and not module.linear.weight.is_meta


def test_params_on_meta_skips_allocation_and_restores_nn_module() -> None:
    original = nn.Module.register_parameter
    with params_on_meta():
        big = nn.Linear(4096, 4096)
    assert big.weight.is_meta and big.bias.is_meta
    assert nn.Module.register_parameter is original
    assert not nn.Linear(2, 2).weight.is_meta


def test_params_on_meta_leaves_other_threads_modules_real() -> None:
    built: list[nn.Linear] = []
    with params_on_meta():
        worker = threading.Thread(target=lambda: built.append(nn.Linear(3, 3)))
        worker.start()
        worker.join()
        mine = nn.Linear(3, 3)
    assert mine.weight.is_meta
    assert not built[0].weight.is_meta and not built[0].bias.is_meta


def test_concurrent_builds_each_restore_nn_module() -> None:
    """Two threads building at once (two managers, or a request thread): the second waits for
    the first, and nn.Module ends as it was (reading the method to restore before taking the lock left the
    first build's patch installed for good)."""
    original = nn.Module.register_parameter
    inside, release = threading.Event(), threading.Event()
    built: dict[str, nn.Linear] = {}

    def first() -> None:
        with params_on_meta():
            inside.set()
            release.wait(5)
            built["first"] = nn.Linear(3, 3)

    def second() -> None:
        inside.wait(5)
        with params_on_meta():
            built["second"] = nn.Linear(3, 3)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)  # the second is now waiting for the lock
    release.set()
    for thread in threads:
        thread.join()
    assert built["first"].weight.is_meta and built["second"].weight.is_meta
    assert nn.Module.register_parameter is original
    assert not nn.Linear(2, 2).weight.is_meta


# --- errors name the repo, the file and the reason ------------------------------------------------


def test_pickle_only_component_is_refused(repo: Path) -> None:
    for name in ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"):
        (repo / "unet" / name).unlink()
    (repo / "unet/diffusion_pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    for call in (lambda: loading.load_unet(repo, "cpu", torch.float32), lambda: loading.resolve_repo(repo, COMPONENTS)):
        with pytest.raises(LoadError) as info:
            call()
        assert info.value.file == "unet/diffusion_pytorch_model.bin"
        assert info.value.reason == PICKLE_REASON
        assert str(repo) in str(info.value)


def test_missing_files_are_named(repo: Path) -> None:
    (repo / "unet/config.json").unlink()
    with pytest.raises(LoadError, match=r"unet/config\.json: not found") as info:
        loading.load_unet(repo, "cpu", torch.float32)
    assert info.value.repo == str(repo)
    with pytest.raises(LoadError, match=r"unet/config\.json: not found"):
        loading.resolve_repo(repo, COMPONENTS)
    (repo / "tokenizer/merges.txt").unlink()
    with pytest.raises(LoadError, match=r"tokenizer/merges\.txt: not found"):
        loading.resolve_repo(repo, ["tokenizer"])
    with pytest.raises(LoadError, match="not a folder"):
        loading.resolve_repo(repo / "nowhere", COMPONENTS)


@pytest.mark.parametrize("keep", [0, 7, 0.5])
def test_truncated_or_corrupt_safetensors(repo: Path, keep: float) -> None:
    path = repo / UNET_FP16
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    with pytest.raises(LoadError, match="corrupt or truncated") as info:
        loading.load_unet(repo, "cpu", torch.float32)
    assert info.value.file == UNET_FP16 and info.value.repo == str(repo)


def test_truncated_text_encoder_is_named(repo: Path) -> None:
    path = repo / "text_encoder/model.fp16.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LoadError, match=r"text_encoder/model\.fp16\.safetensors: corrupt or truncated"):
        loading.load_text_encoder(repo, "cpu", torch.float32)


def test_shape_mismatch_names_key_and_both_shapes(repo: Path) -> None:
    _rewrite(repo / UNET_FP16, {"conv_in.weight": torch.zeros(32, 5, 3, 3, dtype=torch.float16)})
    with pytest.raises(LoadError) as info:
        loading.load_unet(repo, "cpu", torch.float32)
    assert info.value.reason == "shape mismatch for conv_in.weight: checkpoint (32, 5, 3, 3), model (32, 4, 3, 3)"
    assert info.value.file == UNET_FP16


def test_missing_and_unexpected_keys_are_refused(repo: Path) -> None:
    _rewrite(repo / UNET_FP16, {"conv_out.bias": None})
    with pytest.raises(LoadError, match="missing keys: conv_out.bias"):
        loading.load_unet(repo, "cpu", torch.float32)
    _rewrite(repo / UNET_FP16, {"conv_out.bias": torch.zeros(4, dtype=torch.float16), "extra.weight": torch.zeros(1)})
    with pytest.raises(LoadError, match="unexpected keys: extra.weight"):
        loading.load_unet(repo, "cpu", torch.float32)


def test_text_encoder_keys_are_strict_too(repo: Path) -> None:
    file = repo / "text_encoder/model.fp16.safetensors"
    original = load_file(str(file))
    _rewrite(file, {"text_model.final_layer_norm.weight": torch.ones(31, dtype=torch.float16)})
    with pytest.raises(LoadError) as info:
        loading.load_text_encoder(repo, "cpu", torch.float32)
    assert info.value.file == "text_encoder/model.fp16.safetensors"
    assert info.value.reason.startswith("shape mismatch for ")
    assert info.value.reason.endswith("final_layer_norm.weight: checkpoint (31,), model (32,)")
    _rewrite(file, {"text_model.final_layer_norm.weight": None})
    with pytest.raises(LoadError, match="missing keys: .*final_layer_norm.weight"):
        loading.load_text_encoder(repo, "cpu", torch.float32)
    _rewrite(file, {"text_model.final_layer_norm.weight": original["text_model.final_layer_norm.weight"],
                    "text_model.extra.weight": torch.zeros(3)})
    with pytest.raises(LoadError, match="unexpected keys: .*extra.weight"):
        loading.load_text_encoder(repo, "cpu", torch.float32)


def test_bad_config_is_named(repo: Path) -> None:
    (repo / "unet/config.json").write_text("{not json")
    with pytest.raises(LoadError, match=r"unet/config\.json: not valid JSON"):
        loading.load_unet(repo, "cpu", torch.float32)


# --- tokenizer, scheduler, model index ------------------------------------------------------------


def test_tokenizer_pads_with_id_zero(repo: Path) -> None:
    tokenizer = loading.load_tokenizer(repo)
    vocab = tiny_vocab()
    bos, eos = vocab.index("<|startoftext|>"), vocab.index("<|endoftext|>")
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == ("!", 0, bos, eos)
    ids = tokenizer("", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids == [bos, eos] + [0] * 75
    ids = tokenizer("the cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[:4] == [bos, vocab.index("the</w>"), vocab.index("cat</w>"), eos] and ids[4:] == [0] * 73


def test_tokenizer_with_eos_padding_is_refused(repo: Path) -> None:
    path = repo / "tokenizer/special_tokens_map.json"
    path.write_text(path.read_text().replace('"pad_token": "!"', '"pad_token": "<|endoftext|>"'))
    with pytest.raises(LoadError, match="pad token id is"):
        loading.load_tokenizer(repo)


def test_scheduler_config_and_model_index(repo: Path) -> None:
    config = loading.load_scheduler_config(repo)
    assert (config.beta_start, config.beta_end, config.steps_offset, config.prediction_type) == (0.00085, 0.012, 1, "epsilon")
    assert loading.read_model_index(repo)["_class_name"] == "StableDiffusionPipeline"


# --- Hub resolution ---------------------------------------------------------------------------------

# The `main` tree of stabilityai/stable-diffusion-2 as listed on the Hub.
SD2_LISTING = [
    ".gitattributes", "README.md", "model_index.json", "768-v-ema.ckpt", "768-v-ema.safetensors",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin", "text_encoder/pytorch_model.fp16.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin",
    "unet/.ipynb_checkpoints/config-checkpoint.json",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.fp16.bin",
]


def test_allow_patterns_never_match_root_checkpoints() -> None:
    components = [*COMPONENTS, "low_res_scheduler", "depth_estimator", "feature_extractor"]
    patterns = allow_patterns(components)
    roots = ["768-v-ema.ckpt", "768-v-ema.safetensors", "512-depth-ema.safetensors", "x4-upscaler-ema.ckpt"]
    assert not [r for r in roots if matches_any(r, patterns)]
    assert not [f for f in SD2_LISTING if f.endswith(".bin") and matches_any(f, patterns)]
    assert matches_any("unet/diffusion_pytorch_model.fp16.safetensors", patterns)


def test_select_files_takes_fp16_variant_and_config_files_only() -> None:
    chosen = select_files(SD2_LISTING, COMPONENTS, "stabilityai/stable-diffusion-2")
    assert chosen == [
        "model_index.json",
        "unet/config.json", UNET_FP16,
        "vae/config.json", VAE_FP16,
        "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "scheduler/scheduler_config.json",
    ]


def test_select_files_falls_back_and_refuses_pickles() -> None:
    no_fp16 = [f for f in SD2_LISTING if ".fp16." not in f]
    assert UNET_FP32 in select_files(no_fp16, ["unet"], "r")
    pickles_only = [f for f in SD2_LISTING if not f.startswith("unet/diffusion_pytorch_model") or f.endswith(".bin")]
    with pytest.raises(LoadError, match="pickle checkpoints are not loaded") as info:
        select_files(pickles_only, ["unet"], "stabilityai/stable-diffusion-2")
    assert info.value.repo == "stabilityai/stable-diffusion-2"
    with pytest.raises(LoadError, match=r"depth_estimator/config\.json: not found"):
        select_files(SD2_LISTING, ["depth_estimator"], "r")


def test_offline_without_cache_says_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoadError, match="offline") as info:
        loading.resolve_repo("stabilityai/stable-diffusion-2-base", COMPONENTS, cache_dir=tmp_path)
    assert info.value.repo == "stabilityai/stable-diffusion-2-base"


class _FakeHub:
    """Stands in for huggingface_hub.snapshot_download: a dry run lists SD2_LISTING, a real run 'downloads'."""

    def __init__(self, snapshot: Path) -> None:
        self.snapshot = snapshot
        self.calls: list[dict[str, object]] = []

    def __call__(self, repo_id: str, **kwargs: object) -> object:
        from huggingface_hub.file_download import DryRunFileInfo

        self.calls.append(kwargs)
        patterns = kwargs["allow_patterns"]
        files = [f for f in SD2_LISTING if matches_any(f, patterns)]
        if kwargs.get("dry_run"):
            return [DryRunFileInfo("abc", 10, f, "", False, True) for f in files]
        bar_class = kwargs.get("tqdm_class")
        bytes_bar = None if bar_class is None else bar_class(total=0, unit="B", desc="Reconstructing", disable=True)
        transfer_bar = None if bar_class is None else bar_class(total=0, unit="B", desc="Downloading bytes",
                                                                disable=True)
        for f in files:
            (self.snapshot / f).parent.mkdir(parents=True, exist_ok=True)
            (self.snapshot / f).write_text("x")
            if bytes_bar is not None:
                bytes_bar.update(2**29)  # half a GiB "written" per file
                transfer_bar.update(2**29)  # the network-side bar must not be counted again
        if bytes_bar is not None:
            bytes_bar.close()
            transfer_bar.close()
        return str(self.snapshot)


def test_online_resolution_downloads_exactly_the_chosen_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    import huggingface_hub.constants  # a lazy submodule: import it before patching it

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    snapshot = tmp_path / "models--stabilityai--stable-diffusion-2" / "snapshots" / "abc"
    fake = _FakeHub(snapshot)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    messages: list[str] = []
    folder = loading.resolve_repo("stabilityai/stable-diffusion-2", COMPONENTS, revision="main", on_progress=messages.append)
    assert folder == snapshot
    assert [c.get("dry_run", False) for c in fake.calls] == [True, False]
    assert fake.calls[1]["allow_patterns"] == select_files(SD2_LISTING, COMPONENTS, "r")
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == sorted(
        select_files(SD2_LISTING, COMPONENTS, "r")
    )
    assert messages[0] == "stabilityai/stable-diffusion-2: fetching 12 files (0.00 GiB to download)"
    # Byte progress from huggingface_hub's bars: throttled, written bytes only, and a final count at the end.
    assert messages[-1] == "stabilityai/stable-diffusion-2: downloaded 6.00 of 0.00 GiB"
    assert 2 <= len(messages) <= 3 and all("downloaded" in m for m in messages[1:])
    assert repo_label(snapshot) == "stabilityai/stable-diffusion-2"


def test_hub_errors_name_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    import huggingface_hub.constants  # a lazy submodule: import it before patching it
    from huggingface_hub.errors import RepositoryNotFoundError

    httpx = pytest.importorskip("httpx2")  # huggingface_hub's HTTP client
    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/someone/nothing"))

    def missing(repo_id: str, **kwargs: object) -> object:
        raise RepositoryNotFoundError("404", response=response)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
    with pytest.raises(LoadError, match=r"^someone/nothing@v1: repo not found"):
        loading.resolve_repo("someone/nothing", COMPONENTS, revision="v1")
