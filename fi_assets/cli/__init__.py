"""`fi`: the command line over the same definitions, data root and Dagster instance as the UI."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from fi_assets.command import fi_command

# What `fi demo` trains each recipe on when FI_TRAINING_TOKENS is unset: 20 steps of 4 x 256.
DEMO_TRAINING_TOKENS = 20_480

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
ingest_app = typer.Typer(no_args_is_help=True, help="Register a file or dataset as a new shard.")
app.add_typer(ingest_app, name="ingest")

SOURCE_HELP = "JSONL, JSON, Parquet or CSV file, or hf:NAME[@SPLIT] for a Hugging Face dataset"
UI_STOP_GRACE_S = 20.0  # how long dg dev gets to stop its webserver and daemon
SHARD_HELP = (
    "shard (partition) name; default: the file name without extension. An input over "
    "FI_SHARD_DOCUMENTS documents (FI_SHARD_QUERIES queries) becomes NAME-00000, NAME-00001, ..."
)
MAX_REJECTS_SHOWN = 20  # bad rows `fi judge` prints; the rejects table holds them all


def _settings():
    import pydantic

    from fi_resources.settings import describe_invalid, get_settings

    try:
        return get_settings()
    except pydantic.ValidationError as error:
        raise _failure(
            "invalid setting: " + "\nerror: invalid setting: ".join(describe_invalid(error)), 2
        ) from error


def _ingest(kind: str, source: str, shard: str | None) -> None:
    """Ingest `source` as one shard, or several of at most FI_SHARD_DOCUMENTS (FI_SHARD_QUERIES)
    rows, each registered as soon as it is written, with a line per shard."""
    from fi_assets.ingestion import PARTITIONS, NoGoodRowsError, ingest_shards, shard_sizes
    from fi_resources.instance import open_instance
    from fi_resources.storage import Storage, StorageLayoutError

    settings = _settings()
    instance = open_instance(settings.home)
    storage = Storage.from_settings(settings)
    try:
        for ingested in ingest_shards(storage, kind, source, shard, shard_sizes(settings)[kind]):
            instance.add_dynamic_partitions(PARTITIONS[kind].name, [ingested.shard])
            instance.report_runless_asset_event(ingested.event)
            rejects = f"select * from rejects where shard = '{ingested.shard}'"
            typer.echo(
                f"{kind} shard {ingested.shard}: {ingested.accepted} accepted, "
                f"{ingested.rejected} rejected"
                + (f' (see: {fi_command()} sql "{rejects}")' if ingested.rejected else "")
            )
    except (NoGoodRowsError, StorageLayoutError, FileNotFoundError, ValueError) as error:
        raise _failure(error, 1) from error


@ingest_app.command("queries")
def ingest_queries(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
    shard: Annotated[str | None, typer.Option(help=SHARD_HELP)] = None,
) -> None:
    """Ingest user queries: a `query`, `text`, `question`, `instruction`, `prompt` or `qText`
    field, or chat `messages`/`conversation`/`conversations` (user turns only). SOURCE `sharegpt`
    or `webquestions` ingests that bundled source's files as published."""
    from fi_method.samples import BUNDLED_QUERY_SOURCES, bundled_query_files

    if source not in BUNDLED_QUERY_SOURCES or Path(source).exists():
        _ingest("queries", source, shard)
        return
    try:
        files = bundled_query_files(source, shard)
    except FileNotFoundError as error:
        raise _failure(error, 1) from error
    for name, path in files.items():
        _ingest("queries", str(path), name)


@ingest_app.command("documents")
def ingest_documents(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
    shard: Annotated[str | None, typer.Option(help=SHARD_HELP)] = None,
) -> None:
    """Ingest documents: a `text` field, optional `id` and `url`."""
    _ingest("documents", source, shard)


@app.command()
def remove(
    kind: Annotated[str, typer.Argument(help="queries or documents")],
    shard: Annotated[str, typer.Argument(help="the shard (partition) to remove")],
) -> None:
    """Remove a shard: its partition, every table partition and rejects derived from it, and its
    templates in the LanceDB index. `fi materialize` then re-runs what read it."""
    # First: the definitions module the removal imports reads the settings as it loads.
    settings = _settings()
    from fi_assets.ingestion import PARTITIONS
    from fi_assets.maintenance import UnknownShardError, remove_shard

    if kind not in PARTITIONS:
        raise _failure("KIND is queries or documents", 2)
    try:
        removed = remove_shard(settings, kind, shard)
    except UnknownShardError as error:
        raise _failure(error, 1) from error
    typer.echo(
        f"removed {kind} shard {shard}: {removed.files} table files, "
        f"{removed.template_vectors} template vectors"
    )


