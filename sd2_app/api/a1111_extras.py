"""The A1111 API's extras: `/extra-single-image` and `/extra-batch-images` (A1111's modules/api/api.py
`extras_single_image_api`, `extras_batch_images_api`; their ExtrasSingleImageRequest / ExtrasBatchImagesRequest
and responses) and `/upscalers` (UpscalerItem), by the upscaler names of `sd2_app.api.upscaler_names`.

`upscaler_1` "None" (A1111's default, and webuiapi's) runs no upscaler: the image comes back as it was, whatever
`upscaling_resize` says (A1111's scripts/postprocessing_upscale.py, `process`). That answer needs no GPU, so it
waits with the PNG info reads (`A1111Api.reads`, bounded per address and in all) rather than for a job's place.
"Lanczos" and "Nearest" resize the image as A1111's do (`sd2_app.api.a1111_resize`), on the CPU, in the same
queue as "None". "SD2 x4" runs the x4 upscaler as a job (`A1111Api.run`), at 4x only.

A batch (`imageList`: `{data, name}` items, at most `Limits.max_images`) is each image as `/extra-single-image`
would answer it with the same settings, in order: the resamplers' in one read, the x4 upscaler's one job after
another (each holding a job place while it waits and runs; a client that leaves stops the one running).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Body, Request

from sd2_app.api import requests as rq
from sd2_app.api.a1111 import Job, decode_image
from sd2_app.api.a1111_disconnects import run_while_connected
from sd2_app.api.a1111_errors import errors_as_http
from sd2_app.api.a1111_resize import resampled, resize_plan
from sd2_app.api.image_inputs import checked_image
from sd2_app.api.outputs import fast_png
from sd2_app.api.upscaler_names import extras_upscaler_named, extras_upscalers, is_no_upscaler, resampler_named
from sd2_app.errors import InvalidRequest, shown

if TYPE_CHECKING:
    from sd2_app.api.a1111_routes import A1111Api

T = TypeVar("T")


def upscaler_checkpoint(api: A1111Api, name: Any) -> str | None:
    """The checkpoint the extras upscaler `name` runs on; None for "None" (or left out), which runs none. A name
    /upscalers lists (any case), or an upscale checkpoint's key, label or A1111 title (`A1111Api.resolve`)."""
    if is_no_upscaler(name):
        return None
    catalog = api.service.catalog
    key = extras_upscaler_named(name, catalog) if isinstance(name, str) else None
    if key is None:
        try:
            key = api.resolve(name)
        except InvalidRequest:
            key = None
    if key is None or "upscale" not in catalog.tasks.get(key, ()):
        offered = ", ".join(repr(listed) for listed in extras_upscalers(catalog))
        raise InvalidRequest(f"Unknown upscaler {shown(str(name))}; this server has {offered} "
                             "(see /sdapi/v1/upscalers).")
    return key


def upscale_job(body: Mapping[str, Any], checkpoint: str) -> Job:
    """The x4 upscaler's job (4x only, no prompt: A1111's extras have none)."""
    if body.get("resize_mode", 0) != 0 or body.get("upscaling_resize", 4) != 4:
        raise InvalidRequest("Only 4x upscaling is available (upscaling_resize 4, resize_mode 0).")
    image = decode_image(body.get("image"), "image")
    request = rq.UpscaleRequest(prompt="", image=image, checkpoint=checkpoint)
    return Job("upscale", request, checkpoint)


def cpu_answer(body: Mapping[str, Any], resampler: str | None, max_input_pixels: int,
               max_output_pixels: int) -> dict[str, Any]:
    """The answer of an upscaler that needs no GPU: `image`, checked as an upscale's input is, back as an RGB PNG
    (A1111 converts its extras' input to RGB too: modules/postprocessing.py), unchanged with no upscaler (None)
    or resized by a resampling upscaler to at most `max_output_pixels`."""
    image = checked_image(decode_image(body.get("image"), "image"), "the image", max_input_pixels)
    if resampler is not None:
        image = resampled(image, resampler, resize_plan(image.width, image.height, body, max_output_pixels))
    return {"html_info": "", "image": base64.b64encode(fast_png(image)).decode("ascii")}


def batch_items(body: Mapping[str, Any], max_images: int) -> list[dict[str, Any]]:
    """`/extra-batch-images`' images as single-image requests with the batch's settings; InvalidRequest for an
    `imageList` that is not a list of 1 to `max_images` `{data, name}` items."""
    items = body.get("imageList")
    if not isinstance(items, list) or not 1 <= len(items) <= max_images:
        raise InvalidRequest(f"imageList must list 1 to {max_images} images, each {{\"data\": base64, \"name\": "
                             "text}.")
    settings = {name: value for name, value in body.items() if name != "imageList"}
    singles = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, Mapping) or "data" not in item:
            raise InvalidRequest(f"imageList item {number} must be {{\"data\": base64, \"name\": text}}.")
        singles.append({**settings, "image": item["data"]})
    return singles


def item_of(number: int, answer: Callable[[], T]) -> T:
    """`answer()` for the batch's image `number`, whose refusal says which image it was."""
    try:
        return answer()
    except InvalidRequest as error:
        raise InvalidRequest(f"imageList item {number}: {error}") from error


def extras_routes(router: APIRouter, api: A1111Api) -> None:
    """/extra-single-image, /extra-batch-images and /upscalers."""

    @router.post("/extra-single-image")
    async def extra_single_image(client: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        resampler = resampler_named(body.get("upscaler_1"))
        key = None if resampler else errors_as_http(lambda: upscaler_checkpoint(api, body.get("upscaler_1")))
        if key is None:
            max_pixels = api.service.limits.max_input_pixels  # a resize makes at most what the server takes in
            answer = partial(cpu_answer, body, resampler, max_pixels, max_pixels)
            return await api.reads.run(client, lambda: errors_as_http(answer))

        def call(stop: threading.Event) -> dict[str, Any]:
            out = api.run("upscale", lambda: upscale_job(body, key), body, client, stop)
            return {"html_info": "", "image": out["images"][0] if out["images"] else None}

        return await run_while_connected(client, lambda stop: errors_as_http(lambda: call(stop)))

    @router.post("/extra-batch-images")
    async def extra_batch_images(client: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        singles = errors_as_http(lambda: batch_items(body, api.service.limits.max_images))
        resampler = resampler_named(body.get("upscaler_1"))
        key = None if resampler else errors_as_http(lambda: upscaler_checkpoint(api, body.get("upscaler_1")))
        if key is None:
            max_pixels = api.service.limits.max_input_pixels

            def answers() -> list[str]:
                return [item_of(n, lambda: cpu_answer(one, resampler, max_pixels, max_pixels)["image"])
                        for n, one in enumerate(singles, start=1)]

            return {"html_info": "", "images": await api.reads.run(client, lambda: errors_as_http(answers))}

        def call(stop: threading.Event) -> list[Any]:
            made = [item_of(n, lambda: api.run("upscale", lambda: upscale_job(one, key), one, client, stop)["images"])
                    for n, one in enumerate(singles, start=1)]
            return [images[0] if images else None for images in made]

        return {"html_info": "", "images": await run_while_connected(client, lambda stop: errors_as_http(
            lambda: call(stop)))}

    @router.get("/upscalers")
    def upscalers() -> list[dict[str, Any]]:
        # "scale": A1111's UpscalerData default (4) but for "None", which scales nothing
        listed = extras_upscalers(api.service.catalog)
        return [{"name": name, "model_name": key, "model_path": None, "model_url": None,
                 "scale": 1 if is_no_upscaler(name) else 4} for name, key in listed.items()]
