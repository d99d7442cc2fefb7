"""The X/Y/Z plot's A1111 axes beyond the first ones: Eta, Hires steps / upscaler / sampler, Prompt order, Styles.
Their values as A1111 reads them, the exact refusals, the cells they make (labels, requests, warnings), their
names in the grid's parameters and their cost against the cap. (The running app: tests/ui/test_ui_api.py.)"""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image

from sd2_app.api.checks import Limits
from sd2_app.api.cost import job_cost
from sd2_app.api.plot import grid_parameters, plan_cells, validate_plot
from sd2_app.api.plot_axes import parse_values
from sd2_app.api.requests import HiresFix, Img2ImgRequest, PlotAxis, Sampling, Txt2ImgRequest, XYZPlotRequest
from sd2_app.api.validation import validate
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.metadata import format_parameters, parse_parameters
from sd2_app.prompt_styles import PromptStyle, StyleBook
from tests.ui_doubles import fake_catalog, fake_service

CATALOG = fake_catalog()
PROMPT = "a cat and a dog on a mat, by a lake"


def _plot(x: PlotAxis, y: PlotAxis | None = None, *, hires: HiresFix | None = None, **sampling: object
          ) -> XYZPlotRequest:
    settings: dict[str, object] = {"seed": 11, "steps": 2, **sampling}
    base = Txt2ImgRequest(PROMPT, negative_prompt="a blurry cat", width=64, height=64, hires=hires,
                          sampling=Sampling(**settings))  # type: ignore[arg-type]
    return XYZPlotRequest(base, x, y)


@pytest.mark.parametrize(("kind", "values", "parsed"), [
    ("eta", "0-1 [3]", [0.0, 0.5, 1.0]),
    ("eta", "0, 0.25", [0.0, 0.25]),
    ("hires_steps", "10-30 (+10)", [10, 20, 30]),
    ("hires_steps", "0, 5", [0, 5]),  # 0: the first pass's steps, as A1111's slider
    ("hires_upscaler", '"Latent (nearest-exact)", Lanczos', ["Latent (nearest-exact)", "Lanczos"]),
    ("hires_sampler", ("Euler", "DDIM"), ["Euler", "DDIM"]),
    ("prompt_order", "cat, dog", [("cat", "dog"), ("dog", "cat")]),
    ("prompt_order", "a, b, c", [("a", "b", "c"), ("a", "c", "b"), ("b", "a", "c"), ("b", "c", "a"),
                                 ("c", "a", "b"), ("c", "b", "a")]),  # itertools.permutations' order, as A1111
    ("prompt_order", (("dog", "cat"), ["cat", "dog"]), [("dog", "cat"), ("cat", "dog")]),  # orders given as lists
])
def test_new_axes_read_values_as_a1111(kind: str, values: object, parsed: list) -> None:
    assert parse_values(PlotAxis(kind, values), "X values", 64) == parsed  # type: ignore[arg-type]


def test_prompt_order_puts_the_terms_in_every_order_in_their_places() -> None:
    checked, _ = validate(_plot(PlotAxis("prompt_order", "dog, cat, lake")), CATALOG)
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert [c.request.prompt for c in cells] == [
        "a dog and a cat on a mat, by a lake", "a dog and a lake on a mat, by a cat",
        "a cat and a dog on a mat, by a lake", "a cat and a lake on a mat, by a dog",
        "a lake and a dog on a mat, by a cat", "a lake and a cat on a mat, by a dog"]
    assert {c.request.negative_prompt for c in cells} == {"a blurry cat"}  # A1111 orders the prompt only
    assert [c.labels[0] for c in cells[:2]] == ["dog, cat, lake", "dog, lake, cat"]
    result = fake_service(None).plot(_plot(PlotAxis("prompt_order", "dog, cat")))
    grid = parse_parameters(result.parameters)
    assert grid["X Type"] == "Prompt order" and grid["X Values"] == "dog, cat"  # the terms, as A1111 writes them
    assert [c.split(" · ")[0] for c in result.captions] == ["Grid", "dog, cat", "cat, dog"]
    assert [row["x_prompt_order"] for row in result.cells] == ["dog, cat", "cat, dog"]
    assert [image.info["parameters"].split("\n")[0] for image in result.images[1:]] == [
        "a dog and a cat on a mat, by a lake", "a cat and a dog on a mat, by a lake"]


