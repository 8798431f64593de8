"""The model-call cache: every role call (genericizer, instantiator, judge, continuation) is stored
under a hash of what determines its output, so no call is ever paid twice.

Each batch of calls is committed as soon as it is answered, so a crash loses at most the batch in
flight and a rerun resumes from the calls already made. A call refused as too long for the
model's window (fi_method.llm_output.Refused) is not stored: a model with a larger window answers
it. Two stores, one table:
- one SQLite file, FI_HOME/model_calls.sqlite, in WAL mode (the default): concurrent partitions
  (processes) on one machine append to it safely, SQLite serialising writers;
- PostgreSQL (FI_MODEL_CALLS_URL), for pods on several machines sharing FI_HOME on a network
  volume, where SQLite's WAL cannot work (it needs memory shared by all its writers' host).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import polars as pl

from fi_method.llm_output import Refused
from fi_resources.engines import Generation

CACHE_FILE = "model_calls.sqlite"
# Writers from parallel partitions wait for each other's short transactions rather than fail.
BUSY_TIMEOUT_S = 120

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_calls (
    cache_key TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    params TEXT NOT NULL,
    output TEXT NOT NULL,
    seconds REAL NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    run_id TEXT,
    partition TEXT,
    created_at TEXT NOT NULL
)
"""
VIEW_COLUMNS = {
    "cache_key": pl.String,
    "role": pl.String,
    "engine": pl.String,
    "model": pl.String,
    "prompt_version": pl.String,
    "params": pl.String,
    "output": pl.String,
    "seconds": pl.Float64,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "run_id": pl.String,
    "partition": pl.String,
    "created_at": pl.String,
}
_SELECT_ALL = f"SELECT {', '.join(VIEW_COLUMNS)} FROM model_calls ORDER BY created_at"
_INSERT_COLUMNS = ", ".join(VIEW_COLUMNS)
# Columns added since the table's first version: a cache written before gains them, empty.
_ADDED_COLUMNS = {"prompt_tokens": "INTEGER", "completion_tokens": "INTEGER"}


@dataclass(frozen=True)
class CallSpec:
    """What, besides the input, determines a call's output."""

    role: str
    engine: str
    model: str
    prompt_version: str
    params: dict

    def key(self, call_input) -> str:
        """The cache key of one call: a SHA-256 over the spec and the input (any JSON value)."""
        canonical = json.dumps(
            [self.role, self.engine, self.model, self.prompt_version, self.params, call_input],
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]

    def describe(self) -> str:
        """The spec in one line, for the code version of the assets whose calls it keys: the role
        and its version, the engine and model (left out for the rules engine, whose version
        names it), and each parameter. Two specs that key calls apart read apart here."""
        parts = [f"{self.role}:{self.prompt_version}"]
        if self.engine != "rules":
            parts.append(f"{self.engine}:{self.model}")
        parts += [f"{name}={value}" for name, value in sorted(self.params.items())]
        return "|".join(parts)


@dataclass(frozen=True)
class CallResult:
    """A step's calls: every output in input order (a Refused where the input does not fit the
    model's window), how many were made now and how many came from the cache, and the tokens the
    new calls cost (None where the engine does not count)."""

    outputs: list[str | Refused]
    made: int
    cached: int
    seconds: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def refused(self) -> int:
        """How many inputs were too long for the model's window."""
        return sum(isinstance(output, Refused) for output in self.outputs)

    def texts(self) -> list[str]:
        """The outputs with an empty text for each refused input, for the steps that score an
        answer rather than reject its row (an empty answer scores as one)."""
        return ["" if isinstance(output, Refused) else output for output in self.outputs]

    def tally(self) -> CallResult:
        """The same figures without the outputs' texts (the refused inputs stay, to be counted):
        what a step keeps of each batch's calls while it works through a partition, whose
        outputs, millions of them, it has already written."""
        return replace(
            self, outputs=[output for output in self.outputs if isinstance(output, Refused)]
        )

    @staticmethod
    def combined(results: Sequence[CallResult]) -> CallResult:
        """The calls of several batches of one step as one result, outputs in batch order."""

        def total(counts: list[int | None]) -> int | None:
            known = [count for count in counts if count is not None]
            return sum(known) if known else None

        return CallResult(
            outputs=[output for result in results for output in result.outputs],
            made=sum(result.made for result in results),
            cached=sum(result.cached for result in results),
            seconds=sum(result.seconds for result in results),
            prompt_tokens=total([result.prompt_tokens for result in results]),
            completion_tokens=total([result.completion_tokens for result in results]),
        )


