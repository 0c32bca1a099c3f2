"""make bench-engine, part 2: vLLM's own client against plain `vllm serve`
and against Headrace's gateway in front of the same engine, in one run.

The peer a user would pick is `vllm serve` of the model folder; the client
is vLLM's own `vllm bench serve` (random prompts of --input-len tokens,
exactly --output-len tokens out with ignore_eos, --concurrency at once),
pointed at each server's /v1/completions in turn. Both servers run the
engine arguments the Headrace pool's settings give (engine_args), on the
same prepared model folder, one after the other (two engines would fight
over the same cores), in the order plain, Headrace, plain, Headrace, so
drift in the machine shows up as a gap between a side's two runs.

Headrace runs as `headrace up` would: router with its HTTP gateway, cache
(exact; the semantic model stays off, as in part 1, since it would share
the engine's cores), scheduler, one vLLM worker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.engine import engine_settings, mesh_config
from bench.harness import markdown_table, running_mesh, write_results
from headrace.local.redis_server import free_port
from headrace.models.store import default_models_dir, model_path, prepare_model
from services.worker.engines.vllm_engine import engine_args, engine_environment

MODEL_NAME = "smollm2"
# What each side's row reports, from vLLM's result JSON.
METRICS = (
    ("request_throughput", "req/s"),
    ("output_throughput", "output tok/s"),
    ("mean_ttft_ms", "TTFT mean ms"),
    ("p99_ttft_ms", "TTFT p99 ms"),
    ("mean_tpot_ms", "TPOT mean ms"),
    ("p99_tpot_ms", "TPOT p99 ms"),
)


def serve_arguments(model: str, max_num_seqs: int) -> list[str]:
    """`vllm serve` flags for exactly the engine arguments a Headrace vLLM
    pool with these settings passes to vLLM."""
    flags: list[str] = []
    for key, value in engine_args(engine_settings(max_num_seqs), model).items():
        if key in ("model", "disable_log_stats"):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if key == "enable_prefix_caching":
                flags.append(flag if value else "--no-enable-prefix-caching")
            elif value:
                flags.append(flag)
        elif value is not None:
            flags += [flag, str(value)]
    return flags


@contextmanager
def plain_vllm_serve(model: str, max_num_seqs: int, log: Path) -> Iterator[str]:
    """`vllm serve MODEL` on 127.0.0.1, as a user would run it; its base URL."""
    port = free_port()
    env = {**os.environ, **engine_environment(engine_settings(max_num_seqs)), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "bench.vllm_cli", "serve", model, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--served-model-name", MODEL_NAME, "--disable-log-stats", *serve_arguments(model, max_num_seqs)]
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 600
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"vllm serve exited with {server.returncode}: see {log}")
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vllm serve not ready in 600 s: see {log}")
                time.sleep(1)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait()


def bench_serve(
    base_url: str, tokenizer: str, args: argparse.Namespace, result: Path, *, prompts: int
) -> dict[str, Any]:
    """One `vllm bench serve` run against base_url; vLLM's result JSON."""
    command = [
        sys.executable,
        "-m",
        "bench.vllm_cli",
        "bench",
        "serve",
        "--backend",
        "openai",
        "--base-url",
        base_url,
        "--endpoint",
        "/v1/completions",
        "--model",
        MODEL_NAME,
        "--tokenizer",
        tokenizer,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(args.input_len),
        "--random-output-len",
        str(args.output_len),
        "--num-prompts",
        str(prompts),
        "--max-concurrency",
        str(args.concurrency),
        "--ignore-eos",
        "--seed",
        str(args.seed),
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--result-dir",
        str(result.parent),
        "--result-filename",
        result.name,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(
            f"vllm bench serve failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def side_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """A side's mean over its runs, for each metric (and its failures)."""
    summary = {key: statistics.fmean(float(run[key]) for run in runs) for key, _ in METRICS}
    summary["failed"] = float(sum(int(run.get("failed", 0)) for run in runs))
    summary["completed"] = float(sum(int(run.get("completed", 0)) for run in runs))
    return summary


def run(args: argparse.Namespace) -> None:
    models_dir = Path(args.models_dir)
    prepare_model(MODEL_NAME, models_dir, progress=False)
    model = str(model_path(MODEL_NAME, models_dir))
    config = mesh_config(args.max_num_seqs)
    config["gateway"] = {"enabled": True}
    os.environ.setdefault("HEADRACE_MODELS_DIR", str(models_dir))
    runs: dict[str, list[dict[str, Any]]] = {"vllm serve": [], "Headrace gateway": []}
    with tempfile.TemporaryDirectory(prefix="headrace-vllm-peer-") as tmp:
        work = Path(tmp)
        for repetition in range(args.repetitions):
            for side in runs:
                print(f"{side}, run {repetition + 1} ...", flush=True)
                result = work / f"{side.replace(' ', '-')}-{repetition}.json"
                if side == "vllm serve":
                    with plain_vllm_serve(model, args.max_num_seqs, work / f"serve-{repetition}.log") as url:
                        bench_serve(url, model, args, work / "warm.json", prompts=args.concurrency)
                        runs[side].append(bench_serve(url, model, args, result, prompts=args.prompts))
                else:
                    with running_mesh(config) as mesh:
                        bench_serve(mesh.http_url, model, args, work / "warm.json", prompts=args.concurrency)
                        runs[side].append(bench_serve(mesh.http_url, model, args, result, prompts=args.prompts))
                last = runs[side][-1]
                print(
                    f"  {last['request_throughput']:.2f} req/s, TTFT mean {last['mean_ttft_ms']:.1f} ms, "
                    f"TPOT mean {last['mean_tpot_ms']:.2f} ms, failed {last.get('failed', 0)}",
                    flush=True,
                )
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    summaries = {side: side_summary(side_runs) for side, side_runs in runs.items()}
    plain, ours = summaries["vllm serve"], summaries["Headrace gateway"]
    rows = []
    for side, side_runs in runs.items():
        for i, one in enumerate(side_runs):
            rows.append([f"{side}, run {i + 1}", *(float(one[key]) for key, _ in METRICS), one.get("failed", 0)])
    for side, summary in summaries.items():
        rows.append([f"**{side}, mean**", *(summary[key] for key, _ in METRICS), int(summary["failed"])])
    throughput = ours["output_throughput"] / plain["output_throughput"]
    ttft = ours["mean_ttft_ms"] / plain["mean_ttft_ms"]
    tpot = ours["mean_tpot_ms"] - plain["mean_tpot_ms"]
    winner = "vllm serve" if throughput < 1.0 else "Headrace"
    lines = [
        "## vLLM's `bench serve` client: plain `vllm serve` vs Headrace's gateway "
        f"(same engine arguments, {MODEL_NAME})",
        "",
        f"Random prompts of {args.input_len} tokens in, exactly {args.output_len} out (ignore_eos), "
        f"{args.prompts} prompts at concurrency {args.concurrency} per run, {args.repetitions} runs per side "
        "in alternating order, each after a warm-up; both servers on 127.0.0.1, one at a time.",
        "",
        markdown_table(["server", *(label for _, label in METRICS), "failed"], rows),
        "",
        f"Through the gateway: {throughput:.3f}x plain `vllm serve`'s output throughput (goal >= 0.98x), "
        f"TTFT mean {ttft:.3f}x (goal <= 1.05x, {ours['mean_ttft_ms'] - plain['mean_ttft_ms']:+.1f} ms), "
        f"TPOT mean {tpot:+.2f} ms. Higher throughput: {winner}.",
        "",
        "2 cores shared by the engine, the server(s) and the client: the gap is the mesh's own CPU "
        "(router, cache, scheduler and worker processes) taken from the engine's.",
    ]
    write_results(
        "vllm-serve-peer",
        {
            "input_len": args.input_len,
            "output_len": args.output_len,
            "prompts": args.prompts,
            "concurrency": args.concurrency,
            "runs": runs,
            "summary": summaries,
            "gateway_over_plain_throughput": throughput,
            "gateway_over_plain_ttft_mean": ttft,
            "gateway_minus_plain_tpot_mean_ms": tpot,
        },
        "\n".join(lines),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models-dir", default=os.environ.get("HEADRACE_MODELS_DIR", str(default_models_dir())))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
