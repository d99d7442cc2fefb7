"""LyCORIS LoHa and LoKr layers (sd2_app/pipelines/lora.py, `LayerChange`): each change against PEFT's own
construction of it (peft/tuners/loha/layer.py `make_weight`, peft/tuners/lokr/layer.py `make_kron`, both
following LyCORIS), the scale by A1111's rule, and whole jobs: a LoHa or LoKr that encodes a LoRA's changes
gives that LoRA's image bit for bit (the LoRA's is diffusers' to float rounding: tests/pipelines/test_lora_parity.py),
and a random one moves the image and leaves the weights as they were."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tests.pipeline_fixtures import ComponentCache

from sd2_app.api.lora_tools import LoraTools
from sd2_app.api.requests import Sampling, Txt2ImgRequest
from sd2_app.errors import InvalidRequest
from sd2_app.loading.loras import LoraLibrary
from sd2_app.pipelines.lora import LayerChange, lora_targets, lora_weights, plan_changes
from sd2_app.pipelines.txt2img import txt2img
from sd2_app.testing.tiny_lora import as_loha, as_lokr, random_lora, write_lora

peft_loha = pytest.importorskip("peft.tuners.loha.layer")
peft_lokr = pytest.importorskip("peft.tuners.lokr.layer")

LAYER = "lora_unet_conv_in"


def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("weight_shape", [(8, 6), (8, 4, 3, 3)])
def test_a_lohas_change_is_pefts(weight_shape: tuple[int, ...]) -> None:
    out, inputs = weight_shape[0], int(torch.tensor(weight_shape[1:]).prod())
    w1a, w1b, w2a, w2b = _random(out, 3, seed=1), _random(3, inputs, seed=2), _random(out, 2, seed=3), \
        _random(2, inputs, seed=4)
    ours = LayerChange("loha", (w1a, w1b, w2a, w2b)).matrix(torch.device("cpu")).reshape(weight_shape)
    theirs = peft_loha.make_weight(w1a, w1b, w2a, w2b, scale=torch.tensor(1.0)).reshape(weight_shape)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize(("w1", "w2"), [((2, 3), (4, 2)), ((2, 2), (4, 2, 3, 3))])
def test_a_lokrs_change_is_pefts(w1: tuple[int, ...], w2: tuple[int, ...]) -> None:
    first, second = _random(*w1, seed=5), _random(*w2, seed=6)
    weight_shape = (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])
    ours = LayerChange("lokr", (first, second)).matrix(torch.device("cpu")).reshape(weight_shape)
    theirs = peft_lokr.make_kron(first, second, 1.0).reshape(weight_shape)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_the_scale_is_alpha_over_rank_and_one_without_either() -> None:
    """A1111's `calc_scale`: alpha / rank; 1 without an alpha; a LoKr's rank is a halved factor's, and with both
    factors whole it has none (scale 1 whatever its alpha)."""
    loha = {f"{LAYER}.hada_w1_a": _random(8, 4, seed=1), f"{LAYER}.hada_w1_b": _random(4, 36, seed=2),
            f"{LAYER}.hada_w2_a": _random(8, 4, seed=3), f"{LAYER}.hada_w2_b": _random(4, 36, seed=4)}
    halves = {f"{LAYER}.lokr_w1": _random(2, 2, seed=5), f"{LAYER}.lokr_w2_a": _random(4, 5, seed=6),
              f"{LAYER}.lokr_w2_b": _random(5, 18, seed=7)}
    whole = {f"{LAYER}.lokr_w1": _random(2, 2, seed=5), f"{LAYER}.lokr_w2": _random(4, 2, 3, 3, seed=8)}
    alpha = {f"{LAYER}.alpha": torch.tensor(2.0)}
    scales = [lora_weights("x", tensors).layers[LAYER][1]
              for tensors in (loha, {**loha, **alpha}, halves, {**halves, **alpha}, {**whole, **alpha})]
    assert scales == [1.0, 0.5, 1.0, 0.4, 1.0]
    kept = lora_weights("x", {**halves, **alpha}).layers[LAYER][0]
    torch.testing.assert_close(kept.factors[1], halves[f"{LAYER}.lokr_w2_a"] @ halves[f"{LAYER}.lokr_w2_b"])


def test_a_lycoris_layer_for_another_shape_or_of_parts_that_do_not_go_together_is_refused_by_name() -> None:
    targets = {LAYER: torch.nn.Parameter(torch.zeros(8, 4, 3, 3))}
    wrong = lora_weights("wide", {f"{LAYER}.lokr_w1": torch.ones(2, 2), f"{LAYER}.lokr_w2": torch.ones(4, 5)})
    with pytest.raises(InvalidRequest, match=r"^The LoRA 'wide' does not fit this checkpoint: its layer "
                                             r"lora_unet_conv_in is \(8, 10\), the model's \(8, 4, 3, 3\) "):
        plan_changes(targets, [(wrong, 1.0, 1.0)])
    odd = lora_weights("odd", {f"{LAYER}.hada_w1_a": torch.ones(8, 4), f"{LAYER}.hada_w1_b": torch.ones(3, 36),
                               f"{LAYER}.hada_w2_a": torch.ones(8, 4), f"{LAYER}.hada_w2_b": torch.ones(4, 36)})
    with pytest.raises(InvalidRequest, match=r"^The LoRA 'odd' cannot be used: its layer lora_unet_conv_in's tensors "
                                             r"do not go together \(\(8, 4\), \(3, 36\), \(8, 4\), \(4, 36\)\)\.$"):
        plan_changes(targets, [(odd, 1.0, 1.0)])
    flat = lora_weights("flat", {f"{LAYER}.lora_down.weight": torch.ones(4), f"{LAYER}.lora_up.weight": torch.ones(8)})
    with pytest.raises(InvalidRequest, match=r"^The LoRA 'flat' cannot be used: its layer lora_unet_conv_in's "):
        plan_changes(targets, [(flat, 1.0, 1.0)])
    with pytest.raises(InvalidRequest, match=r"^The LoRA 'halves' cannot be used: its layer lora_unet_conv_in's w2 "
                                             r"halves do not multiply \(\(4, 3\) and \(5, 18\)\)\.$"):
        lora_weights("halves", {f"{LAYER}.lokr_w1": torch.ones(2, 2), f"{LAYER}.lokr_w2_a": torch.ones(4, 3),
                                f"{LAYER}.lokr_w2_b": torch.ones(5, 18)})


@pytest.fixture(scope="module")
def lycoris_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same LoRA three ways (plain, as a LoHa, as a LoKr), and a random LoHa, for the tiny SD 2 base."""
    from tests.pipeline_fixtures import load_components

    components = load_components("sd2-base")
    folder = tmp_path_factory.mktemp("lycoris")
    lora = random_lora(components, seed=3, dtype=torch.float32)
    write_lora(folder / "plain.safetensors", lora)
    write_lora(folder / "hada.safetensors", as_loha(lora))
    write_lora(folder / "kron.safetensors", as_lokr(lora))
    other = as_loha(random_lora(components, seed=4, dtype=torch.float32))
    for key in [key for key in other if key.endswith(".hada_w2_a")]:
        other[key] = 1.0 + 0.5 * _random(*other[key].shape, seed=len(key))  # a second factor that is no product of ones
    write_lora(folder / "random-hada.safetensors", other)
    return folder


