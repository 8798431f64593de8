"""How `fi materialize` and the UI scale with the number of document partitions: a data root
with N tiny document shards (default 2,000; one Wikipedia article of the demo sample each) brought
to a state where nothing is stale, then timed: `fi materialize` when nothing is stale (the command,
a fresh process, and the plan it computes, with its SQL statements counted), the plan after one
shard was re-ingested with changed content, and the UI (`fi ui`, started as tests/test_browser.py
starts it) loading the asset page of a partitioned asset and its partitions view in Chromium
(Playwright), until the page's content is drawn.

How the state is built, on two cores where one shard's full pipeline costs ~10 s of runs: one
query shard (the demo's WebQuestions sample) and the held-out shard are ingested; `--real` shards
(default 12, the demo's 12 training articles, one each) are ingested with `fi ingest` and
materialized for real by `fi materialize`. The other N - real shards are ingested for real too,
each with the same article as a real shard (so the same DataVersion), and each per-shard asset
of theirs (documents ... packed_corpus) is a COPY of that real shard's output: its Parquet files
(the shard column renamed) and its materialization event (tags and metadata, reported runless,
tagged `fi/bench_copy_of`; asset check results are not copied). Then `fi materialize` runs for
real what reads every shard (training_budget, trained_checkpoint, eval_scores, eval_report) over
all N, and the state is checked to plan nothing.

    python -m bench.partitions --partitions 200 --home /tmp/parts_home_200
    python -m bench.partitions --partitions 2000 --home /tmp/parts_home --save
    python -m bench.partitions --home /tmp/parts_home --reuse       # time an existing data root
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from bench.common import load_source, parser, report, source_at, table

FI = str(Path(sys.executable).with_name("fi"))
COPY_TAG = "fi/bench_copy_of"
# Tags of a materialization that name the source's own events or partition: not copied (Dagster
# reads a multi-partition key from its dagster/partition/* tags).
SOURCE_TAGS = ("dagster/input_event_pointer/", "dagster/partition")
RUN_LINE = re.compile(r"^\[\d+/\d+\]")
UI_START_S = 180
PAGE_TIMEOUT_MS = 300_000


def shard_name(index: int) -> str:
    return f"doc_{index:05d}"


def _fi(home: Path, *arguments: str, log: Path | None = None) -> tuple[float, str, int]:
    """Run `fi ARGUMENTS` on the data root as a user does: (seconds, output, exit code)."""
    started = time.perf_counter()
    done = subprocess.run(
        [FI, *arguments],
        env=os.environ | {"FI_HOME": str(home)},
        cwd=home,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    if log is not None:
        log.write_text(output)
    return seconds, output, done.returncode


def _materialize(home: Path, log_name: str) -> tuple[float, str]:
    """`fi materialize` on the data root, its output kept in `log_name` there: (seconds, output);
    exits naming the log when it fails."""
    log = home / log_name
    seconds, output, code = _fi(home, "materialize", log=log)
    if code != 0:
        raise SystemExit(f"fi materialize failed, see {log}")
    return seconds, output


def _ingest(kind: str, source: Path, shard: str | None = None) -> None:
    """`fi ingest KIND SOURCE`, in this process (what the command runs), its lines kept quiet."""
    from fi_assets.cli import _ingest as ingest

    with contextlib.redirect_stdout(io.StringIO()):
        ingest(kind, str(source), shard)


def _article_file(directory: Path, index: int, article: dict, extra: str = "") -> Path:
    path = directory / f"{shard_name(index)}.jsonl"
    row = {**article, "text": article["text"] + extra}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def per_shard_assets() -> list[str]:
    """What a copied shard gets from its real one: the materializable assets partitioned by
    document shard (packed_corpus by shard and recipe), upstream first. Copies are reported in
    this order, as runs write them: a copy reported before its upstream's would read as built
    from an older upstream, so stale."""
    from fi_assets.definitions import build_definitions
    from fi_assets.partitions import doc_shard_recipes, doc_shards
    from fi_resources.settings import get_settings

    graph = build_definitions(get_settings()).resolve_asset_graph()
    return [
        key.to_user_string()
        for key in graph.toposorted_asset_keys
        if graph.get(key).is_materializable
        and graph.get(key).partitions_def in (doc_shards, doc_shard_recipes)
    ]


@dataclass
class ShardOutputs:
    """A real shard's outputs, read once and copied to every shard that copies it: its table and
    rejects files (by file, the frame and the name after the shard) and its latest
    materialization events (by asset, per partition)."""

    files: list[tuple[Path, str, pl.DataFrame]]
    events: list[tuple[str, str, dg.AssetMaterialization]]


def shard_outputs(instance, storage, source: str, assets: list[str]) -> ShardOutputs:
    """The outputs of `source` in `assets`. Read before any copy is reported: the latest events
    are looked up among the asset's newest records, which copies would crowd out."""
    tables = storage.tables_dir
    files = []
    for folder in [tables, tables / "rejects"]:
        for asset_dir in folder.iterdir():
            if asset_dir.name in ("rejects", "ingested_documents", "ingest_documents"):
                continue
            for path in asset_dir.glob(f"{source}.*parquet"):
                files.append((asset_dir, path.name[len(source) :], pl.read_parquet(path)))
    events = []
    for name in assets:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(name)), limit=1000
        ).records
        latest: dict[str, dg.AssetMaterialization] = {}
        for record in records:  # newest first
            event = record.asset_materialization
            if event.partition and event.partition.split("|")[0] == source:
                latest.setdefault(event.partition, event)
        events += [(name, partition, event) for partition, event in latest.items()]
    return ShardOutputs(files, events)


