"""The plain `vllm serve` peer runs the engine arguments a Headrace vLLM
pool runs: its flags, read back by vLLM's own argument parser, give the
same AsyncEngineArgs values."""

from __future__ import annotations

from bench.engine import engine_settings
from bench.vllm_serve_peer import serve_arguments, side_summary
from services.worker.engines.vllm_engine import engine_args


def test_serve_flags_parse_back_to_the_pools_engine_arguments() -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())  # type: ignore[no-untyped-call]
    parsed = parser.parse_args(["--model", "/models/smollm2", *serve_arguments("/models/smollm2", 48)])
    expected = engine_args(engine_settings(48), "/models/smollm2")
    for key, value in expected.items():
        if key == "disable_log_stats":  # the peer's server sets it on the command line itself
            continue
        assert getattr(parsed, key) == value, key


def test_a_sides_summary_is_the_mean_of_its_runs_and_counts_every_failure() -> None:
    runs = [
        {"request_throughput": 2.0, "output_throughput": 100.0, "mean_ttft_ms": 50.0, "p99_ttft_ms": 80.0,
         "mean_tpot_ms": 20.0, "p99_tpot_ms": 30.0, "failed": 1, "completed": 63},
        {"request_throughput": 4.0, "output_throughput": 300.0, "mean_ttft_ms": 70.0, "p99_ttft_ms": 90.0,
         "mean_tpot_ms": 22.0, "p99_tpot_ms": 34.0, "failed": 0, "completed": 64},
    ]  # fmt: skip
    summary = side_summary(runs)
    assert summary["output_throughput"] == 200.0 and summary["mean_ttft_ms"] == 60.0
    assert summary["failed"] == 1 and summary["completed"] == 127
