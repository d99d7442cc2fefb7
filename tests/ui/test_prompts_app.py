"""Issue 20 end to end: long and weighted prompts, embeddings and the token counter, through the running app
(gradio_client) and the CLI, on the tiny checkpoints; the PNG parameters reproduce each image."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from sd2_app.errors import InvalidRequest  # noqa: E402
from sd2_app.pipelines.metadata import parse_parameters, read_png_parameters, save_png  # noqa: E402
from tests.reliability_support import launched  # noqa: E402

LONG_PROMPT = ", ".join(["a red hat on a cat"] * 13)  # over 150 tiny-tokenizer tokens: three chunks
WEIGHTED = "a (red:1.4) hat on a [cat], ((sunset))"
FAST = {"steps": 2, "seed": 11, "cfg_scale": 7.5, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def embeddings_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("embeddings")
    g = torch.Generator().manual_seed(3)
    save_file({"emb_params": torch.randn(2, 32, generator=g)}, str(folder / "tiny-style.safetensors"))
    save_file({"emb_params": torch.randn(2, 768, generator=g)}, str(folder / "sd15-style.safetensors"))
    return folder


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, embeddings_dir: Path) -> Iterator[tuple[Client, object, object]]:
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.loading.embeddings import EmbeddingLibrary
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from tests.pipeline_fixtures import tiny_dir

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    service = Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache")),
                      outputs_dir=None, embeddings=EmbeddingLibrary.scan(embeddings_dir))
    demo = build_ui(service)
    with launched(demo) as url:
        yield Client(url, verbose=False), service, demo


def _txt2img(client: Client, **kwargs) -> Image.Image:
    _, gallery, _ = client.predict(api_name="/txt2img", **{**FAST, **kwargs})
    image = Image.open(gallery[0]["image"])
    image.load()
    return image


def _rerun_from(client: Client, image: Image.Image) -> Image.Image:
    """Generate again from nothing but the PNG's parameters text."""
    params = parse_parameters(image.info["parameters"])
    width, height = (int(v) for v in params["Size"].split("x"))
    return _txt2img(client, prompt=params["Prompt"], negative_prompt=params["Negative prompt"], steps=params["Steps"],
                    seed=params["Seed"], cfg_scale=params["CFG scale"], sampler=params["Sampler"], width=width,
                    height=height)


def test_long_prompt_round_trips_through_png_info(app) -> None:
    client, service, _ = app
    count, limit = (int(n) for n in service.count_tokens(LONG_PROMPT, "sd21-base").split("/"))
    assert count >= 150 and limit == 225  # three chunks
    image = _txt2img(client, prompt=LONG_PROMPT, negative_prompt="blurry")
    params = parse_parameters(image.info["parameters"])
    assert params["Prompt"] == LONG_PROMPT and params["Negative prompt"] == "blurry"
    again = _rerun_from(client, image)
    assert np.array_equal(np.asarray(again), np.asarray(image))
    short = _txt2img(client, prompt=LONG_PROMPT[:60], negative_prompt="blurry")
    assert not np.array_equal(np.asarray(short), np.asarray(image))  # the tail past 75 tokens counts


def test_weighted_prompt_changes_the_image_and_round_trips(app) -> None:
    client, _, _ = app
    weighted = _txt2img(client, prompt=WEIGHTED)
    plain = _txt2img(client, prompt="a red hat on a cat, sunset")
    assert not np.array_equal(np.asarray(weighted), np.asarray(plain))
    assert parse_parameters(weighted.info["parameters"])["Prompt"] == WEIGHTED  # recorded unchanged
    assert np.array_equal(np.asarray(_rerun_from(client, weighted)), np.asarray(weighted))


def test_a_weight_over_the_limit_is_used_at_the_limit_and_said_so(app) -> None:
    client, _, _ = app
    _, gallery, info = client.predict(api_name="/txt2img", **{**FAST, "prompt": "a (cat:15) on a hill"})
    assert '- ⚠️ The prompt asks for weight 15 on "cat"; attention weights are limited to ±10, so 10 was used.' \
        in info.splitlines()
    at_limit = _txt2img(client, prompt="a (cat:10) on a hill")
    asked = Image.open(gallery[0]["image"])
    assert np.array_equal(np.asarray(asked), np.asarray(at_limit))  # 15 was read as 10, as the message says
    _, _, info = client.predict(api_name="/txt2img", **{**FAST, "prompt": "a (cat:10) on a hill",
                                                       "negative_prompt": "[[(blurry:-12)]]"})
    assert '- ⚠️ The negative prompt asks for weight -9.92 on "blurry"' not in info  # -12/1.21 is within ±10
    assert "attention weights are limited" not in info