def _copy_shard(instance, storage, outputs: ShardOutputs, source: str, target: str) -> int:
    """Give `target` the outputs of `source`: its files (shard columns renamed) and its latest
    materialization events, tagged as copies. Returns the events reported."""
    from fi_assets.partitions import storage_partition

    for asset_dir, suffix, frame in outputs.files:
        for column in ("shard", "doc_shard"):
            if column in frame.columns:
                frame = frame.with_columns(pl.col(column).str.replace(f"^{source}$", target))
        frame.write_parquet(asset_dir / f"{target}{suffix}")
    for name, partition, event in outputs.events:
        new_partition = target + partition[len(source) :]
        metadata = dict(event.metadata)
        metadata.pop("partition", None)
        if "path" in metadata:
            metadata["path"] = dg.MetadataValue.path(
                str(storage.tables_dir / name / f"{storage_partition(new_partition)}.parquet")
            )
        tags = {k: v for k, v in (event.tags or {}).items() if not k.startswith(SOURCE_TAGS)}
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=dg.AssetKey(name),
                partition=new_partition,
                metadata={"partition": new_partition, **metadata},
                tags={**tags, COPY_TAG: source},
            )
        )
    return len(outputs.events)


def build(home: Path, partitions: int, real: int, notes: list[str]) -> None:
    """The data root described in the module docstring."""
    from fi_method.samples import write_sample
    from fi_resources.instance import open_instance
    from fi_resources.settings import get_settings
    from fi_resources.storage import Storage

    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / "fi.toml").write_text("max_training_tokens = 20480\n")
    get_settings.cache_clear()
    settings = get_settings()
    sample = write_sample(home / "samples")
    articles = [json.loads(line) for line in sample.documents.read_text().splitlines()]
    real = min(real, partitions, len(articles))
    shards = home / "shards"
    shards.mkdir()
    started = time.perf_counter()
    _ingest("queries", sample.webquestions)
    _ingest("documents", sample.heldout_documents, settings.heldout_doc_shard)
    for index in range(real):
        _ingest("documents", _article_file(shards, index, articles[index]))
    seconds, output = _materialize(home, "materialize_real.log")
    runs = output.count("    ok in ")
    print(f"real: {real} shards materialized by {runs} runs in {seconds:.0f}s", file=sys.stderr)
    notes.append(
        f"- {real} shards (+ `heldout`, + query shard `webquestions_sample`) materialized for "
        f"real by `fi materialize`: {runs} runs in {seconds:.0f} s "
        f"(~{seconds / (real + 1):.0f} s per document shard, training and evaluation included)"
    )
    ingest_started = time.perf_counter()
    for index in range(real, partitions):
        _ingest("documents", _article_file(shards, index, articles[index % real]))
    ingest_s = time.perf_counter() - ingest_started
    instance = open_instance(home)
    storage = Storage.from_settings(settings)
    assets = per_shard_assets()
    copy_started = time.perf_counter()
    sources = {
        shard_name(index): shard_outputs(instance, storage, shard_name(index), assets)
        for index in range(real)
    }
    events = 0
    for index in range(real, partitions):
        source = shard_name(index % real)
        events += _copy_shard(instance, storage, sources[source], source, shard_name(index))
        if (index + 1) % 100 == 0:
            print(
                f"copied {index + 1 - real} shards ({time.perf_counter() - copy_started:.0f}s)",
                file=sys.stderr,
            )
    copy_s = time.perf_counter() - copy_started
    if partitions > real:
        notes.append(
            f"- {partitions - real} shards ingested for real by `fi ingest`'s code "
            f"({ingest_s:.0f} s), their per-shard assets ({', '.join(assets)}) COPIED from "
            f"the real shard with the same article: files, and {events} materialization "
            f"events reported runless with tag `{COPY_TAG}` ({copy_s:.0f} s); no check results"
        )
    seconds, output = _materialize(home, "materialize_all.log")
    ran = [line.split(": ", 1)[1] for line in output.splitlines() if RUN_LINE.match(line)]
    print(f"all-shard assets: {len(ran)} runs in {seconds:.0f}s", file=sys.stderr)
    notes.append(
        f"- then `fi materialize` ran for real, over all {partitions} shards, what reads every "
        f"shard: {len(ran)} runs ({', '.join(sorted(set(ran)))}) in {seconds:.0f} s"
    )
    notes.append(f"- total build {time.perf_counter() - started:.0f} s")


