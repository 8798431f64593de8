"""The Dagster instance under FI_HOME, shared by the `fi` CLI and the UI (`fi ui`)."""

from __future__ import annotations

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
    """Write `FI_HOME/dagster/dagster.yaml` from the project's dagster.yaml with its paths under
    `home`, and return that folder (what DAGSTER_HOME must name)."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = _rebase(yaml.safe_load(PROJECT_DAGSTER_YAML.read_text()), home)
    target = dagster_home / "dagster.yaml"
    rendered = yaml.safe_dump(config, sort_keys=False)
    if not target.exists() or target.read_text() != rendered:
        target.write_text(rendered)
    return dagster_home


def open_instance(home: Path) -> DagsterInstance:
    """The persistent Dagster instance whose runs the UI shows for this data root."""
    return DagsterInstance.from_config(str(prepare_dagster_home(home)))