def test_a1111_syntax_we_do_not_support_is_named_in_the_info(app) -> None:
    client, _, _ = app
    prompt = "a cat AND a dog on a hill <lora:add_detail:0.8> <hypernet:h:1>"
    _, gallery, info = client.predict(api_name="/txt2img", **{**FAST, "prompt": prompt, "negative_prompt": "[x|y]"})
    lines = info.splitlines()
    assert "does not support" not in info  # AND: composable prompts are supported
    assert ('- ⚠️ The prompt names an extra network that this app does not have: '
            '"&lt;hypernet:h:1&gt;". As in A1111, such tags are left out of the text the model reads; see '
            "the README's Prompts section.") \
        in lines  # the tag as text, not read as an HTML tag or a Markdown link (ui/result_panel.py, warning_text)
    assert "- ⚠️ LoRA not found: 'add_detail' (this app has no LoRAs); its tag is left out of the prompt." in lines
    assert "negative prompt uses A1111 syntax" not in info  # alternation is supported
    assert parse_parameters(Image.open(gallery[0]["image"]).info["parameters"])["Prompt"] == prompt


def test_a_lora_tag_is_left_out_of_the_prompt_and_its_count_as_in_a1111(app) -> None:
    """The prompt's `<lora:...>` tag is taken out before the model reads it: the image is the one of the prompt
    without it (A1111 modules/processing.py, `parse_extra_network_prompts`), and the counter leaves it out of
    either box (A1111 modules/ui.py, `update_token_counter`); the negative prompt's tag is read as text."""
    client, _, _ = app
    tagged, plain = "a red hat <lora:add_detail:0.8>, on a cat", "a red hat , on a cat"
    assert client.predict(tagged, "sd21-base", api_name="/count_tokens") == \
        client.predict(plain, "sd21-base", api_name="/count_tokens")
    with_tag, without = _txt2img(client, prompt=tagged), _txt2img(client, prompt=plain)
    assert np.array_equal(np.asarray(with_tag), np.asarray(without))
    assert parse_parameters(with_tag.info["parameters"])["Prompt"] == tagged  # recorded as written
    negative_tag = _txt2img(client, prompt=plain, negative_prompt="blurry <lora:add_detail:0.8>")
    assert not np.array_equal(np.asarray(negative_tag), np.asarray(_txt2img(client, prompt=plain,
                                                                             negative_prompt="blurry")))


EDITED = "a [red:blue:0.5] hat on a [cat|dog], [(sunset:1.2)::3]"


def test_prompt_editing_runs_without_a_warning_and_round_trips(app) -> None:
    """Editing and alternation change the image (against each step's plain prompt held all along), are named in
    no warning, are recorded as written, and PNG info's parameters reproduce the image."""
    client, _, _ = app
    settings = {**FAST, "steps": 4, "negative_prompt": "[blurry|dark]"}
    _, gallery, info = client.predict(api_name="/txt2img", **{**settings, "prompt": EDITED})
    assert "does not support" not in info
    edited = Image.open(gallery[0]["image"])
    edited.load()
    params = parse_parameters(edited.info["parameters"])
    assert params["Prompt"] == EDITED and params["Negative prompt"] == "[blurry|dark]"
    assert np.array_equal(np.asarray(_rerun_from(client, edited)), np.asarray(edited))
    first_step = _txt2img(client, **{**settings, "prompt": "a red hat on a cat, (sunset:1.2)",
                                     "negative_prompt": "blurry"})
    assert not np.array_equal(np.asarray(first_step), np.asarray(edited))


def test_token_counter_counts_the_longest_step_prompt(app) -> None:
    client, service, _ = app
    edited = f"[a cat:{LONG_PROMPT}:0.5]"
    counted = client.predict(edited, "sd21-base", api_name="/count_tokens")
    assert counted == service.count_tokens(LONG_PROMPT, "sd21-base") != service.count_tokens("a cat", "sd21-base")
    assert client.predict("[a|a cat on a hill] x", "sd21-base", api_name="/count_tokens") == \
        service.count_tokens("a cat on a hill x", "sd21-base")


