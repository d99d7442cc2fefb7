"""Parameters pasted from AUTOMATIC1111's web UI into text to image (PNG info's "Send to text to image"): its
sampler and checkpoint names, its hires rule, and a warning for each setting that cannot be reproduced here."""

from __future__ import annotations

import pytest

from sd2_app.checkpoints.catalog import REGISTRY, checkpoint_named
from sd2_app.pipelines.metadata import parse_parameters
from sd2_app.ui.sending import hires_in, sampler_fields, unreproduced
from sd2_app.ui.txt2img_extras import from_parameters, request_fields

NAMES = ["Euler", "DDIM", "PNDM", "DPM++ 2M"]


@pytest.mark.parametrize(("sampler", "schedule", "expected"), [
    ("PLMS", None, ("PNDM", "Automatic")),  # A1111's name for PNDM
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")),  # before A1111 1.9 the schedule was in the name
    ("DPM++ 2M", "Karras", ("DPM++ 2M", "Karras")),
    ("Euler", "Exponential", ("Euler", "Exponential")),
    ("Euler", "SGM Uniform", ("Euler", "SGM Uniform")),
    ("Euler", "SGMUniform", ("Euler", "SGM Uniform")),  # A1111's alias
    ("Euler", "DDIM", ("Euler", "Automatic")),  # a schedule we do not have: the sampler's own
    ("DPM++ 2S a", "Automatic", (None, "Automatic")),  # ancestral 2S: not ours ("DPM++ 2S" is the singlestep solver)
    ("Restart Karras", None, (None, "Automatic")),
])
def test_sampler_names_as_a1111_writes_them(sampler: str, schedule: str | None, expected: tuple) -> None:
    parsed = {"Sampler": sampler} | ({"Schedule type": schedule} if schedule else {})
    assert sampler_fields(parsed, NAMES) == expected


@pytest.mark.parametrize(("model", "key"), [
    ("v2-1_768-ema-pruned", "sd21"),
    ("v2-1_512-ema-pruned", "sd21-base"),
    ("768-v-ema", "sd2"),
    ("512-base-ema", "sd2-base"),
    ("SD2\\v2-1_768-ema-pruned.safetensors [ad2a33c361]", "sd21"),
    ("sd21-base", "sd21-base"),
    ("SD 2.0 (768-v)", "sd2"),
    ("v2-1_768-nonema-pruned", None),  # other weights
    ("dreamshaper_8", None),
])
def test_checkpoint_names_as_a1111_writes_them(model: str, key: str | None) -> None:
    assert checkpoint_named(model, REGISTRY) == key


def test_hires_fix_is_on_by_a1111s_rule() -> None:
    old = parse_parameters("p\nSteps: 20, Sampler: Euler, Seed: 1, Denoising strength: 0.7, Hires upscale: 2")
    assert hires_in(old)  # no "Hires upscaler" (A1111 before 1.0): still a hires fix
    hires = request_fields(*from_parameters(old, NAMES))["hires"]
    assert (hires.upscaler, hires.scale, hires.denoising_strength) == ("Latent", 2, 0.7)
    assert (hires.prompt, hires.negative_prompt) == ("", "")  # no "Hires prompt": the first pass's
    own = parse_parameters('p\nNegative prompt: n\nSteps: 20, Sampler: Euler, Seed: 1, Denoising strength: 0.5, '
                           'Hires upscale: 2, Hires upscaler: Latent, Hires prompt: "a castle, 8k", '
                           'Hires negative prompt: "blurry, dark"')
    hires = request_fields(*from_parameters(own, NAMES))["hires"]
    assert (hires.prompt, hires.negative_prompt) == ("a castle, 8k", "blurry, dark")
    assert unreproduced(own, "Euler", NAMES) == []
    assert not hires_in(parse_parameters("p\nSteps: 20, Sampler: Euler, Seed: 1, Denoising strength: 0.7"))  # img2img
    assert not hires_in(parse_parameters("p\nSteps: 20, Sampler: Euler, Seed: 1, Hires upscale: 2"))