def test_eta_runs_where_ddim_samples_and_is_dropped_with_a_warning_elsewhere() -> None:
    checked, warnings = validate(_plot(PlotAxis("eta", "0, 0.5"), PlotAxis("sampler", "DDIM, Euler")), CATALOG)
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert [(c.labels[:2], c.request.sampling.eta) for c in cells] == [
        (("Eta: 0", "DDIM"), 0.0), (("Eta: 0.5", "DDIM"), 0.5), (("Eta: 0", "Euler"), 0.0),
        (("Eta: 0.5", "Euler"), 0.0)]
    assert warnings == ["Eta changes only DDIM; the Euler cells run without it."]
    hires_ddim, _ = validate(_plot(PlotAxis("eta", "0.5"), PlotAxis("hires_sampler", "DDIM, Euler")), CATALOG)
    cells, _ = plan_cells(hires_ddim, CATALOG, Limits())
    assert [c.request.sampling.eta for c in cells] == [0.5, 0.0]  # a DDIM hires pass takes it
    result = fake_service(None).plot(_plot(PlotAxis("eta", "0.25, 0.75"), sampler="DDIM"))
    grid = parse_parameters(result.parameters)  # (the cells' own "Eta DDIM": the running app's test)
    assert grid["X Type"] == "Eta" and grid["X Values"] == "0.25, 0.75"
    # the grid's text leaves out the first cell's eta (as DDIM's eta is written: "Eta DDIM"), which the axis varies
    eta_plot, _ = validate(_plot(PlotAxis("eta", "0.25, 0.75"), sampler="DDIM"), CATALOG)
    first = format_parameters("a cat", "", {"Steps": 2, "Sampler": "DDIM", "Eta DDIM": 0.25, "Seed": 4})
    assert "Eta DDIM" not in parse_parameters(grid_parameters(eta_plot, first))


def test_hires_axes_turn_the_hires_fix_on_with_its_defaults_and_say_so() -> None:
    checked, warnings = validate(_plot(PlotAxis("hires_steps", "1, 3"), PlotAxis("hires_upscaler", "Lanczos")),
                                 CATALOG)
    assert warnings == ["The hires fix was off; the Hires steps and Hires upscaler axes turn it on with its "
                        "defaults (upscaler Latent, upscale 2, denoising strength 0.5)."]
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert [c.request.hires for c in cells] == [HiresFix(upscaler="Lanczos", steps=1), HiresFix(upscaler="Lanczos",
                                                                                                steps=3)]
    assert [c.labels[:2] for c in cells] == [("Hires steps: 1", "Hires upscaler: Lanczos"),
                                             ("Hires steps: 3", "Hires upscaler: Lanczos")]
    own = HiresFix(upscaler="Lanczos", scale=1.5, denoising_strength=0.7)
    checked, warnings = validate(_plot(PlotAxis("hires_sampler", "Euler, Heun"), hires=own), CATALOG)
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert warnings == [] and [c.request.hires for c in cells] == [replace(own, sampler="Euler"),
                                                                   replace(own, sampler="Heun")]
    result = fake_service(None).plot(_plot(PlotAxis("hires_sampler", ("Euler", "Heun")), hires=own))
    grid = parse_parameters(result.parameters)
    assert grid["X Type"] == "Hires sampler" and grid["X Values"] == "Euler, Heun" and "Hires sampler" not in grid
    assert [c.split(" · ")[0] for c in result.captions[1:]] == ["Hires sampler: Euler", "Hires sampler: Heun"]