@app.command()
def materialize(
    assets: Annotated[list[str] | None, typer.Argument(help="asset names; default: all")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="runs at once, in worker processes (more than 1 needs PostgreSQL)"
        ),
    ] = 1,
) -> None:
    """Materialize every missing or stale partition of ASSETS and their upstream, as runs of the
    Dagster instance under FI_HOME (they show in the UI). Runs go in waves: those that read from
    no other planned run, then a fresh plan, so that what reads an upstream that wrote the same
    data again is found up to date and not run."""
    # First: the definitions module reads the settings as it loads.
    settings = _settings()
    from fi_assets.cli.execution import RunOutcome, execute_all
    from fi_assets.cli.planning import materialize_in_waves
    from fi_assets.definitions import build_definitions
    from fi_resources.instance import on_sqlite, open_instance, release_dead_runs

    instance = open_instance(settings.home)
    if workers > 1 and on_sqlite(instance):
        raise _failure(
            "parallel runs need the Dagster instance on PostgreSQL (SQLite locks): set "
            "FI_DAGSTER_YAML=deploy/postgres/dagster.yaml and FI_POSTGRES_URL (README, "
            "Scaling out)",
            2,
        )
    for run_id in release_dead_runs(instance):
        typer.echo(f"run {run_id} was interrupted (its process is gone): marked failed")
    defs = build_definitions(settings)

    def announce(number, total, run) -> None:
        names = ", ".join(key.to_user_string() for key in run.asset_keys)
        where = "" if run.partition_key is None else f" {run.partitions}={run.partition_key}"
        typer.echo(f"[{number}/{total}]{where}: {names}")
        typer.echo(f"    why: {'; '.join(run.reasons)}")

    def report(number, run, outcome) -> None:
        # With --workers, runs end in any order: each line then says which run it is about.
        label = f"[{number}] " if workers > 1 else ""
        if outcome.skipped_after:
            # A failed run (or a failed blocking check) upstream: its rows must not be built on.
            numbers = ", ".join(map(str, outcome.skipped_after))
            typer.echo(f"    {label}SKIPPED: it reads from failed run(s) {numbers}")
            return
        status = "ok" if outcome.success else "FAILED"
        typer.echo(f"    {label}{status} in {outcome.seconds:.1f}s (run {outcome.run_id})")
        for line in outcome.checks:
            typer.echo(f"    {label}check {line}: see the UI's Checks tab")

    def execute(wave) -> set[int]:
        waiting = wave.planned - len(wave.runs)
        typer.echo(
            f"wave {wave.number}: {len(wave.runs)} run(s)"
            + (f"; {waiting} more planned, to be planned again after them" if waiting else "")
        )
        total = wave.first - 1 + wave.planned
        return execute_all(
            wave.runs,
            defs,
            instance,
            workers,
            lambda index, run: announce(wave.first + index, total, run),
            lambda index, run, outcome: report(wave.first + index, run, outcome),
        )

    try:
        outcome = materialize_in_waves(defs, instance, assets or None, execute)
    except ValueError as error:
        raise _failure(error, 2) from error
    if not outcome.waves:
        typer.echo("everything is up to date")
        return
    for offset, (run, failed_numbers) in enumerate(outcome.skipped):
        number = outcome.ran + 1 + offset
        announce(number, outcome.ran + len(outcome.skipped), run)
        report(number, run, RunOutcome(False, skipped_after=failed_numbers))
    if outcome.up_to_date:
        names = dict.fromkeys(k.to_user_string() for r in outcome.up_to_date for k in r.asset_keys)
        typer.echo(
            f"{len(outcome.up_to_date)} planned run(s) found up to date once their upstream ran "
            f"(it wrote the same data), not run: {', '.join(names)}"
        )
    if outcome.stale_again:
        typer.secho(
            "stale again after running here (an upstream changed meanwhile): "
            f"{'; '.join(outcome.stale_again)}; run `{fi_command()} materialize` again",
            fg="red",
            err=True,
        )
    unsuccessful = len(outcome.failed) + len(outcome.skipped)
    if unsuccessful:
        typer.secho(
            f"{unsuccessful} run(s) failed or skipped: open the UI ({fi_command()} ui) for "
            "their logs",
            fg="red",
            err=True,
        )
    if unsuccessful or outcome.stale_again:
        raise typer.Exit(1)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="DuckDB SQL over one view per table, plus rejects")],
) -> None:
    """Run SQL over the tables and print CSV with a header row."""
    import duckdb

    from fi_resources.table_views import connect_views, has_model_calls

    settings = _settings()
    # The call cache is copied into the connection whole (seconds for a large one): only for a
    # query that names it.
    reads_calls = "model_calls" in query.lower()
    connection = connect_views(settings.home, settings.model_calls_url, model_calls=reads_calls)
    try:
        cursor = connection.execute(query)
    except duckdb.CatalogException as error:
        # What the connection can query: the stage tables, rejects and the call cache.
        names = {
            name
            for (name,) in connection.execute(
                "select table_name from information_schema.tables"
            ).fetchall()
        }
        if has_model_calls(settings.home, settings.model_calls_url):
            names.add("model_calls")
        tables = ", ".join(sorted(names)) or (
            f"none yet (run `{fi_command()} demo` or `{fi_command()} materialize`)"
        )
        raise _failure(
            f"{str(error).splitlines()[0]}\ntables under {settings.home.resolve()}: {tables}"
            "\n(FI_HOME, default ./fi_home, is relative to the working directory)",
            1,
        ) from error
    except duckdb.Error as error:
        raise _failure(error, 1) from error
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([column[0] for column in cursor.description or []])
    writer.writerows(cursor.fetchall())


