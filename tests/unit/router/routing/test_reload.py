import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from headrace.runtime.config import Settings, load_settings
from headrace.runtime.errors import FailedPrecondition
from services.router.routing.reload import ConfigReloader


def config(default_version: str = "1", **extra: Any) -> dict[str, Any]:
    return {
        "pools": {"gen": {"engine": {"kind": "synthetic"}, "price_per_hour": 1.0}},
        "models": {
            "smol": {"default_version": default_version, "versions": {"1": {"pool": "gen"}, "2": {"pool": "gen"}}}
        },
        "default_model": "smol",
        **extra,
    }


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "headrace.yaml"
    path.write_text(yaml.safe_dump(config()))
    monkeypatch.setenv("HEADRACE_CONFIG", str(path))
    return path


def write(path: Path, content: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(content))


def reloader_for(path: Path, applied: list[Settings]) -> ConfigReloader:
    return ConfigReloader(load_settings(), load=load_settings, apply=applied.append, path=path)


def test_a_valid_change_is_applied_and_described(config_file: Path) -> None:
    applied: list[Settings] = []
    reloader = reloader_for(config_file, applied)
    config_file.write_text(yaml.safe_dump(config("2", aliases={"chat": "smol"})))
    result = reloader.reload("test")
    assert result.changed and result.changes == ("models.smol", "aliases.chat")
    assert applied[-1].models["smol"].default_version == "2"
    assert reloader.current.aliases == {"chat": "smol"}
    assert not reloader.reload("again").changed


def test_a_bad_config_is_rejected_naming_the_field_and_the_old_one_stays(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied: list[Settings] = []
    reloader = reloader_for(config_file, applied)
    config_file.write_text(yaml.safe_dump(config("1", routing={"canaries": {"smol": {"version": "7"}}})))
    with pytest.raises(FailedPrecondition, match=r"routing.canaries.smol: model has no served version '7'"):
        reloader.reload("test")
    assert applied == [] and reloader.current.routing.canaries == {}
    assert "rejected, keeping the running config" in caplog.text
    config_file.write_text("models: [unclosed")
    with pytest.raises(FailedPrecondition, match="YAMLError|ScannerError|ParserError"):
        reloader.reload("test")


def test_only_the_registry_is_reloaded(config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    applied: list[Settings] = []
    reloader = reloader_for(config_file, applied)
    config_file.write_text(yaml.safe_dump(config("2", router={"port": 50999})))
    reloader.reload("test")
    assert applied[-1].router.port != 50999
    assert "router changed; that takes a restart" in caplog.text


async def test_the_watcher_picks_up_a_changed_file(config_file: Path) -> None:
    applied: list[Settings] = []
    reloader = reloader_for(config_file, applied)
    watcher = asyncio.create_task(reloader.watch(0.02))
    try:
        write(config_file, config("2"))
        for _ in range(1000):
            if applied:
                break
            await asyncio.sleep(0.01)
        assert applied and applied[-1].models["smol"].default_version == "2"
        # A broken file is logged and skipped; the watcher keeps going.
        write(config_file, config("9"))
        await asyncio.sleep(0.1)
        write(config_file, config("1", aliases={"x": "smol"}))
        for _ in range(1000):
            if len(applied) == 2:
                break
            await asyncio.sleep(0.01)
        assert applied[-1].aliases == {"x": "smol"}
    finally:
        watcher.cancel()