def test_each_setting_that_cannot_be_reproduced_is_named() -> None:
    parsed = parse_parameters(
        "p\nSteps: 20, Sampler: DPM++ 2S a, Schedule type: DDIM, CFG scale: 7, Seed: 1, Size: 512x512, "
        "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+, Hires sampler: Restart, "
        "Hires prompt: \"a castle, 8k\", Hires schedule type: Turbo, "
        "Emphasis: No norm, Clip skip: 2, Eta DDIM: 0.5, Eta: 0.67")
    assert unreproduced(parsed, sampler_fields(parsed, NAMES)[0], NAMES) == [
        "Sampler 'DPM++ 2S a' is not available here; the current sampler is kept.",
        "Schedule type 'DDIM' is not available here; the sampler's own schedule is used.",
        "Hires upscaler 'R-ESRGAN 4x+' is not available here; Latent is used.",
        "Hires sampler 'Restart' is not available here; the first pass's sampler is used.",
        "Hires schedule type 'Turbo' is not available here; the first pass's schedule type is used.",
        "Emphasis ('No norm') is not supported here; A1111's default (\"Original\") is used.",
        "Eta (0.67) is not supported here; the ancestral samplers' full noise (eta 1) is used.",
    ]  # Clip skip: A1111 ignores it on SD 2.x too; Eta DDIM: the tabs' Eta slider takes it
    plms = parse_parameters(
        "p\nSteps: 20, Sampler: PLMS, Schedule type: Automatic, Denoising strength: 0.5, Hires upscaler: Latent, "
        "Hires sampler: ddim")  # any case, as the paste reads it
    assert unreproduced(plms, sampler_fields(plms, NAMES)[0], NAMES) == []


def test_png_info_send_fills_a1111_names_in() -> None:
    """The PNG info tab's "Send to text to image" event on an A1111 text: its sampler and model are ours."""
    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service())
    send = next(f for f in demo.fns.values() if f.api_name == "png_info_send")
    text = ("p\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 512x512, "
            "Model: v2-1_512-ema-pruned, Model hash: 88ecb78256, Denoising strength: 0.6, Hires upscale: 1.5")
    values = send.fn(text)  # the send takes PNG info's text and parses it itself
    by_id = {getattr(block, "elem_id", None): value for block, value in zip(send.outputs, values)}
    assert by_id["txt2img-checkpoint"] == "sd21-base"
    assert (by_id["txt2img-sampler"], by_id["txt2img-schedule"]) == ("DPM++ 2M", "Karras")
    assert by_id["txt2img-hires"] is True and by_id["txt2img-hires-scale"] == 1.5


def test_png_info_send_makes_pasted_numbers_ones_the_sliders_take() -> None:
    """"Batch size: 2.5" reached the slider as it was and was refused only at Generate ("Batch size must be a
    whole number, got 2.5."): the send rounds and clamps it, and each change is said in a warning."""
    import warnings

    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service())
    send = next(f for f in demo.fns.values() if f.api_name == "png_info_send")
    text = "p\nSteps: 200, Sampler: Euler, CFG scale: 31, Seed: 5, Size: 100x60, Batch size: 2.5"
    with warnings.catch_warnings(record=True) as said:  # gr.Warning outside an event: a Python warning
        warnings.simplefilter("always")
        values = send.fn(text)
    by_id = {getattr(block, "elem_id", None): value for block, value in zip(send.outputs, values)}
    batch = next(value for block, value in zip(send.outputs, values) if getattr(block, "label", "") == "Images per prompt")
    assert (batch, by_id["txt2img-steps"], by_id["txt2img-width"], by_id["txt2img-height"]) == (3, 150, 104, 64)
    assert [str(w.message) for w in said] == [
        "Steps 200 cannot be set here (1 to 150, whole numbers); 150 is used.",
        "CFG scale 31 cannot be set here (0 to 30); 30 is used.",
        "Batch size 2.5 cannot be set here (1 to 8, whole numbers); 3 is used.",
        "Width 100 cannot be set here (64 to 1024, in steps of 8); 104 is used.",
        "Height 60 cannot be set here (64 to 1024, in steps of 8); 64 is used.",
    ]