@app.command()
def lineage(
    pair_id: Annotated[str, typer.Argument(help="a pair_id, or an unambiguous start of one")],
) -> None:
    """Print a pair, its judge score, its template, the user query and query shard it came from,
    and the document chunk it answers from with the copied spans marked, with the engine and
    model behind each step."""
    from fi_assets.cli.lineage import LineageError, find_lineage, render_lineage
    from fi_resources.table_views import connect_views

    settings = _settings()
    try:
        record = find_lineage(connect_views(settings.home, model_calls=False), pair_id)
    except LineageError as error:
        raise _failure(error, 1) from error
    typer.echo(render_lineage(record))


def record_demo_budget(settings):
    """The settings with `fi demo`'s training cap: unless a budget or a cap is already set, the
    tiny models train on the smallest recipe's packed tokens, at most DEMO_TRAINING_TOKENS.
    Recorded in the data root's fi.toml, so that a later `fi materialize` or the UI plans with
    the same budget instead of retraining everything on a larger one."""
    from fi_resources.settings import get_settings, record_in_data_root

    if settings.training_tokens is not None or settings.max_training_tokens is not None:
        return settings
    recorded = record_in_data_root(
        "max_training_tokens",
        DEMO_TRAINING_TOKENS,
        "fi demo: the tiny models train on at most this many tokens per recipe; delete this "
        "line to train on the smallest recipe's whole packed total",
    )
    typer.echo(f"recorded max_training_tokens = {DEMO_TRAINING_TOKENS} in {recorded}")
    get_settings.cache_clear()
    return _settings()