class SqlCounter:
    """Counts the SQL statements every SQLAlchemy engine executes (the instance's storages)."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> SqlCounter:  # noqa: PYI034
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", self._count)
        return self

    def _count(self, *_args) -> None:
        self.count += 1

    def __exit__(self, *_exc) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "before_cursor_execute", self._count)


def timed_plan(planner, defs, instance) -> tuple[float, int, list]:
    """(seconds, SQL statements, runs) of one plan."""
    with SqlCounter() as counter:
        started = time.perf_counter()
        runs = planner.plan_runs(defs, instance, None)
        seconds = time.perf_counter() - started
    return seconds, counter.count, runs


def describe(runs) -> str:
    if not runs:
        return "nothing"
    keys = sorted({k.to_user_string() for r in runs for k in r.asset_keys})
    where = sorted({str(r.partition_key) for r in runs})
    return f"{len(runs)} run(s) of {', '.join(keys)} on {', '.join(where[:6])}" + (
        " ..." if len(where) > 6 else ""
    )


def planners(baseline: str | None) -> dict:
    """The planner to time (this tree's), and the baseline's when given (a git revision)."""
    from fi_assets.cli import planning

    found = {"this tree": planning}
    if baseline:
        source = source_at(baseline, "fi_assets/cli/planning.py")
        if source is None:
            raise SystemExit(f"git revision {baseline} has no fi_assets/cli/planning.py")
        found[baseline] = load_source(source, "planning_" + re.sub(r"\W", "_", baseline))
    return found


def _wait_for_server(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + UI_START_S
    while True:
        try:
            with urllib.request.urlopen(f"{base}/server_info", timeout=5):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the UI did not start: {log.read_text()[-2000:]}") from None
            time.sleep(1)


def time_ui(home: Path, asset: str, latest: str, partitions: int, port: int) -> list[list[object]]:
    """Seconds for the UI's asset page of `asset` and its partitions view to draw their
    content, measured twice each (first load, then again with the server warm): the page until
    it shows the partition of the asset's latest materialization (`latest`), the partitions view
    until it counts the asset's `partitions`. The view lists partitions in a virtual list, which
    draws only the rows on screen, so a partition far down the list is never on the page."""
    import psutil
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    log_path = home / "ui.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [FI, "ui", "--port", str(port)],
        env=os.environ | {"FI_HOME": str(home)},
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        _wait_for_server(base, server, log_path)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            # The welcome dialog of a new instance, once, off the clock.
            page.goto(f"{base}/assets")
            with contextlib.suppress(Exception):
                page.get_by_role("button", name="Skip").click(timeout=15_000)
            counted = f"{partitions:,} Partitions Selected"
            views = {
                f"asset page `/assets/{asset}` (until its latest materialization, of "
                f"`{latest}`, shows)": (f"{base}/assets/{asset}", latest),
                f"partitions view `/assets/{asset}?view=partitions` (until it shows `{counted}`)": (
                    f"{base}/assets/{asset}?view=partitions",
                    counted,
                ),
            }
            for name, (url, text) in views.items():
                seconds = []
                for _ in range(2):
                    page.goto("about:blank")
                    started = time.perf_counter()
                    page.goto(url)
                    page.get_by_text(text, exact=True).first.wait_for()
                    seconds.append(time.perf_counter() - started)
                rows.append([name, seconds[0], seconds[1]])
            page.goto(f"{base}/assets/{asset}?view=partitions")
            page.get_by_text(counted, exact=True).first.wait_for()
            page.screenshot(path=str(home / "partitions_view.png"))
            browser.close()
    finally:
        if server.poll() is None:
            for process in [psutil.Process(server.pid), *psutil.Process(server.pid).children(True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        server.wait(timeout=30)
        log.close()
    return rows


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--partitions", type=int, default=2000, help="document shards")
    arguments.add_argument("--real", type=int, default=12, help="shards materialized for real")
    arguments.add_argument("--home", type=Path, default=Path("/tmp/parts_home"))
    arguments.add_argument("--reuse", action="store_true", help="time the data root as it is")
    arguments.add_argument(
        "--baseline", default=None, help="git revision whose planner to time too (e.g. HEAD)"
    )
    arguments.add_argument("--asset", default="judged_pairs", help="the asset page to time")
    arguments.add_argument("--port", type=int, default=3123)
    arguments.add_argument("--no-ui", action="store_true", help="skip the browser timings")
    args = arguments.parse_args()
    home = args.home.resolve()
    os.environ["FI_HOME"] = str(home)
    os.environ.pop("FI_CONFIG", None)
    os.chdir(home.parent)
    notes: list[str] = []
    if not args.reuse:
        build(home, args.partitions, args.real, notes)
    else:
        notes.append(f"- data root {home} as it was (built by an earlier run of this script)")

    from fi_assets.definitions import build_definitions
    from fi_resources.instance import open_instance
    from fi_resources.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    instance = open_instance(home)
    n = len(instance.get_dynamic_partitions("doc_shards"))
    defs = build_definitions(settings)
    rows = []
    # a. Nothing stale: the command as a user runs it, then the plan it computes, per planner.
    seconds, output, _code = _fi(home, "materialize", log=home / "materialize_noop.log")
    last = output.strip().splitlines()[-1] if output.strip() else ""
    rows.append(["`fi materialize`, nothing stale (fresh process)", "this tree", seconds, "", last])
    found = planners(args.baseline)
    for name, planner in found.items():
        seconds, statements, runs = timed_plan(planner, defs, instance)
        rows.append(
            ["plan, nothing stale (`plan_runs`)", name, seconds, statements, describe(runs)]
        )
    # b. One shard re-ingested with changed content: only its downstream (and what reads every
    # shard) should be planned.
    changed = shard_name(0)
    article = json.loads((home / "shards" / f"{changed}.jsonl").read_text())
    source = _article_file(
        home / "shards", 0, article, extra=f"\n\nEdited at {time.time():.0f} for the benchmark."
    )
    _fi(home, "ingest", "documents", str(source), "--shard", changed)
    for name, planner in found.items():
        seconds, statements, runs = timed_plan(planner, defs, instance)
        rows.append(
            [f"plan, `{changed}` re-ingested changed", name, seconds, statements, describe(runs)]
        )
    _article_file(home / "shards", 0, article)
    _fi(home, "ingest", "documents", str(source), "--shard", changed)
    body = (
        f"{n} document partitions (doc_shards), 1 query shard. How the state was built:\n\n"
        + "\n".join(notes)
        + "\n\n"
        + table(["what", "planner", "seconds", "SQL statements", "result"], rows)
    )
    if not args.no_ui:
        event = instance.get_latest_materialization_event(dg.AssetKey(args.asset))
        partitions = len(instance.get_dynamic_partitions("doc_shards"))
        latest = event.asset_materialization.partition
        ui_rows = time_ui(home, args.asset, latest, partitions, args.port)
        body += (
            "\n\nThe UI (`fi ui`; Chromium headless through Playwright, first and second load):\n\n"
        )
        body += table(["page", "first load s", "second load s"], ui_rows)
    body += (
        f"\n\nAfterwards `{changed}` was re-ingested with its original content (the same "
        "DataVersion as the one its downstream read), so the data root plans nothing again."
    )
    report(
        "partitions",
        "cpu",
        f"fi materialize and the UI over {n} document partitions",
        body,
        args.save,
    )


if __name__ == "__main__":
    main()
