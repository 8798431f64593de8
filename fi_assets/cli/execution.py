"""Executing the runs `fi materialize` planned: one after another in this process, or several at
once in worker processes, each run a Dagster run of the shared instance. A run starts once every
run it reads from is done; a run that reads from a failed one is skipped. Steps in the `gpu` pool
stay one at a time across all workers (the instance's concurrency pools)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context

import dagster as dg

from fi_assets.cli.planning import PlannedRun
from fi_resources.instance import open_instance, process_tag

ASSETS_TAG = "fi/assets"

# Runs log at INFO on the terminal; the UI keeps every level of the same runs.
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class RunOutcome:
    """How one planned run ended."""

    success: bool
    run_id: str | None = None
    seconds: float = 0.0
    # "name: FAILED (blocking)" per check that did not pass.
    checks: list[str] = field(default_factory=list)
    # 1-based numbers of the failed runs it would have read from (then it did not run).
    skipped_after: list[int] = field(default_factory=list)


def execute_run(defs: dg.Definitions, instance, run: PlannedRun) -> RunOutcome:
    """Materialize one planned run in this process."""
    started = time.perf_counter()
    result = dg.materialize(
        list(defs.assets),
        selection=run.asset_keys,
        partition_key=run.partition_key,
        run_config=RUN_CONFIG,
        # The Runs page names every run of dg.materialize alike: the tag says what it ran.
        tags={
            **process_tag(),
            ASSETS_TAG: ", ".join(key.to_user_string() for key in run.asset_keys),
        },
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
    )
    checks = [
        f"{e.check_name}: FAILED (blocking)"
        for e in result.get_asset_check_evaluations()
        if not e.passed
    ]
    return RunOutcome(result.success, result.run_id, time.perf_counter() - started, checks)


@functools.cache
def _worker_context() -> tuple[dg.Definitions, dg.DagsterInstance]:
    """A worker's definitions and instance, built once: its models then load once too."""
    from fi_assets.definitions import build_definitions
    from fi_resources.settings import get_settings

    settings = get_settings()
    return build_definitions(settings), open_instance(settings.home)


def _execute_in_worker(run: PlannedRun) -> RunOutcome:
    defs, instance = _worker_context()
    return execute_run(defs, instance, run)


def execute_all(
    runs: list[PlannedRun],
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    workers: int,
    announce: Callable[[int, PlannedRun], None],
    report: Callable[[int, PlannedRun, RunOutcome], None],
) -> set[int]:
    """Execute `runs` (indices in plan order), calling `announce(index, run)` as each starts (or
    is skipped) and `report(index, run, outcome)` as it ends; return the indices that failed or
    were skipped."""
    failed: set[int] = set()
    finished: set[int] = set()

    def skip_if_blocked(index: int) -> bool:
        announce(index, runs[index])
        blocked = runs[index].reads_from & failed
        if blocked:
            failed.add(index)
            skipped = RunOutcome(False, skipped_after=sorted(i + 1 for i in blocked))
            report(index, runs[index], skipped)
        return bool(blocked)

    if workers == 1:
        for index, run in enumerate(runs):
            if not skip_if_blocked(index):
                outcome = execute_run(defs, instance, run)
                (finished if outcome.success else failed).add(index)
                report(index, run, outcome)
        return failed

    # Concurrent runs would each create a pool's limit on its first use, and all but one would
    # fail on the duplicate row: create the limits once, before any worker starts. Only missing
    # ones: on PostgreSQL, initializing an existing limit again fails its transaction.
    storage = instance.event_log_storage
    pools = {a.op.pool for a in defs.assets if getattr(a, "op", None) and a.op.pool}
    for pool_name in pools - storage.get_concurrency_keys():
        storage.initialize_concurrency_limit_to_default(pool_name)
    pending = list(range(len(runs)))
    running = {}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        while pending or running:
            for index in [i for i in pending if runs[i].reads_from <= finished | failed]:
                pending.remove(index)
                if not skip_if_blocked(index):
                    running[pool.submit(_execute_in_worker, runs[index])] = index
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                outcome = future.result()
                (finished if outcome.success else failed).add(index)
                report(index, runs[index], outcome)
    return failed