def test_composable_prompts_run_as_a1111_reads_them(app) -> None:
    """A1111's AND through the app: the parts are guided one by one (a part twice at half the CFG is the part once,
    pixel for pixel; another part changes the image), the prompt is recorded as written and reproduces the image; a
    prompt ending in ":9" is read as its weight, as A1111 reads it, and a warning says so; parts without guidance
    are refused with the message; the counter counts the longest part."""
    client, service, _ = app
    once = _txt2img(client, prompt="a red fox", cfg_scale=8)
    twice = _txt2img(client, prompt="a red fox AND a red fox", cfg_scale=4)
    assert np.array_equal(np.asarray(once), np.asarray(twice))
    _, gallery, info = client.predict(api_name="/txt2img", **{**FAST, "prompt": "a red fox AND snow :0.5"})
    composed = Image.open(gallery[0]["image"])
    composed.load()
    plain = _txt2img(client, prompt="a red fox")
    assert "⚠️" not in info and not np.array_equal(np.asarray(composed), np.asarray(plain))
    assert parse_parameters(composed.info["parameters"])["Prompt"] == "a red fox AND snow :0.5"
    assert np.array_equal(np.asarray(_rerun_from(client, composed)), np.asarray(composed))
    _, gallery, info = client.predict(api_name="/txt2img", **{**FAST, "prompt": "a wide photo, 16:9", "cfg_scale": 2})
    assert ('- ⚠️ The prompt ends in ":9", which A1111 reads as the weight of the prompt\'s guidance, as this app '
            'does: "a wide photo, 16" is guided x9. End the prompt with "," to keep the number as text.') \
        in info.splitlines()
    assert np.array_equal(np.asarray(Image.open(gallery[0]["image"])),
                          np.asarray(_txt2img(client, prompt="a wide photo, 16", cfg_scale=18)))
    with pytest.raises(AppError, match=r"^The prompt's parts joined by AND need classifier-free guidance: set the CFG "
                                       r"scale above 1\.$"):
        client.predict(api_name="/txt2img", **{**FAST, "prompt": "a AND b", "cfg_scale": 1})
    assert client.predict("a cat AND a cat on a hill x", "sd21-base", api_name="/count_tokens") == \
        service.count_tokens("a cat on a hill x", "sd21-base") != service.count_tokens("a cat", "sd21-base")
    assert service.count_tokens("a AND b", "sd21-base", negative=True) == service.count_tokens(
        "a and b", "sd21-base") != service.count_tokens("a AND b", "sd21-base")  # the negative prompt read whole


def test_png_info_reads_an_a1111_infotext_as_a1111_does(app, tmp_path: Path) -> None:
    """A PNG made by A1111 with an extension's unquoted list in its settings line and a trailing newline."""
    client, _, _ = app
    text = ("a (castle:1.2), BREAK sunset\nNegative prompt:blurry, lowres\nSteps: 25, Sampler: DPM++ 2M, "
            "Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, Model: v2-1_768-ema-pruned, "
            "Wildcards: red, blue, Version: v1.10.1\n")
    image = Image.new("RGB", (8, 8))
    image.info["parameters"] = text
    save_png(image, tmp_path / "a1111.png")
    shown, fields = client.predict(path=gradio_client.handle_file(str(tmp_path / "a1111.png")), api_name="/png_info")
    assert shown == text
    assert fields == {"Prompt": "a (castle:1.2), BREAK sunset", "Negative prompt": "blurry, lowres", "Steps": 25,
                      "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7, "Seed": 42,
                      "Size": "512x768", "Model": "v2-1_768-ema-pruned", "Wildcards": "red", "Version": "v1.10.1"}