def _image(components, tools: LoraTools, tag: str) -> torch.Tensor:
    sampling = Sampling(sampler="Euler a", steps=3, cfg_scale=7.0, seed=11)
    request = Txt2ImgRequest(prompt=f"a lighthouse {tag}", width=64, height=64, sampling=sampling)
    with tools.merged(dataclasses.replace(components), request.prompt) as lent:
        return txt2img(lent, request).latents


def test_a_loha_or_lokr_of_a_loras_changes_makes_the_loras_image(components: ComponentCache,
                                                                  lycoris_folder: Path) -> None:
    base = components("sd2-base")
    before = {name: weight.detach().clone() for name, weight in lora_targets(base).items()}
    tools = LoraTools(LoraLibrary.scan(lycoris_folder))
    assert tools.library.names() == ["hada", "kron", "plain", "random-hada"]
    plain = _image(base, tools, "<lora:plain:0.8>")
    assert torch.equal(_image(base, tools, "<lora:hada:0.8>"), plain)
    assert torch.equal(_image(base, tools, "<lyco:kron:0.8>"), plain)
    none = _image(base, tools, "")
    random_hada = _image(base, tools, "<lora:random-hada:0.8>")
    assert (plain - none).abs().max() > 1e-2 and (random_hada - plain).abs().max() > 1e-2
    assert all(torch.equal(lora_targets(base)[name], weight) for name, weight in before.items())
