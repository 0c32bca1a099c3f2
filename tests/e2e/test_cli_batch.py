"""`headrace batch` against a mesh started by `headrace up` (processes,
the batch consumer beside the worker included): submit with a progress
bar, status, results, list, and nothing left running after `down`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.batch import chat_rows
from tests.support.cli import headrace, live_processes_in_groups

pytestmark = pytest.mark.slow


def test_batch_submit_waits_with_a_progress_bar_and_results_come_back(cli_env: dict[str, str], tmp_path: Path) -> None:
    up = headrace(cli_env, "up", "--detach", "--engine", "synthetic")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "batch-smollm2-0" in up.stdout
    state = json.loads((Path(cli_env["HEADRACE_STATE_DIR"]) / "mesh.json").read_text())
    pgids = {p["pid"] for p in state["processes"]}

    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(chat_rows(20, max_tokens=5))
    submitted = headrace(cli_env, "batch", "submit", str(rows), "--wait", "--metadata", "run=e2e")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    # The progress bar (tqdm, on stderr) reached every row.
    assert "20/20" in submitted.stderr and "row" in submitted.stderr
    last = submitted.stdout.strip().splitlines()
    batch_id = last[0].split()[0]
    assert f"{batch_id} completed 20/20 done (0 failed)" in submitted.stdout
    assert "output file: file-" in submitted.stdout

    results = headrace(cli_env, "batch", "results", batch_id)
    assert results.returncode == 0, results.stderr
    lines = [json.loads(line) for line in results.stdout.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"row-{i}" for i in range(20))
    assert all(line["response"]["body"]["usage"]["completion_tokens"] == 5 for line in lines)

    listed = headrace(cli_env, "batch", "list")
    assert listed.returncode == 0 and batch_id in listed.stdout

    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_bytes(b'{"custom_id": "x"}\n')
    bad = headrace(cli_env, "batch", "submit", str(bad_rows))
    assert bad.returncode == 1 and "failed" in bad.stdout
    assert "line 1: mismatched_endpoint [url]" in bad.stderr

    down = headrace(cli_env, "down")
    assert down.returncode == 0, down.stderr
    assert live_processes_in_groups(pgids) == []