def test_schedule_type_axis_is_a1111s_with_its_names() -> None:
    """A1111's "Schedule type" axis: its names, labels or aliases in any case ("karras", "Exponential",
    "sgm_uniform", "SGMUniform") read as ours, each cell sampled and labelled with its own, the grid writing them
    back under A1111's label (its DDIM schedule type is not offered here: refused by name)."""
    values = "karras, Automatic, EXPONENTIAL, sgm_uniform, SGMUniform, KL Optimal"
    labels = ["Karras", "Automatic", "Exponential", "SGM Uniform", "SGM Uniform", "KL Optimal"]
    result = fake_service(None).plot(_plot(PlotAxis("schedule_type", values), sampler="Euler"))
    grid = parse_parameters(result.parameters)
    assert grid["X Type"] == "Schedule type" and grid["X Values"] == ", ".join(labels)
    assert [c.split(" · ")[0] for c in result.captions[1:]] == [f"Schedule type: {label}" for label in labels]
    checked, _ = validate(_plot(PlotAxis("schedule_type", values), sampler="Euler"), CATALOG)
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert [cell.request.sampling.schedule for cell in cells] == labels
    with pytest.raises(InvalidRequest, match=r"^X values \(Schedule type\): Unknown schedule type\(s\) 'DDIM'"):
        validate(_plot(PlotAxis("schedule_type", "Karras, DDIM")), CATALOG)


def test_hires_axes_count_their_second_pass_against_the_cost_cap() -> None:
    checked, _ = validate(_plot(PlotAxis("hires_steps", "1, 4")), CATALOG)
    cells, _ = plan_cells(checked, CATALOG, Limits())
    costs = [job_cost(cell.request, CATALOG) for cell in cells]
    first_pass = 2 * 2 * 8 * 8  # steps x guidance x latent pixels
    assert costs == [first_pass + 1 * 2 * 16 * 16, first_pass + 4 * 2 * 16 * 16]  # the second pass at 128x128
    validate(_plot(PlotAxis("hires_steps", "1, 4")), CATALOG, Limits(max_job_cost=sum(costs)))
    with pytest.raises(InvalidRequest, match=f"it costs {sum(costs):,} UNet evaluations x latent pixels and the "
                                             f"limit is {sum(costs) - 1:,}"):
        validate(_plot(PlotAxis("hires_steps", "1, 4")), CATALOG, Limits(max_job_cost=sum(costs) - 1))


def _img2img(axis: PlotAxis) -> XYZPlotRequest:
    return XYZPlotRequest(Img2ImgRequest("a cat", Image.new("RGB", (64, 64)), sampling=Sampling(steps=2)), axis)