@app.command()
def demo(
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="all 285 IFBench queries, all 5,810 WebQuestions, 2,000 ShareGPT openings and "
            "105 articles (6 held out)",
        ),
    ] = False,
) -> None:
    """Ingest the bundled sample (real WildChat, WebQuestions and ShareGPT queries, real Wikipedia
    articles) and materialize everything."""
    from fi_assets.evaluation import fidelity_report
    from fi_method.samples import write_sample
    from fi_resources.storage import Storage

    settings = record_demo_budget(_settings())
    started = time.perf_counter()
    sample = write_sample(settings.home / "samples", full=full)
    for queries in sample.query_files:
        _ingest("queries", str(queries), None)
    _ingest("documents", str(sample.documents), None)
    _ingest("documents", str(sample.heldout_documents), settings.heldout_doc_shard)
    materialize(None)
    fi = fi_command()
    connection = Storage.from_settings(settings).connect()
    judged, kept, continued, example = connection.execute(
        "select (select count(*) from judged_pairs), "
        "(select count(*) from judged_pairs where kept), "
        "(select count(*) from continuations), "
        "(select pair_id from judged_pairs where kept order by score desc, pair_id limit 1)"
    ).fetchone()
    storage = Storage.from_settings(settings)
    report = settings.home / "reports" / "eval_report.md"
    table = report.read_text().split("\n\n")[1] if report.exists() else "(no eval report)"
    fidelity = fidelity_report(storage, settings)
    typer.echo(
        f"\ndemo done in {time.perf_counter() - started:.0f}s. Data root: {settings.home}\n"
        f"Evaluation ({report}):\n{table}\n"
        f"{judged} pairs judged, {kept} kept; {continued} non-instructional continuations.\n"
        f"Fidelity to the method:\n{fidelity}\n"
        f'  {fi} sql "select n_tags, count(*) from instruction_templates group by 1 order by 1"\n'
        f'  {fi} sql "select stage, reason, count(*) from rejects group by all order by 3 desc"\n'
        f'  {fi} sql "select score, count(*) from judged_pairs group by 1 order by 1"\n'
        f'  {fi} sql "select recipe, count(*), sum(n_tokens) from packed_corpus group by 1"\n'
        f'  {fi} sql "select recipe, benchmark, metric, value, judge from eval_scores"\n'
        f"  {fi} export fineinstructions exported/\n"
        + (f"  {fi} lineage {example}\n" if example else "")
        + f"  {fi} ui    (then open http://127.0.0.1:3000, Catalog)"
    )


@app.command()
def export(
    recipe: Annotated[str, typer.Argument(help="fineinstructions or non_instructional")],
    out: Annotated[Path, typer.Argument(help="a new or empty folder")],
) -> None:
    """Write a recipe's synthetic data as Parquet shards in the released FineInstructions schema,
    with a dataset card (README.md); loadable with datasets.load_dataset("parquet", ...)."""
    from fi_assets.cli.export import ExportError, export_recipe
    from fi_resources.storage import Storage

    settings = _settings()
    try:
        summary = export_recipe(Storage.from_settings(settings), settings, recipe, out)
    except ExportError as error:
        raise _failure(error, 2) from error
    typer.echo(
        f"exported {summary.rows} {recipe} rows of {summary.documents} documents "
        f"({summary.synthetic_tokens:,} tokens) from {len(summary.shards)} shard(s) to {out}"
    )


@app.command()
def judge(
    file: Annotated[
        Path, typer.Argument(help="JSONL: instruction, answer; optional template, document, id")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="write each good row with its score, kept and feedback, in order"),
    ] = None,
) -> None:
    """Judge (instruction, answer) pairs with the configured judge (FI_JUDGE_ENGINE,
    FI_JUDGE_MODEL) through the call cache, as judged_pairs does, and print the keep rate (score
    >= FI_MIN_JUDGE_SCORE) and the score histogram. A row without a `document` is judged against
    its answer as its document: the judge's grounding check then always passes, so what is
    measured is how well the answer answers the instruction. A row's `template` goes to the judge
    (the rules judge also counts the template's own words the answer mentions). Bad rows are
    printed with their line and reason and kept in `rejects` (stage judge); the good rows are
    judged."""
    from fi_assets.cli.judging import (
        judge_pairs,
        read_pairs,
        render_rejects,
        render_summary,
        write_jsonl,
    )
    from fi_assets.ingestion import default_shard_name
    from fi_resources.roles import Judge, role_resource
    from fi_resources.storage import Storage

    if out is not None and out.resolve() == file.resolve():
        raise _failure(f"--out {out} is FILE itself: write the judged rows elsewhere", 2)
    settings = _settings()
    try:
        rows, rejects = read_pairs(str(file))
    except (FileNotFoundError, ValueError) as error:
        raise _failure(error, 2) from error
    judge_role = role_resource(Judge, settings, min_score=settings.min_judge_score)
    progress = _progress("judged") if judge_role.is_llm else None
    result = judge_pairs(judge_role, str(file), rows, progress) if rows else None
    rejects += result.rejects if result else []
    shard = default_shard_name(str(file))
    Storage.from_settings(settings).write_rejects(
        "judge", shard, [{**r, "stage": "judge", "shard": shard} for r in rejects]
    )
    if rejects:
        typer.echo("\n".join(render_rejects(str(file), rejects, MAX_REJECTS_SHOWN)), err=True)
        typer.echo(
            f"{len(rejects)} row(s) rejected, see: {fi_command()} sql "
            f"\"select * from rejects where stage = 'judge' and shard = '{shard}'\"",
            err=True,
        )
    if result is None:
        raise _failure(f"{file}: no row could be judged ({len(rejects)} rejected)", 1)
    typer.echo(render_summary(result, judge_role.min_score, judge_role.label))
    if out is not None:
        write_jsonl(result.rows, out)
        typer.echo(f"wrote {len(result.rows)} judged rows to {out}")


