"""The Dagster instance under FI_HOME, shared by the `fi` CLI and the UI (`fi ui`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml
from dagster import DagsterInstance

PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
_HOME_PREFIX = "fi_home"


def _rebase(value, home: Path):
    """The project's dagster.yaml writes every path as `fi_home/...`: point those at `home`."""
    if isinstance(value, dict):
        return {key: _rebase(item, home) for key, item in value.items()}
    if isinstance(value, str) and (value == _HOME_PREFIX or value.startswith(_HOME_PREFIX + "/")):
        return str(home / value[len(_HOME_PREFIX) :].lstrip("/"))
    return value


def prepare_dagster_home(home: Path) -> Path:
    """Write `FI_HOME/dagster/dagster.yaml` from the instance template (FI_DAGSTER_YAML, default
    the project's dagster.yaml) with its paths under `home`, and return that folder (what
    DAGSTER_HOME must name)."""
    from fi_resources.settings import get_settings

    template = get_settings().dagster_yaml or PROJECT_DAGSTER_YAML
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = _rebase(yaml.safe_load(Path(template).read_text()), home)
    target = dagster_home / "dagster.yaml"
    rendered = yaml.safe_dump(config, sort_keys=False)
    if not target.exists() or target.read_text() != rendered:
        target.write_text(rendered)
    return dagster_home


def open_instance(home: Path) -> DagsterInstance:
    """The persistent Dagster instance whose runs the UI shows for this data root."""
    return DagsterInstance.from_config(str(prepare_dagster_home(home)))


def on_sqlite(instance: DagsterInstance) -> bool:
    """Whether the instance keeps its runs in SQLite, which locks under parallel runs."""
    return type(instance.run_storage).__name__.startswith("Sqlite")


# Runs started by `fi materialize` carry the host and process that execute them, so that a later
# `fi materialize` can tell a run whose process was killed from one still going.
PROCESS_TAG = "fi/process"


def process_tag() -> dict[str, str]:
    """The tag naming this process, for the runs it executes in-process."""
    return {PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_runs(instance: DagsterInstance) -> list[str]:
    """Mark as failed the runs of `fi materialize` on this host whose process is gone (killed,
    out of memory, machine restarted), and free the `gpu` pool slots they held: otherwise the
    next run waiting for that pool would wait forever. Returns their run ids."""
    from dagster import DagsterRunStatus, RunsFilter

    host = socket.gethostname()
    released = []
    running = instance.get_runs(
        filters=RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
    )
    for run in running:
        owner = run.tags.get(PROCESS_TAG, "")
        run_host, _, pid = owner.rpartition(":")
        if run_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        instance.report_run_failed(run, message=f"its process ({owner}) is gone")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released
