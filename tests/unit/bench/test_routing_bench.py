"""The routing benchmark's mesh configs validate, and its workload is the
mix it says."""

import pytest

from bench.routing import EASY, HARD, mesh_config, workload
from headrace.runtime.config import Settings


@pytest.mark.parametrize("engine", ["synthetic", "vllm"])
def test_mesh_configs_validate(engine: str) -> None:
    settings = Settings(**mesh_config(engine))
    assert set(settings.routing.routes) == ({"auto"} if engine == "synthetic" else {"auto", "cascade"})
    fast = settings.models["fast"].versions["1"]
    accurate = settings.models["accurate"].versions["1"]
    fast_price = fast.price_per_hour or settings.pools[fast.pool].price_per_hour
    accurate_price = accurate.price_per_hour or settings.pools[accurate.pool].price_per_hour
    assert fast_price < accurate_price


def test_the_workload_mixes_labelled_requests_reproducibly() -> None:
    jobs = workload(60, 0.5, seed=7)
    assert sum(job.hard for job in jobs) == 30
    assert {job.prompt for job in jobs if job.hard} <= set(HARD)
    assert {job.prompt for job in jobs if not job.hard} <= set(EASY)
    assert jobs == workload(60, 0.5, seed=7) and jobs != workload(60, 0.5, seed=8)