def _progress(verb: str, every_s: float = 10.0):
    """A progress callback for role calls that prints done/total and how many the call cache
    answered to stderr, at most every `every_s` seconds and when the last call is answered."""
    printed = [time.perf_counter()]

    def progress(done: int, total: int, cached: int) -> None:
        if done < total and time.perf_counter() - printed[0] < every_s:
            return
        printed[0] = time.perf_counter()
        typer.echo(f"{verb} {done}/{total} ({cached} from the call cache)", err=True)

    return progress


def _failure(error: Exception | str, code: int) -> typer.Exit:
    """Print `error` as the command's error, in red on stderr; the exit to raise, with `code`."""
    typer.secho(f"error: {error}", fg="red", err=True)
    return typer.Exit(code)


@app.command()
def doctor() -> None:
    """Check before a long run: the data root, call cache and Dagster instance; each role's
    engine and model (a server lists it; a model's config and tokenizer load); the embedder; a
    GPU where one is needed. One line per check; exits 1 when one fails."""
    from fi_assets.cli.doctor import run_checks

    checks = run_checks(_settings())
    for check in checks:
        typer.secho(check.line(), fg=None if check.ok else "red")
    failed = [check for check in checks if not check.ok]
    if failed:
        raise _failure(f"{len(failed)} of {len(checks)} checks failed", 1)
    typer.echo(f"all {len(checks)} checks passed")


@app.command()
def calibrate(
    vector_share: Annotated[
        float, typer.Option(help="share of document vectors that should keep a candidate")
    ] = 0.5,
    sample: Annotated[int, typer.Option(help="document chunks to sample")] = 2000,
) -> None:
    """Propose a similarity threshold for the configured embedder from the materialized document
    chunks and template index: the (1 - share) quantile of each vector's best template match."""
    # First: the definitions module the proposal imports reads the settings as it loads.
    settings = _settings()
    from fi_assets.maintenance import propose_similarity_threshold

    try:
        proposal = propose_similarity_threshold(settings, vector_share, sample)
    except (FileNotFoundError, ValueError) as error:
        raise _failure(error, 1) from error
    quantiles = ", ".join(f"{name} {value:.3f}" for name, value in proposal.quantiles.items())
    typer.echo(
        f"{settings.embedder_model}: best-match similarity over {proposal.vectors} vectors of "
        f"{proposal.chunks} chunks: {quantiles}"
    )
    typer.echo(f"proposed threshold (share {vector_share}): {proposal.threshold:.3f}")
    typer.echo(f"use it: export FI_SIMILARITY_THRESHOLD={proposal.threshold:.3f}")


@app.command()
def ui(port: Annotated[int, typer.Option(help="web server port")] = 3000) -> None:
    """Serve the Dagster UI (dg dev) on the instance under FI_HOME."""
    from fi_resources.instance import prepare_dagster_home

    settings = _settings()
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(prepare_dagster_home(settings.home)),
        "FI_HOME": str(settings.home),
        # dg warns when the active environment is not the project's .venv; the one to use is the
        # one `fi` runs in, activated or not.
        "VIRTUAL_ENV": sys.prefix,
    }
    project = Path(__file__).resolve().parents[2]
    dg_command = str(Path(sys.executable).with_name("dg"))
    server = subprocess.Popen(
        [dg_command, "dev", "--port", str(port)],
        cwd=project,
        env=environment,
        # Its own process group, so that stopping `fi ui` stops the webserver and the daemon
        # that dg dev starts, which a signal to dg dev alone does not always reach.
        start_new_session=True,
    )
    raise typer.Exit(_serve_until_stopped(server))


def _serve_until_stopped(server: subprocess.Popen, grace_s: float = UI_STOP_GRACE_S) -> int:
    """Wait for `server`; on SIGTERM, SIGINT or SIGHUP stop its whole process group (SIGTERM,
    then SIGKILL after `grace_s`) and return its exit code."""
    import signal

    def stop(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
        raise typer.Exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    code = server.wait()
    # dg dev may exit while its children still serve: they go with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    return code
