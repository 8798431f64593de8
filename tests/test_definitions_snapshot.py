"""What re-runs is reviewed: the definitions under the default settings (every asset's key, code
version, partitions, dependencies with their partition mappings, automation condition and checks)
are compared with tests/snapshots/definitions.json, so a change to any of them shows in the diff
of a pull request. Accept an intended change with

    FI_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/test_definitions_snapshot.py
"""

import difflib
import json
import os
from pathlib import Path

import dagster as dg
import pytest

from fi_assets.definitions import build_definitions
from fi_resources.settings import Settings

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"
UPDATE_VARIABLE = "FI_UPDATE_SNAPSHOTS"
UPDATE_COMMAND = f"{UPDATE_VARIABLE}=1 .venv/bin/pytest tests/test_definitions_snapshot.py"
# Read before the test clears every FI_* variable for the default settings.
UPDATING = os.environ.get(UPDATE_VARIABLE) == "1"


def partitions_snapshot(definition: dg.PartitionsDefinition | None) -> dict | None:
    """A partitions definition by what decides its partition keys."""
    if definition is None:
        return None
    if isinstance(definition, dg.DynamicPartitionsDefinition):
        return {"dynamic": definition.name}
    if isinstance(definition, dg.StaticPartitionsDefinition):
        return {"static": definition.get_partition_keys()}
    if isinstance(definition, dg.MultiPartitionsDefinition):
        return {
            "multi": {
                dimension.name: partitions_snapshot(dimension.partitions_def)
                for dimension in definition.partitions_defs
            }
        }
    return {type(definition).__name__: str(definition)}


def definitions_snapshot(defs: dg.Definitions) -> dict:
    """Every asset of `defs` by key: code version, partitions, dependencies (with their partition
    mapping), automation condition and checks (name, blocking), in a stable order."""
    check_specs: dict[str, list[dg.AssetCheckSpec]] = {}
    check_owners = [
        *(asset for asset in defs.assets or [] if isinstance(asset, dg.AssetsDefinition)),
        *(defs.asset_checks or []),
    ]
    for owner in check_owners:
        for check in owner.check_specs:
            check_specs.setdefault(check.asset_key.to_user_string(), []).append(check)
    assets = {}
    for spec in defs.resolve_all_asset_specs():
        key = spec.key.to_user_string()
        assets[key] = {
            "code_version": spec.code_version,
            "partitions": partitions_snapshot(spec.partitions_def),
            "deps": {
                dep.asset_key.to_user_string(): (
                    None if dep.partition_mapping is None else repr(dep.partition_mapping)
                )
                for dep in spec.deps
            },
            "automation_condition": (
                None if spec.automation_condition is None else repr(spec.automation_condition)
            ),
            "checks": {
                check.name: {"blocking": check.blocking} for check in check_specs.get(key, [])
            },
        }
    return {"assets": assets}


def as_text(snapshot: dict) -> str:
    """The snapshot as stored: keys sorted at every level, so the order of definition is not
    a change."""
    return json.dumps(snapshot, indent=2, sort_keys=True) + "\n"


def changed_assets(stored: dict, current: dict) -> list[str]:
    """One line per asset added, removed or changed (naming the fields) since `stored`."""
    before, after = stored.get("assets", {}), current["assets"]
    lines = [f"added: {key}" for key in sorted(after.keys() - before.keys())]
    lines += [f"removed: {key}" for key in sorted(before.keys() - after.keys())]
    for key in sorted(before.keys() & after.keys()):
        fields = sorted(
            field
            for field in before[key].keys() | after[key].keys()
            if before[key].get(field) != after[key].get(field)
        )
        if fields:
            lines.append(f"changed: {key} ({', '.join(fields)})")
    return lines


@pytest.fixture
def default_settings(fi_home, monkeypatch) -> Settings:
    """The settings of a fresh checkout: no FI_* variable but a temporary FI_HOME, no fi.toml."""
    for name in list(os.environ):
        if name.startswith("FI_") and name != "FI_HOME":
            monkeypatch.delenv(name)
    return Settings()


def test_definitions_match_the_snapshot(default_settings, fi_home):
    current = definitions_snapshot(build_definitions(default_settings))
    text = as_text(current)
    assert str(fi_home) not in text and str(Path.home()) not in text, "a path of this machine"
    if UPDATING:
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text, encoding="utf-8")
        return
    assert SNAPSHOT.exists(), f"no {SNAPSHOT.name} yet: write it with `{UPDATE_COMMAND}`"
    stored_text = SNAPSHOT.read_text(encoding="utf-8")
    if stored_text == text:
        return
    diff = difflib.unified_diff(
        stored_text.splitlines(),
        text.splitlines(),
        "tests/snapshots/definitions.json",
        "the definitions now",
        lineterm="",
    )
    pytest.fail(
        "The definitions changed, and with them what re-runs:\n"
        + "\n".join(changed_assets(json.loads(stored_text), current))
        + "\n\n"
        + "\n".join(diff)
        + f"\n\nIf this is intended, accept it and commit the snapshot: {UPDATE_COMMAND}",
        pytrace=False,
    )


def test_a_changed_setting_is_named_in_the_changes_and_nothing_else_differs(default_settings):
    stored = definitions_snapshot(build_definitions(default_settings))
    assert as_text(definitions_snapshot(build_definitions(default_settings))) == as_text(stored)
    bumped = definitions_snapshot(
        build_definitions(default_settings.model_copy(update={"min_judge_score": 5}))
    )
    assert changed_assets(stored, bumped) == [
        "changed: judged_pairs (code_version)",
    ]