def test_png_info_reads_a_text_of_the_limit_and_no_longer(app, tmp_path: Path) -> None:
    """Junk before the settings up to the longest text PNG info reads (metadata.MAX_PARAMETERS_CHARS): answered;
    one character more (a 1 MiB zTXt costs a second of parsing) reads as an image without parameters."""
    from sd2_app.pipelines.metadata import MAX_PARAMETERS_CHARS

    client, _, _ = app
    settings = ", Steps: 20, Sampler: Euler, Seed: 7"
    for extra, expected in ((0, {"Prompt": "a cat", "Negative prompt": "", "Steps": 20, "Sampler": "Euler",
                                 "Seed": 7}), (1, {})):
        text = "a cat\n" + "a" * (MAX_PARAMETERS_CHARS - len("a cat\n") - len(settings) + extra) + settings
        image = Image.new("RGB", (8, 8))
        image.info["parameters"] = text
        save_png(image, tmp_path / "long.png")
        _, fields = client.predict(path=gradio_client.handle_file(str(tmp_path / "long.png")), api_name="/png_info")
        assert fields == expected, extra


def test_embedding_is_used_and_recorded_with_its_hash(app, embeddings_dir: Path) -> None:
    client, _, _ = app
    image = _txt2img(client, prompt="a tiny-style cat", negative_prompt="")
    digest = hashlib.sha256((embeddings_dir / "tiny-style.safetensors").read_bytes()).hexdigest()[:12]
    params = parse_parameters(image.info["parameters"])
    assert params["TI hashes"] == f"tiny-style: {digest}"
    assert 'TI hashes: "tiny-style: ' in image.info["parameters"]  # quoted as A1111 quotes it
    again = _rerun_from(client, image)
    assert np.array_equal(np.asarray(again), np.asarray(image))  # the PNG's parameters reproduce it


def test_embeddings_are_listed_and_the_sd1_file_is_explained(app) -> None:
    _, service, demo = app
    assert service.embedding_names() == ["tiny-style"]
    assert "an embedding for SD 1.x" in service.embedding_library().refused["sd15-style.safetensors"]
    add = next(f for f in demo.fns.values() if f.api_name == "txt2img_add_embedding")
    assert add.fn(["tiny-style"], "Prompt", "a cat ", "")[0] == "a cat, tiny-style"
    assert add.fn(["tiny-style"], "Prompt", "", "")[0] == "tiny-style"
    assert add.fn(["tiny-style"], "Negative prompt", "a cat", "")[1] == "tiny-style"


def test_too_long_prompt_is_refused_with_the_message(app) -> None:
    client, _, _ = app
    with pytest.raises(AppError, match=r"The prompt is too long: it makes 9 chunks of 75 tokens"):
        client.predict(prompt=" BREAK ".join(["cat"] * 9), api_name="/txt2img", **FAST)


def test_token_counter_endpoint(app) -> None:
    client, service, demo = app
    assert client.predict("a " * 10, "sd21-base", api_name="/count_tokens") == "10/75"
    assert client.predict("a " * 93, "sd21-base", api_name="/count_tokens") == "93/150"
    assert client.predict("a BREAK b", "sd21-base", api_name="/count_tokens") == "76/150"
    assert client.predict("a tiny-style", "sd21-base", api_name="/count_tokens") == "3/75"  # 1 + 2 vectors
    assert client.predict(" BREAK ".join("a" * 9), "sd21-base", api_name="/count_tokens") == \
        "601/675 (over the 8-chunk limit)"
    with pytest.raises(AppError, match=r"^Checkpoint: 'no-such-model' is not one of the choices\.$"):  # the dropdown's
        client.predict("a", "no-such-model", api_name="/count_tokens")
    with pytest.raises(InvalidRequest, match=r"^Unknown checkpoint 'no-such-model'\.$"):
        service.count_tokens("a", "no-such-model")
    assert client.predict("a" * 2001, "sd21-base", api_name="/count_tokens") == \
        "A prompt is a text of at most 2000 characters."
    counters = [f for f in demo.fns.values() if f.api_name and "count" in f.api_name]
    assert len(counters) >= 12 and all(not f.queue for f in counters)  # two per tab, none in the GPU queue


def test_token_counter_answers_while_the_gpu_is_busy(app) -> None:
    """The test holds the GPU (the Service's gate, every job's one way to it), so a generation waits; the counter
    must not."""
    client, service, _ = app
    with service.gate.enter():
        job = client.submit(prompt="a cat", api_name="/txt2img", **FAST)
        started = time.monotonic()
        assert client.predict("a " * 10, "sd21-base", api_name="/count_tokens") == "10/75"
        assert time.monotonic() - started < 10
        assert not job.done()  # still waiting for the GPU
    job.result(timeout=120)