def _rows(
    spec: CallSpec,
    answered: Sequence[tuple[str, Generation]],
    seconds: float,
    run_id: str | None,
    partition: str | None,
) -> list[tuple]:
    """The table rows of one answered chunk, in VIEW_COLUMNS order."""
    if not answered:
        return []
    now = datetime.now(UTC).isoformat(timespec="seconds")
    each = seconds / len(answered)
    params = json.dumps(spec.params, sort_keys=True)
    return [
        (key, spec.role, spec.engine, spec.model, spec.prompt_version, params, answer.text, each)
        + (answer.prompt_tokens, answer.completion_tokens, run_id, partition, now)
        for key, answer in answered
    ]


def _total(values: list[int | None]) -> int | None:
    counted = [value for value in values if value is not None]
    return sum(counted) if counted else None


class ModelCallCache(ABC):
    """Cached role calls: a store (`lookup`, `store`, `frame`) and the one way to use it, `call`."""

    @abstractmethod
    def lookup(self, keys: Sequence[str]) -> dict[str, str]:
        """The stored outputs of those `keys` that are cached."""

    @abstractmethod
    def store(
        self,
        spec: CallSpec,
        answered: Sequence[tuple[str, Generation]],
        seconds: float,
        run_id: str | None,
        partition: str | None,
    ) -> None:
        """Commit one answered chunk; `seconds` is the chunk's time, shared among its calls."""

    @abstractmethod
    def _all_rows(self) -> list[tuple]:
        """Every stored row, VIEW_COLUMNS in order, oldest first."""

    def frame(self) -> pl.DataFrame:
        """Every cached call, for the `model_calls` view of `fi sql`."""
        return pl.DataFrame(self._all_rows(), schema=VIEW_COLUMNS, orient="row")

    def call(
        self,
        spec: CallSpec,
        keys: Sequence[str],
        inputs: Sequence,
        answer: Callable[[list], Iterator[list[tuple[int, Generation | Refused]]]],
        batch_size: int,
        progress: Callable[[int, int, int], None] | None = None,
        run_id: str | None = None,
        partition: str | None = None,
    ) -> CallResult:
        """The output of every input (`keys[i]` is the cache key of `inputs[i]`), from the cache
        where it is there, else from `answer`, called on batches of at most `batch_size` inputs
        and yielding chunks of (index in the batch, Generation or Refused) as they are answered;
        each chunk is committed before the next is taken, so a crash loses only what was in
        flight. Refusals are not stored. Equal inputs are computed once. `progress(done, total,
        cached)` follows each chunk."""
        started = time.perf_counter()
        outputs: dict[str, str | Refused] = dict(self.lookup(keys))
        cached = sum(key in outputs for key in keys)
        pending: dict[str, object] = {}
        for key, item in zip(keys, inputs, strict=True):
            if key not in outputs and key not in pending:
                pending[key] = item
        pending_keys = list(pending)
        done = len(keys) - len(pending_keys)
        prompt_tokens: list[int | None] = []
        completion_tokens: list[int | None] = []
        for start in range(0, len(pending_keys), batch_size):
            batch_keys = pending_keys[start : start + batch_size]
            answered_in_batch = 0
            chunk_started = time.perf_counter()
            for chunk in answer([pending[key] for key in batch_keys]):
                answered = [
                    (batch_keys[index], generation)
                    for index, generation in chunk
                    if isinstance(generation, Generation)
                ]
                self.store(spec, answered, time.perf_counter() - chunk_started, run_id, partition)
                chunk_started = time.perf_counter()
                outputs.update((key, generation.text) for key, generation in answered)
                outputs.update(
                    (batch_keys[index], refused)
                    for index, refused in chunk
                    if isinstance(refused, Refused)
                )
                prompt_tokens += [generation.prompt_tokens for _, generation in answered]
                completion_tokens += [generation.completion_tokens for _, generation in answered]
                answered_in_batch += len(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, len(keys), cached)
            if answered_in_batch != len(batch_keys):
                raise RuntimeError(
                    f"{spec.role}: {answered_in_batch} outputs for {len(batch_keys)} calls"
                )
        return CallResult(
            [outputs[key] for key in keys],
            made=sum(not isinstance(outputs[key], Refused) for key in pending_keys),
            cached=cached,
            seconds=time.perf_counter() - started,
            prompt_tokens=_total(prompt_tokens),
            completion_tokens=_total(completion_tokens),
        )