@pytest.mark.parametrize(("plot", "message"), [
    (_plot(PlotAxis("prompt_order", "cat, dog, mat, lake, a")),
     "X values (Prompt order): 5 terms give 120 orders; an axis may have at most 64 values, so list at most 4 "
     "terms."),
    (_plot(PlotAxis("prompt_order", ", ".join(f"t{i}" for i in range(30)))),
     "X values (Prompt order): 30 terms give 30! orders; an axis may have at most 64 values, so list at most 4 "
     "terms."),
    (_plot(PlotAxis("prompt_order", "cat, dog, mat, lake"), PlotAxis("steps", "1-3")),
     "The plot has 24×3 = 72 cells; the limit is 64."),
    (_plot(PlotAxis("prompt_order", "cat, dog, cat")), "X values (Prompt order): 'cat' is listed twice; list each "
                                                       "term once."),
    (_plot(PlotAxis("prompt_order", "cat, horse, cow")), "Prompt order did not find 'horse', 'cow' in the prompt."),
    (_plot(PlotAxis("prompt_order", "blurry, cat")), "Prompt order did not find 'blurry' in the prompt."),
    (_plot(PlotAxis("prompt_order", "a cat, cat and")), "Prompt order: 'a cat' and 'cat and' overlap in the "
                                                        "prompt; list terms that do not."),
    (_plot(PlotAxis("prompt_order", (("cat", "dog"), ("cat", "mat")))),
     "X values (Prompt order): every order must list the same terms as the first, ['cat', 'dog']."),
    (_plot(PlotAxis("prompt_order", (("cat",) * 30_000, ("dog",) * 30_000))),
     f"X values (Prompt order): every order must list the same terms as the first, {str(['cat'] * 30_000)[:60]}...."),
    (_plot(PlotAxis("eta", "0, 0.5")), "Eta changes only DDIM, and no cell of this plot runs it; choose DDIM as the "
                                       "sampler or add it to a Sampler axis."),
    (_plot(PlotAxis("eta", "0, 2"), sampler="DDIM"), "Eta: 2: Eta must be between 0 and 1, got 2.0."),
    (_plot(PlotAxis("eta", "some")), "X values (Eta): 'some' is not a number or a range such as 10-40 (+10)."),
    (_plot(PlotAxis("hires_steps", "1, 200")), "Hires steps: 200: Hires steps must be between 1 and 150, got 200."),
    (_plot(PlotAxis("hires_steps", "2.5")), "X values (Hires steps): '2.5' is not a whole number or a range such "
                                            "as 10-40 (+10)."),
    (_plot(PlotAxis("hires_upscaler", "Lanczos, ESRGAN_4x, Nearest")),
     "X values (Hires upscaler): Unknown hires upscaler(s) 'ESRGAN_4x', 'Nearest'; choose from: Latent, "
     "Latent (nearest-exact), Lanczos, SD2 x4."),
    (_plot(PlotAxis("hires_sampler", ("Euler", "LMS"))),
     "X values (Hires sampler): Unknown sampler(s) 'LMS'; choose from: DPM++ 2M, Euler a, Euler, DDIM, UniPC, "
     "DPM++ 2M SDE, Heun."),
    (_img2img(PlotAxis("hires_steps", "1, 2")), "Hires steps varies only a text-to-image plot with the hires fix; "
                                                "remove the init image."),
    (_img2img(PlotAxis("hires_upscaler", "Lanczos")), "Hires upscaler varies only a text-to-image plot with the "
                                                      "hires fix; remove the init image."),
])
def test_new_axes_refuse_bad_values_in_words(plot: XYZPlotRequest, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate(plot, CATALOG, Limits())
    assert str(caught.value) == message


def test_sampler_axes_read_names_as_a1111_s_plot_does() -> None:
    """A1111's X/Y/Z plot reads a sampler axis's names in any case (scripts/xyz_grid.py, `apply_sampler` and
    `apply_hr_sampler_name` through `samplers_map`), as the A1111 API and a pasted text read them here
    (`a1111_samplers.sampler_named`); a name we do not have is refused as it was typed."""
    checked, _ = validate(_plot(PlotAxis("sampler", "euler, ddim"), PlotAxis("hires_sampler", "dpm++ 2m")), CATALOG)
    assert (checked.x.values, checked.y.values) == (("Euler", "DDIM"), ("DPM++ 2M",))
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert [(c.request.sampling.sampler, c.request.hires.sampler) for c in cells] == [
        ("Euler", "DPM++ 2M"), ("DDIM", "DPM++ 2M")]
    with pytest.raises(InvalidRequest) as error:
        validate(_plot(PlotAxis("sampler", "euler, lcm")), CATALOG)
    assert str(error.value).startswith("X values (Sampler): Unknown sampler(s) 'lcm'; choose from: ")


def test_a_sampler_with_its_schedule_in_its_name_is_refused_saying_what_to_pick() -> None:
    """A list pasted from A1111 before 1.9, whose samplers carried their schedule ("DPM++ 2M Karras"): A1111's plot
    since 1.9 refuses those names ("Unknown sampler"); here the refusal names the sampler and where the schedule is
    set, for a hires sampler axis too. A name that is not ours with a schedule stays unknown."""
    with pytest.raises(InvalidRequest) as error:
        validate(_plot(PlotAxis("sampler", "Euler a, DPM++ 2M Karras")), CATALOG)
    assert str(error.value) == (
        "X values (Sampler): 'DPM++ 2M Karras' is DPM++ 2M with the Karras schedule in its name, as A1111 named it "
        "before 1.9; pick DPM++ 2M and set its Schedule type (or vary it on a Schedule type axis).")
    with pytest.raises(InvalidRequest, match=r"^Y values \(Hires sampler\): 'euler karras' is Euler with the Karras "):
        validate(_plot(PlotAxis("steps", "1"), PlotAxis("hires_sampler", "euler karras")), CATALOG)
    with pytest.raises(InvalidRequest, match=r"^X values \(Sampler\): 'Euler SGM Uniform' is Euler with the SGM "
                                             r"Uniform schedule in its name"):
        validate(_plot(PlotAxis("sampler", "Euler SGM Uniform")), CATALOG)
    with pytest.raises(InvalidRequest, match=r"^X values \(Sampler\): Unknown sampler\(s\) 'LCM Karras'; choose"):
        validate(_plot(PlotAxis("sampler", "Euler, LCM Karras")), CATALOG)


def test_a_hires_upscaler_axis_reads_names_as_every_hires_upscaler_is_read() -> None:
    """Any case, and the x4 upscaler by its checkpoint's key or label too (`upscaler_names.hires_upscaler_named`,
    the one reading of the A1111 API's hr_upscaler and the web UI's hires_upscaler); others refused as typed."""
    checked, _ = validate(_plot(PlotAxis("hires_upscaler", "lanczos, x4 upscaler, X4-UPSCALER, sd2 x4")), CATALOG)
    assert checked.x.values == ("Lanczos", "SD2 x4", "SD2 x4", "SD2 x4")
    with pytest.raises(InvalidRequest) as error:
        validate(_plot(PlotAxis("hires_upscaler", "lanczos, ESRGAN_4x")), CATALOG)
    assert str(error.value).startswith("X values (Hires upscaler): Unknown hires upscaler(s) 'ESRGAN_4x'; ")


BOOK = StyleBook((PromptStyle("oil", "oil painting", "photo"), PromptStyle("frame", "a picture of {prompt}", "")))


def test_styles_axis_applies_the_hosts_styles_named_by_each_value() -> None:
    """A1111's Styles axis: a value applies each style it names between commas, in order; the host's styles only
    (`StyleBook.picked`'s refusal, prefixed by the axis); no Styles axis where the host has no styles."""
    checked, _ = validate_plot(_plot(PlotAxis("styles", 'oil, "frame, oil"')), CATALOG, Limits(), BOOK)
    cells, _ = plan_cells(checked, CATALOG, Limits(), BOOK)
    assert [(c.request.prompt, c.request.negative_prompt, c.labels[0]) for c in cells] == [
        (f"{PROMPT}, oil painting", "a blurry cat, photo", "Styles: oil"),
        (f"a picture of {PROMPT}, oil painting", "a blurry cat, photo", "Styles: frame, oil")]
    with pytest.raises(InvalidRequest) as refused:
        validate_plot(_plot(PlotAxis("styles", ("oil", "watercolor"))), CATALOG, Limits(), BOOK)
    assert str(refused.value) == "X values (Styles): Unknown style 'watercolor'; this server's styles: 'oil', 'frame'."
    with pytest.raises(InvalidRequest) as refused:
        validate_plot(_plot(PlotAxis("styles", ())), CATALOG, Limits(), BOOK)
    assert str(refused.value) == "X values (Styles) are empty: pick one or more styles."
    with pytest.raises(InvalidRequest) as refused:
        validate_plot(_plot(PlotAxis("styles", "oil")), CATALOG, Limits())
    assert str(refused.value).startswith("Unknown X axis 'styles'; choose one of: sampler, steps,")
    assert str(refused.value).endswith(", hires_sampler, prompt_order.")


def test_the_services_validate_reads_a_styles_plot_with_the_hosts_styles() -> None:
    """`Service.validate` of a plot checks it as running it does (`Service.check_plot`, the host's styles): it
    refused a Styles axis as unknown, checking the plot without them."""
    checked, _ = fake_service(styles=BOOK).validate(_plot(PlotAxis("styles", ("oil", "frame"))))
    assert checked.x == PlotAxis("styles", ("oil", "frame"))