def test_counter_slots_are_bounded() -> None:
    """COUNTER_SLOTS counts run at once: while they wait for a slow tokenizer read (a first download), one more
    count still gets a slot, the one after that waits SLOT_WAIT_S and answers None (the box keeps its count);
    all of them answer once the read is done. Through Service.count_tokens only."""
    from sd2_app.api.prompt_tools import COUNTER_SLOTS, SLOT_WAIT_S
    from sd2_app.api.service import Service
    from sd2_app.loading.tokenizer import load_tokenizer
    from tests.pipeline_fixtures import tiny_repo
    from tests.ui_doubles import FakeManager, fake_catalog

    tokenizer, entered, release = load_tokenizer(tiny_repo("sd2-base")), threading.Event(), threading.Event()

    class SlowTokenizerHost(FakeManager):
        def tokenizer(self, key: str) -> object:  # the first read: every count waits for it, holding its slot
            entered.set()
            assert release.wait(60)
            return tokenizer

    service = Service(SlowTokenizerHost(), catalog=fake_catalog(), outputs_dir=None, allowed_repos=())
    answers: list[str | None] = []

    def count() -> threading.Thread:
        thread = threading.Thread(target=lambda: answers.append(service.count_tokens("a", "sd21-base")))
        thread.start()
        return thread

    waiting = [count() for _ in range(COUNTER_SLOTS - 1)]
    assert entered.wait(30)
    time.sleep(0.5)  # the other counts take their slots and queue for the tokenizer
    waiting.append(count())  # the last free slot
    time.sleep(2 * SLOT_WAIT_S + 0.5)
    assert answers == []  # it got a slot: it waits for the tokenizer, it did not give up with None
    started = time.monotonic()
    assert service.count_tokens("a", "sd21-base") is None  # every slot is taken: a short wait, then None
    assert time.monotonic() - started >= SLOT_WAIT_S * 0.9
    release.set()
    for thread in waiting:
        thread.join(30)
    assert answers == ["1/75"] * COUNTER_SLOTS
    assert service.count_tokens("a", "sd21-base") == "1/75"  # the slots are back


def test_cli_long_weighted_prompt_with_embedding(tmp_path: Path, embeddings_dir: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    from sd2_app.__main__ import main
    from tests.pipeline_fixtures import tiny_dir, tiny_repo

    tiny_repo("sd2-base")
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny").symlink_to(tiny_dir(), target_is_directory=True)
    prompt = "(" + LONG_PROMPT + ":1.2), tiny-style"
    common = ["txt2img", "--tiny", "--model-dir", str(models), "--embeddings-dir", str(embeddings_dir),
              "--steps", "2", "--seed", "5", "--width", "64", "--height", "64", "--json"]
    assert main([*common, "--prompt", prompt, "--out", str(tmp_path / "a")]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["warnings"] == []
    params = parse_parameters(read_png_parameters(first["paths"][0]))
    assert params["Prompt"] == prompt and params["TI hashes"].startswith("tiny-style: ")
    assert main([*common, "--prompt", params["Prompt"], "--out", str(tmp_path / "b")]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with Image.open(first["paths"][0]) as a, Image.open(second["paths"][0]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_counter_reads_the_tokenizer_without_loading_models(tmp_path: Path) -> None:
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from tests.pipeline_fixtures import tiny_dir

    manager = ModelManager("cpu", registry=tiny_registry(ensure_tiny_repos(tiny_dir())), cache_dir=tmp_path)
    service = Service(manager, outputs_dir=None)
    assert service.count_tokens("a (red:1.2) hat", "sd21-base") == "7/75"
    assert manager.loaded_keys() == []  # no model was loaded for it


def test_a_prompt_of_breaks_only_counts_and_runs(app) -> None:
    """"BREAK" alone is one empty chunk, as in A1111 (the counter and the run crashed on it: no text to
    tokenize)."""
    client, _, _ = app
    assert client.predict("BREAK", "sd21-base", api_name="/count_tokens") == "75/75"
    assert client.predict("a BREAK BREAK", "sd21-base", api_name="/count_tokens") == "150/150"
    _, gallery, info = client.predict(api_name="/txt2img", **{**FAST, "prompt": "BREAK", "negative_prompt": "BREAK"})
    assert len(gallery) == 1 and "BREAK" in info