def test_pasted_numbers_too_long_for_json_are_read_and_clamped_through_the_app() -> None:
    """Parameters pasted into PNG info (raw HTTP, as the page sends them) with numbers of 20, 400 and 5,000
    digits: the parse answered HTTP 500 (orjson cannot carry a whole number past 64 bits; int() refuses 5,000
    digits) and "Send to text to image" had nothing to send. Now such a number is read as a float: one past the
    slider's range is clamped and said, one past a float's range (inf) leaves its slider as it is."""
    import json

    import httpx

    from sd2_app.ui import build_ui
    from tests.reliability_support import launched
    from tests.ui_doubles import fake_service

    text = (f"p\nSteps: {'9' * 5000}, Sampler: Euler, CFG scale: {'9' * 20}, Seed: 5, "
            f"Size: {'9' * 400}x{'9' * 20}")
    with launched(build_ui(fake_service())) as url, httpx.Client(base_url=url, timeout=60) as client:
        fns = {d.get("api_name"): d["id"] for d in client.get("config").json()["dependencies"]}
        read = client.post("gradio_api/run/predict",
                           json={"data": [text], "fn_index": fns["png_info_text"], "session_hash": "big"})
        assert read.status_code == 200, read.text
        fields = read.json()["data"][0]
        assert (fields["Steps"], fields["CFG scale"]) == (None, 1e20)  # inf is JSON's null
        join = {"data": [text], "fn_index": fns["png_info_send"], "session_hash": "big"}
        assert client.post("gradio_api/queue/join", json=join).status_code == 200
        messages = []
        with client.stream("GET", "gradio_api/queue/data", params={"session_hash": "big"}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    messages.append(json.loads(line[5:]))
                    if messages[-1]["msg"] in ("process_completed", "close_stream"):
                        break
    done = messages[-1]
    assert done["msg"] == "process_completed" and done["success"], done
    said = [m["log"] for m in messages if m["msg"] == "log"]
    assert said == ["CFG scale 1e+20 cannot be set here (0 to 30); 30 is used.",
                    "Height 1e+20 cannot be set here (64 to 1024, in steps of 8); 1024 is used."]
    steps, cfg = done["output"]["data"][4:6]  # prompt, negative, sampler, Karras, then these
    assert (steps, cfg) == ({"__type__": "update"}, 30)  # no finite number of steps: the slider keeps its own


def test_png_info_send_of_no_parameters_text_says_there_is_nothing_to_send() -> None:
    """"Send to text to image" takes PNG info's text, as the page sends it over raw HTTP: an empty box, blank
    lines and the box's "no parameters" line have nothing to send. Any other JSON is made a text by the Textbox
    (a list, a number, an object failed with Gradio's bare "Error" when the send took the parsed fields) and is
    sent as the prompt it reads as, as a text with no settings line is."""
    import json

    import httpx

    from sd2_app.ui import build_ui
    from sd2_app.ui.pnginfo import NO_PARAMETERS, NOTHING_TO_SEND
    from tests.reliability_support import launched
    from tests.ui_doubles import fake_service

    def send(client: httpx.Client, fn_index: int, n: int, text: object) -> dict:
        join = {"data": [text], "fn_index": fn_index, "session_hash": f"odd-{n}"}
        assert client.post("gradio_api/queue/join", json=join).status_code == 200
        with client.stream("GET", "gradio_api/queue/data", params={"session_hash": f"odd-{n}"}) as stream:
            return [json.loads(line[5:]) for line in stream.iter_lines() if '"process_completed"' in line][0]

    with launched(build_ui(fake_service())) as url, httpx.Client(base_url=url, timeout=60) as client:
        fn_index = {d.get("api_name"): d["id"] for d in client.get("config").json()["dependencies"]}["png_info_send"]
        errors = [send(client, fn_index, n, text)["output"].get("error")
                  for n, text in enumerate(("", " \n", NO_PARAMETERS))]
        prompts = [send(client, fn_index, 10 + n, text)["output"]["data"][:2]
                   for n, text in enumerate(("a lighthouse", [1, 2], -1, {"Steps": 20}))]
    assert errors == [NOTHING_TO_SEND] * 3
    assert prompts == [["a lighthouse", ""], ["[1, 2]", ""], ["-1", ""], ["{'Steps': 20}", ""]]