class SQLiteCallCache(ModelCallCache):
    """The cache in one SQLite file, in WAL mode."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            self._create()
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        # WAL persists in the file; only a cache written before it was used needs switching.
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(_SCHEMA)
        present = {row[1] for row in connection.execute("PRAGMA table_info(model_calls)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                connection.execute(f"ALTER TABLE model_calls ADD COLUMN {column} {kind}")
        return connection

    def _create(self) -> None:
        """Create the file already in WAL mode, under a temporary name, then link it into place:
        processes that start at once never race to switch the journal mode (a switch needs the
        database to itself and fails at once, busy timeout or not, while another holds it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        connection = sqlite3.connect(temporary)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(_SCHEMA)
        connection.commit()
        connection.close()
        try:
            os.link(temporary, self.path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        finally:
            temporary.unlink(missing_ok=True)

    def lookup(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        if not self.path.exists():
            return found
        connection = self._connect()
        try:
            unique = list(dict.fromkeys(keys))
            # SQLite binds at most 32766 parameters per statement.
            for start in range(0, len(unique), 10_000):
                part = unique[start : start + 10_000]
                marks = ",".join("?" * len(part))
                found.update(
                    connection.execute(
                        f"SELECT cache_key, output FROM model_calls WHERE cache_key IN ({marks})",
                        part,
                    ).fetchall()
                )
        finally:
            connection.close()
        return found

    def store(self, spec, answered, seconds, run_id, partition) -> None:
        rows = _rows(spec, answered, seconds, run_id, partition)
        if not rows:
            return
        connection = self._connect()
        try:
            with connection:
                connection.executemany(
                    f"INSERT OR IGNORE INTO model_calls ({_INSERT_COLUMNS}) VALUES "
                    f"({','.join('?' * len(VIEW_COLUMNS))})",
                    rows,
                )
        finally:
            connection.close()

    def _all_rows(self) -> list[tuple]:
        if not self.path.exists():
            return []
        connection = self._connect()
        try:
            return connection.execute(_SELECT_ALL).fetchall()
        finally:
            connection.close()


class PostgresCallCache(ModelCallCache):
    """The cache in a PostgreSQL table, for writers on several machines."""

    def __init__(self, url: str):
        self.url = url
        self._ready = False

    def _connect(self):
        import psycopg2

        # SQLAlchemy-style URLs name a driver (postgresql+psycopg2://); libpq wants it without.
        parts = urlsplit(self.url)
        connection = psycopg2.connect(urlunsplit(parts._replace(scheme="postgresql")))
        if not self._ready:
            with connection, connection.cursor() as cursor:
                # CREATE TABLE IF NOT EXISTS races between first writers; a lock serialises them.
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext('fi_model_calls'))")
                cursor.execute(_SCHEMA.replace("REAL", "DOUBLE PRECISION"))
                for column, kind in _ADDED_COLUMNS.items():
                    cursor.execute(
                        f"ALTER TABLE model_calls ADD COLUMN IF NOT EXISTS {column} {kind}"
                    )
            self._ready = True
        return connection

    def lookup(self, keys: Sequence[str]) -> dict[str, str]:
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT cache_key, output FROM model_calls WHERE cache_key = ANY(%s)",
                    (list(dict.fromkeys(keys)),),
                )
                return dict(cursor.fetchall())
        finally:
            connection.close()

    def store(self, spec, answered, seconds, run_id, partition) -> None:
        from psycopg2.extras import execute_values

        rows = _rows(spec, answered, seconds, run_id, partition)
        if not rows:
            return
        connection = self._connect()
        try:
            with connection, connection.cursor() as cursor:
                execute_values(
                    cursor,
                    f"INSERT INTO model_calls ({_INSERT_COLUMNS}) VALUES %s "
                    "ON CONFLICT (cache_key) DO NOTHING",
                    rows,
                )
        finally:
            connection.close()

    def _all_rows(self) -> list[tuple]:
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(_SELECT_ALL)
                return cursor.fetchall()
        finally:
            connection.close()


def open_model_call_cache(home: Path, url: str | None = None) -> ModelCallCache:
    """The cache of the data root `home`: PostgreSQL when `url` is given, else its SQLite file."""
    if url:
        return PostgresCallCache(url)
    return SQLiteCallCache(Path(home).expanduser().resolve() / CACHE_FILE)
