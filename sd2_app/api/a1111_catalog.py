"""The A1111 API's read-only routes: what the server offers (checkpoints, samplers, schedulers, the hires fix's
latent upscale modes, embeddings, the host's prompt styles, the LoRAs, and empty lists of scripts, separate VAEs,
hypernetworks, face restorers, Real-ESRGAN models and extensions; a refresh of the embeddings or LoRAs reads their
folder again where its files changed, one of the checkpoints or VAEs, fixed here, changes nothing), `/png-info`, which reads an image's parameters, and
`/interrogate`, which this server does not offer (501 in A1111's error body, `INTERROGATE_MESSAGE`).

None of them touches the GPU or takes a job's place. Shapes: A1111's modules/api/models.py (SDModelItem,
SamplerItem, PromptStyleItem, SchedulerItem, EmbeddingsResponse, PNGInfoResponse) and modules/api/api.py
(`pnginfoapi`: the text, the PNG's text items and the parsed fields).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from sd2_app.api import a1111
from sd2_app.api.a1111_errors import a1111_error, errors_as_http
from sd2_app.api.a1111_samplers import scheduler_items
from sd2_app.api.requests import LATENT_UPSCALERS
from sd2_app.infotext_keys import PARAMETERS_KEY
from sd2_app.pipelines.metadata import PNG_SIGNATURE
from sd2_app.prompt_styles import with_styles_read

if TYPE_CHECKING:
    from sd2_app.api.a1111_routes import A1111Api

log = logging.getLogger(__name__)

INTERROGATE_MESSAGE = ("This server does not interrogate images (/sdapi/v1/interrogate, CLIP or DeepBooru): it has no "
                       "interrogation model. Write the prompt yourself; /sdapi/v1/png-info reads the prompt of an "
                       "image this server or A1111 made.")


def catalog_routes(router: APIRouter, api: A1111Api) -> None:
    """/sd-models, /samplers, /schedulers, /scripts, /prompt-styles, /sd-vae, /latent-upscale-modes, /embeddings
    and /refresh-embeddings, /refresh-checkpoints, /loras and /refresh-loras (`lora_routes`), and /interrogate's
    refusal (/upscalers: `a1111_extras`; the empty lists: `none_here_routes`)."""
    catalog = api.service.catalog
    names = api.service.samplers

    @router.get("/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        return [{"title": key, "model_name": key, "hash": None, "sha256": None,
                 "filename": catalog.labels.get(key, key), "config": None} for key in catalog.tasks]

    @router.get("/samplers")
    def samplers() -> list[dict[str, Any]]:
        return [{"name": name, "aliases": [], "options": {}} for name in names()]

    @router.get("/schedulers")
    def schedulers() -> list[dict[str, Any]]:
        return scheduler_items()

    @router.get("/scripts")
    def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    @router.get("/prompt-styles")
    def prompt_styles() -> list[dict[str, Any]]:
        # A1111's PromptStyleItem; the host's --styles file, which visitors cannot change
        return [{"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
                for style in api.service.styles.styles]

    @router.get("/sd-vae")
    def sd_vae() -> list[dict[str, Any]]:
        return []  # each checkpoint uses its own VAE (A1111's "Automatic")

    @router.get("/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict[str, str]]:
        # A1111's LatentUpscalerModeItem: the hires fix's upscalers on the latents, which `hr_upscaler` takes
        # (besides Lanczos and /upscalers' SD2 x4)
        return [{"name": name} for name in LATENT_UPSCALERS]

    lora_routes(router, api)

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        return None  # the catalog, --checkpoints-dir files included, is read at start-up: nothing to look for again

    @router.get("/embeddings")
    def embeddings() -> dict[str, dict[str, dict[str, Any]]]:
        return embeddings_response(api)

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        api.service.embedding_library(refresh=True)  # the folder read again now if its files changed

    @router.post("/interrogate")
    def interrogate() -> JSONResponse:
        # 501 Not Implemented: the route exists in A1111's API, this server has nothing behind it (it was a 404,
        # which A1111 clients report as a missing server or a wrong URL). The body is not read.
        return a1111_error(501, INTERROGATE_MESSAGE)


def none_here_routes(router: APIRouter) -> None:
    """A1111's lists of what this server does not have, empty (a client that lists them when it connects gets
    "none", not 404): /hypernetworks, /face-restorers, /realesrgan-models (the x4 upscaler is in /upscalers),
    /script-info, /extensions; and /refresh-vae (null: each checkpoint has its own VAE, nothing to look for).
    Shapes: A1111's modules/api/api.py and models.py (HypernetworkItem, FaceRestorerItem, RealesrganItem,
    ScriptInfo, ExtensionItem)."""
    for path in ("/hypernetworks", "/face-restorers", "/realesrgan-models", "/script-info", "/extensions"):
        router.add_api_route(path, _none_here, methods=["GET"])

    @router.post("/refresh-vae")
    def refresh_vae() -> None:
        return None


def _none_here() -> list[dict[str, Any]]:
    return []


def lora_routes(router: APIRouter, api: A1111Api) -> None:
    """/loras: A1111's built-in Lora extension's list (extensions-builtin/Lora/scripts/lora_script.py,
    `create_lora_json`) with the file's name only as its path (the server's folders are not the client's
    business) and no training metadata (it can hold the whole dataset's captions); /refresh-loras."""

    @router.get("/loras")
    def loras() -> list[dict[str, Any]]:
        return [{"name": file.name, "alias": file.name, "path": file.path.name, "metadata": {}}
                for file in sorted(api.service.loras.library.files.values(), key=lambda file: file.name)]

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        api.service.loras.refresh()  # the folder read again now if its files changed (`LoraTools.refresh`)


def embeddings_response(api: A1111Api) -> dict[str, dict[str, dict[str, Any]]]:
    """A1111's EmbeddingsResponse: the textual-inversion embeddings a prompt may use (`loaded`) and the files of
    the embeddings folder that are not used (`skipped`, with our reason, which A1111's items lack)."""
    library = api.service.embedding_library()
    unknown = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
    loaded = {} if library is None else {
        name: {**unknown, "shape": int(embedding.vectors.shape[1]), "vectors": embedding.count}
        for name, embedding in sorted(library.embeddings.items())}
    skipped = {} if library is None else {file: {**unknown, "shape": None, "vectors": None, "reason": reason}
                                          for file, reason in sorted(library.refused.items())}
    return {"loaded": loaded, "skipped": skipped}


def png_info_routes(router: APIRouter, api: A1111Api) -> None:
    """/png-info: the `parameters` text of a PNG and its fields, as the web UI's PNG Info tab reads them; the reads
    are bounded as the web UI's are (`api.reads`, `sd2_app.api.quick_reads`)."""

    @router.post("/png-info")
    async def png_info(client: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return await api.reads.run(client, lambda: read_png_info(api, body))


def read_png_info(api: A1111Api, body: dict[str, Any]) -> dict[str, Any]:
    """A1111's PNGInfoResponse for a /png-info `body` (its `image`: base64, or a data URL)."""
    image = body.get("image")
    if isinstance(image, str) and not image.strip():
        return {"info": "", "items": {}, "parameters": {}}  # as A1111 answers an empty image
    data = errors_as_http(lambda: a1111.image_bytes(image.strip() if isinstance(image, str) else image, "image"))
    text, fields = None, {}
    if data.startswith(PNG_SIGNATURE):  # JPEG and WebP carry no PNG text chunks
        try:
            text, fields = api.service.read_parameters(io.BytesIO(data))
            fields = with_styles_read(fields, api.service.styles)  # as A1111's parse_generation_parameters
        except OSError as error:  # cut short, or a text chunk too long to be parameters
            log.info("A1111 API: png-info: %s", error)
    return {"info": text or "", "items": {PARAMETERS_KEY: text} if text else {}, "parameters": fields}
