"""A few hundred hostile uploads (the reliability suite's fuzzed images): each gets a 2xx or a JSON 4xx, a good
request still gets the right answer afterwards, and resident memory stays within 100 MB of the warmed-up server."""

from __future__ import annotations

import gc
import os
import sys
from collections import Counter
from pathlib import Path

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from sedensenet.serve import create_app

from .conftest import png_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from test_hostile_images import SEEDS, hostile_files  # noqa: E402

REQUESTS = 300
MEMORY_GROWTH_LIMIT = 100 * 1024 * 1024


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_hostile_requests_do_not_break_or_bloat_the_server(run_dir: Path) -> None:
    good = png_bytes(42)
    with TestClient(create_app(run_dir, backend="eager", max_pixels=4_000_000)) as c:
        expected = c.post("/v1/predict?top_k=3", files=[("file", ("good.png", good, "image/png"))]).json()
        for name, (suffix, data) in SEEDS.items():  # warm-up: every decoder and both endpoints once
            assert c.post("/v1/predict", files=[("file", (name + suffix, data, "image/png"))]).status_code == 200
            assert c.post("/v1/explain", files=[("file", (name + suffix, data, "image/png"))]).status_code == 200
        gc.collect()
        baseline = resident_bytes()
        statuses: Counter[int] = Counter()

        @settings(max_examples=REQUESTS, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=hostile_files())
        def send(case: tuple[str, bytes]) -> None:
            suffix, data = case
            n = sum(statuses.values())
            if n % 3 == 0:  # a third as raw bodies, the rest as multipart; every tenth asks for an explanation
                r = c.post("/v1/predict", content=data, headers={"content-type": "application/octet-stream"})
            else:
                path = "/v1/explain" if n % 10 == 1 else "/v1/predict"
                r = c.post(path, files=[("file", (f"hostile{suffix}", data, "application/octet-stream"))])
            statuses[r.status_code] += 1
            assert r.status_code in (200, 415, 422), r.text
            if r.status_code != 200:
                body = r.json()
                assert set(body) >= {"error", "detail"} and body["detail"]

        send()
        assert sum(statuses.values()) >= REQUESTS
        assert statuses[415] and statuses[422], statuses  # the fuzzing did reach both kinds of refusal
        after = c.post("/v1/predict?top_k=3", files=[("file", ("good.png", good, "image/png"))]).json()
        assert after == expected
        gc.collect()
        grown = resident_bytes() - baseline
        assert grown <= MEMORY_GROWTH_LIMIT, f"resident memory grew {grown / 2**20:.0f} MB over {statuses}"
