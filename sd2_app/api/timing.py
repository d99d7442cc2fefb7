"""Where a request's time goes: the phases a `Result` records in `timings`, and the server log's line for them.

Every key is seconds of wall-clock time spent in one phase. The top-level phases follow each other, so their
sum is the time the request spent in the app; "preview" is the part of "run" spent making live previews.
The pipeline is "run"; everything else is the app's overhead around it (docs/PERFORMANCE.md, "The whole
request"). bench/request.py reads the log line this module writes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

log = logging.getLogger(__name__)

PIPELINE = "run"
# Each phase, in the order a request meets it, with what it covers.
PHASES = {
    "queue": "waiting in Gradio's queue for a worker (web UI requests)",
    "validate": "checking the request (sizes, prompt length, cost)",
    "gate": "waiting at the GPU gate while another job runs",
    "load": "the model manager's check that the checkpoint is loaded (a load or swap when it is not)",
    "run": "the pipeline: prompt encoding, sampling, VAE decode, PIL images (live previews included)",
    "preview": "live previews, part of run: latents to a small RGB image (on a GPU this includes waiting for "
               "the steps queued before it, since the copy to the host waits for them)",
    "mark": "the invisible watermark and the AI-generated marker",
    "encode": "PNG encoding, once per image",
    "save": "numbering the saved files and writing them (or handing them to the background writer)",
    "history": "the history entry",
    "display": "the encoded PNGs put where Gradio serves them from (web UI requests)",
    "deliver": "Gradio's processing of the finished outputs until it asks the handler for more (web UI)",
}
PART_OF_RUN = frozenset({"preview"})
LINE_PREFIX = "request timings"  # the log line bench/request.py looks for


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the body's wall-clock seconds to `timings[phase]`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - started


def in_app(timings: Mapping[str, float]) -> float:
    """Seconds the request spent in the app: the sum of its top-level phases."""
    return sum(seconds for phase, seconds in timings.items() if phase in PHASES and phase not in PART_OF_RUN)


def overhead(timings: Mapping[str, float]) -> float:
    """Seconds outside the pipeline."""
    return in_app(timings) - timings.get(PIPELINE, 0.0)


def summary(timings: Mapping[str, float]) -> str:
    """The info line's timing text: the load, the pipeline ("run") and the app's overhead, in seconds."""
    shown = [(phase, timings[phase]) for phase in ("load", PIPELINE, "total") if phase in timings]
    if PIPELINE in timings and any(phase in timings for phase in ("encode", "save", "mark")):
        shown.append(("app", overhead(timings) - timings.get("load", 0.0)))
    return ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in shown)


def log_split(task: str, timings: Mapping[str, float]) -> None:
    """One server log line per request: total, pipeline, overhead, and every phase as JSON."""
    pipeline = timings.get(PIPELINE, 0.0)
    extra = overhead(timings)
    share = f"{100.0 * extra / pipeline:.1f} % of the pipeline" if pipeline > 0 else "no pipeline"
    phases = {phase: round(seconds, 6) for phase, seconds in timings.items()}
    log.info("%s %s: %.3f s in the app, pipeline %.3f s, overhead %.3f s (%s): %s", LINE_PREFIX, task,
             in_app(timings), pipeline, extra, share, json.dumps(phases))
