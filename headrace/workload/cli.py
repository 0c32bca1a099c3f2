"""`headrace bench trace` writes a workload trace; `headrace bench replay`
replays one against the running mesh at its timestamps and writes a report."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from headrace.client import DEFAULT_TARGET, AsyncHeadraceClient
from headrace.workload.generate import WorkloadShape, generate
from headrace.workload.replay import Replayer
from headrace.workload.report import summarize, to_markdown
from headrace.workload.trace import TraceError, read_trace, write_trace


def _tick(bar: tqdm[Any]) -> None:
    bar.update(1)


@click.group()
def bench() -> None:
    """Workload traces: generate one, replay it against the mesh."""


@bench.command("trace")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True)
@click.option("--duration", "duration_s", default=60.0, show_default=True, help="Seconds of traffic.")
@click.option("--rate", "rate_rps", default=2.0, show_default=True, help="Mean requests per second.")
@click.option("--arrivals", type=click.Choice(["poisson", "bursty"]), default="poisson", show_default=True)
@click.option("--profile", type=click.Choice(["steady", "ramp"]), default="steady", show_default=True)
@click.option("--peak-factor", default=10.0, show_default=True, help="ramp: peak rate over the base rate.")
@click.option("--lead", "lead_s", default=0.0, show_default=True, help="ramp: seconds at the base rate first.")
@click.option("--ramp", "ramp_s", default=20.0, show_default=True, help="ramp: seconds up (and down).")
@click.option("--hold", "hold_s", default=20.0, show_default=True, help="ramp: seconds at the peak.")
@click.option("--repeats", "repeat_share", default=0.2, show_default=True, help="Share of exact repeats.")
@click.option("--paraphrases", "paraphrase_share", default=0.2, show_default=True, help="Share of paraphrases.")
@click.option("--long", "long_share", default=0.3, show_default=True, help="Share with a long shared system prompt.")
@click.option("--hard", "hard_share", default=0.2, show_default=True, help="Share of hard requests.")
@click.option("--batch", "batch_share", default=0.1, show_default=True, help="Share sent to the batch lane.")
@click.option("--tenant", "tenants", multiple=True, help="NAME=WEIGHT (repeatable); default: one tenant.")
def bench_trace(out: Path, tenants: tuple[str, ...], **shape: object) -> None:
    """Write a trace (JSONL) with the shape production traffic has."""
    tenant_weights: list[tuple[str, float]] = []
    for item in tenants:
        name, _, weight = item.partition("=")
        try:
            tenant_weights.append((name, float(weight or 1.0)))
        except ValueError as exc:
            raise click.BadParameter(f"{item!r}: expected NAME=WEIGHT", param_hint="--tenant") from exc
    try:
        workload = WorkloadShape(**shape, **({"tenants": tenant_weights} if tenant_weights else {}))  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    count = write_trace(generate(workload), out)
    click.echo(f"wrote {count} requests to {out}")


@bench.command("replay")
@click.argument("trace", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target", default=DEFAULT_TARGET, show_default=True, help="The router's gRPC address.")
@click.option("--api-key", envvar="HEADRACE_API_KEY", default=None, help="Default key (env HEADRACE_API_KEY).")
@click.option("--tenant-key", "tenant_keys", multiple=True, help="TENANT=KEY: replay that tenant's requests with KEY.")
@click.option("--speed", default=1.0, show_default=True, help="2: twice as fast as the trace.")
@click.option("--max-in-flight", default=256, show_default=True)
@click.option("--batch-window", "batch_window_s", default=30.0, show_default=True)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report here (.json and .md); default: print it.",
)
def bench_replay(
    trace: Path,
    target: str,
    api_key: str | None,
    tenant_keys: tuple[str, ...],
    speed: float,
    max_in_flight: int,
    batch_window_s: float,
    report_path: Path | None,
) -> None:
    """Replay TRACE against the mesh at its timestamps; report how it was served."""
    try:
        records = read_trace(trace)
    except TraceError as exc:
        raise click.ClickException(str(exc)) from exc
    keys = dict(item.partition("=")[::2] for item in tenant_keys)

    async def run() -> dict[str, object]:
        client = AsyncHeadraceClient(target, api_key=api_key)
        tenant_clients = {tenant: AsyncHeadraceClient(target, api_key=key) for tenant, key in keys.items()}
        with tqdm(total=len(records), unit="req", desc="replay") as bar:
            replayer = Replayer(
                client,
                tenant_clients=tenant_clients,
                max_in_flight=max_in_flight,
                batch_window_s=batch_window_s,
                speed=speed,
                on_sent=partial(_tick, bar),
            )
            try:
                result = await replayer.replay(records)
            finally:
                for each in (client, *tenant_clients.values()):
                    await each.close()
        return summarize(records, result)

    summary = asyncio.run(run())
    table = to_markdown(summary)
    if report_path is None:
        click.echo(table)
        return
    report_path.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    report_path.with_suffix(".md").write_text(f"# Replay of {trace.name}\n\n{table}")
    click.echo(table)
    click.echo(f"report: {report_path.with_suffix('.md')} and .json")
