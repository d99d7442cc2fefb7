"""One reading of the upscalers' names, wherever a name is given: the hires fix's upscaler (checked for every caller
in `txt2img_options.check_hires`; the A1111 API's `hr_upscaler` and the X/Y/Z plot's typed values may spell it
otherwise, the web UI's dropdown and the CLI take the listed names only) and the A1111 API's extras upscaler
(`/extra-single-image`'s `upscaler_1` and the names `/sdapi/v1/upscalers` lists).

The x4 upscaler is called "SD2 x4" (`X4_UPSCALER`) everywhere, and is also read by the key and the label of the
checkpoint it runs on ("x4-upscaler", "x4 upscaler"). Names are read in any case, as sampler names are here (A1111
itself matches upscaler names exactly, so every name an A1111 client sends reads the same).
"""

from __future__ import annotations

from typing import Any

from sd2_app.api.a1111_resize import RESAMPLING
from sd2_app.api.checks import Catalog
from sd2_app.api.requests import HIRES_UPSCALERS, X4_UPSCALER

# A1111's extras upscaler that does nothing (modules/upscaler.py, UpscalerNone), its API's default `upscaler_1`:
# the image comes back as it was (scripts/postprocessing_upscale.py, `process`).
NO_UPSCALER = "None"


def x4_checkpoint(catalog: Catalog) -> str | None:
    """The checkpoint the "SD2 x4" upscaler runs on: the first one that can upscale."""
    return next((key for key, tasks in catalog.tasks.items() if "upscale" in tasks), None)


def _is_x4(name: str, catalog: Catalog) -> bool:
    key = x4_checkpoint(catalog)
    names = {X4_UPSCALER} | ({key, catalog.labels.get(key, key)} if key is not None else set())
    return name.casefold() in {known.casefold() for known in names}


def hires_upscaler_named(name: Any, catalog: Catalog) -> str | None:
    """The hires upscaler (one of HIRES_UPSCALERS) `name` means; None when it means none."""
    if not isinstance(name, str):
        return None
    if _is_x4(name, catalog):
        return X4_UPSCALER
    return next((upscaler for upscaler in HIRES_UPSCALERS if upscaler.casefold() == name.casefold()), None)


def extras_upscalers(catalog: Catalog) -> dict[str, str | None]:
    """The A1111 API's extras upscalers, in A1111's order: name -> the checkpoint it runs on (None: `NO_UPSCALER`
    and the resampling upscalers, `sd2_app.api.a1111_resize`, run none)."""
    listed: dict[str, str | None] = {NO_UPSCALER: None, **dict.fromkeys(RESAMPLING)}
    for key, tasks in catalog.tasks.items():
        if "upscale" in tasks:
            listed[X4_UPSCALER if key == x4_checkpoint(catalog) else catalog.labels.get(key, key)] = key
    return listed


def resampler_named(name: Any) -> str | None:
    """The resampling upscaler (`sd2_app.api.a1111_resize.RESAMPLING`) `name` means, in any case; None when it
    means none."""
    if not isinstance(name, str):
        return None
    return next((listed for listed in RESAMPLING if listed.casefold() == name.casefold()), None)


def is_no_upscaler(name: Any) -> bool:
    """`upscaler_1` left out (A1111's default is "None"), null or "None": no upscaler runs."""
    return name is None or (isinstance(name, str) and name.casefold() == NO_UPSCALER.casefold())


def extras_upscaler_named(name: str, catalog: Catalog) -> str | None:
    """The checkpoint the extras upscaler `name` runs on: a name `extras_upscalers` lists, or the x4 checkpoint's
    key or label; None when it names none of them, or one that runs none ("None": `is_no_upscaler`; a resampling
    upscaler: `resampler_named`)."""
    if _is_x4(name, catalog):
        return x4_checkpoint(catalog)
    return next((key for listed, key in extras_upscalers(catalog).items() if listed.casefold() == name.casefold()),
                None)
