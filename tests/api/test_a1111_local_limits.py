"""The A1111 API's per-address job limit on a local app: the default limit applies in public modes only
(`sd2_app.app_flags.parse_args`), so a local script may run more concurrent API jobs than a public address may.
Through app.py's app (`sd2_app.webapp.build`) served in-process on loopback, on the tiny checkpoints."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sd2_app.app_flags import DEFAULT_MAX_JOBS_PER_ADDRESS
from tests.hosting_support import API_FAST, interrupt_api_jobs, wait_for_api_jobs
from tests.reliability_support import serve


@pytest.mark.slow
def test_a_local_app_takes_more_concurrent_api_jobs_from_loopback_than_the_public_limit(tmp_path) -> None:
    """app.py's app on loopback (`--tiny`, no --max-jobs-per-address): the per-address limit applies in public
    modes only, so a local script's 7 concurrent API jobs (more than the public default, 6) all wait or run."""
    sent = DEFAULT_MAX_JOBS_PER_ADDRESS + 1
    body = {"prompt": "local", **API_FAST, "steps": 150}

    cache = tmp_path / "cache"
    cache.mkdir()
    with serve(["--tiny", "--device", "cpu", "--no-save", "--queue-size", str(sent + 1)], cache) as (url, demo), \
            ThreadPoolExecutor(sent) as pool:
        futures = [pool.submit(httpx.post, f"{url}sdapi/v1/txt2img", json={**body, "seed": seed}, timeout=300)
                   for seed in range(sent)]
        try:
            assert wait_for_api_jobs(url, lambda jobs: jobs == sent or any(f.done() for f in futures)) == sent
            assert demo.flags.visitors.job_admission.count("127.0.0.1") == sent  # type: ignore[attr-defined]
        finally:
            interrupt_api_jobs(url, sent)
        answers = [future.result(timeout=120) for future in futures]
    assert [answer.status_code for answer in answers] == [200] * sent, [answer.text[:200] for answer in answers]
