"""What a History refresh costs (sd2_app/ui/history.py): the visitor's entries as the files the gallery shows.

Fills a Service's history with `--entries` results of one photo-like image each (`bench.request.photo_like`,
512x512 by default), kept through the real `ResultKeeper.keep` (watermark, XMP marker, one PNG encode; saving
off), then times the History tab's refresh function (`_rows`: the rows and the shown files in Gradio's cache).
The first refresh writes the files; the later ones find them there. Gradio's cache is a temporary folder. Run
from the repository root: `python -m bench.history --entries 10 50 [--out history.json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Any

from bench.request import photo_like

OWNER = "bench-visitor"


class _Visitor:
    """The History view's `Visitors`: every request is the one visitor who made the entries."""

    def identify(self, request: Any) -> str:
        return OWNER


def _filled_service(entries: int, size: int) -> Any:  # -> Service
    from sd2_app.api.requests import Txt2ImgRequest
    from sd2_app.api.results import Result
    from sd2_app.api.service import Service

    service = Service(None, outputs_dir=None, history_size=entries)
    for seed in range(entries):
        image = photo_like(size, seed)
        image.info["parameters"] = f"a photo\nSteps: 25, Seed: {seed}, Size: {size}x{size}"
        request = Txt2ImgRequest(prompt="a photo", width=size, height=size)
        service.keeper.keep(Result("txt2img", request, [image], seed), OWNER)
    return service


def refresh_seconds(entries: int, size: int, reps: int) -> dict[str, float]:
    """Seconds of the first refresh and the median of `reps` later ones, for `entries` entries."""
    from sd2_app.ui.history import _rows

    service = _filled_service(entries, size)
    started = time.perf_counter()
    images, rows = _rows(service, _Visitor(), None)
    first = time.perf_counter() - started
    assert len(images) == len(rows) == entries
    later = []
    for _ in range(reps):
        started = time.perf_counter()
        _rows(service, _Visitor(), None)
        later.append(time.perf_counter() - started)
    return {"first": first, "later": statistics.median(later)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRADIO_TEMP_DIR"] = cache  # read by gradio.utils.get_upload_folder on each call
        for entries in args.entries:
            seconds = refresh_seconds(entries, args.size, args.reps)
            rows.append({"entries": entries, "size": args.size, "reps": args.reps, **seconds})
            print(f"{entries} entries at {args.size}: first refresh {seconds['first'] * 1e3:.1f} ms, "
                  f"later refreshes {seconds['later'] * 1e3:.2f} ms (median of {args.reps})")
    if args.out:
        machine = {"cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()}
        with open(args.out, "w", encoding="utf-8") as out:
            json.dump({"machine": machine, "refreshes": rows}, out, indent=1)


if __name__ == "__main__":
    main()
