"""The lineage of one pair, as `fi lineage` prints it: a join over the tables by their content-hash
ids, from the judged pair back to the user query it was templated from and the chunk it answers
from."""

from __future__ import annotations

import textwrap

import duckdb

from fi_assets.command import fi_command
from fi_method.synthesis.excerpts import excerpt_spans

MARK_OPEN, MARK_CLOSE = "[[", "]]"
_PAIR_QUERY = """
select p.pair_id, p.shard as doc_shard, p.instruction, p.answer, p.excerpt_ratio, p.similarity,
       p.engine as instantiator_engine, p.model as instantiator_model,
       {judge}, t.template_id, t.template, t.compatible_document_description,
       t.engine as genericizer_engine, t.model as genericizer_model, t.shard as query_shard,
       q.query_id, q.query, q.source as query_source, q.line as query_line,
       c.chunk_id, c.position as chunk_position, c.text as chunk,
       d.doc_id, d.source as doc_source, d.line as doc_line, d.url
from instantiated_pairs p
{judge_join}
left join instruction_templates t on t.template_id = p.template_id and t.query_id = p.query_id
left join raw_queries q on q.query_id = p.query_id
left join document_chunks c on c.chunk_id = p.chunk_id
left join documents d on d.doc_id = p.doc_id
where p.pair_id like ? || '%'
"""
_NO_JUDGE = (
    "null as score, null as feedback, null as kept, null as judge_engine, null as judge_model"
)
_JUDGE = "j.score, j.feedback, j.kept, j.engine as judge_engine, j.model as judge_model"


class LineageError(LookupError):
    """No pair, or more than one, for the id given."""


def find_lineage(connection: duckdb.DuckDBPyConnection, pair_id: str) -> dict:
    """Everything a pair comes from, by its id or an unambiguous prefix of it, over the views of
    fi_resources.table_views."""
    tables = {row[0] for row in connection.execute("show tables").fetchall()}
    needed = {
        "instantiated_pairs",
        "instruction_templates",
        "raw_queries",
        "document_chunks",
        "documents",
    }
    if missing := needed - tables:
        raise LineageError(
            f"no {', '.join(sorted(missing))} yet: run {fi_command()} materialize first"
        )
    judged = "judged_pairs" in tables
    query = _PAIR_QUERY.format(
        judge=_JUDGE if judged else _NO_JUDGE,
        judge_join="left join judged_pairs j on j.pair_id = p.pair_id" if judged else "",
    )
    cursor = connection.execute(query, [pair_id])
    names = [column[0] for column in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    if not rows:
        raise LineageError(
            f"no pair {pair_id!r} in instantiated_pairs; list kept pairs' ids with: "
            f"{fi_command()} sql "
            '"select pair_id, instruction from instantiated_pairs join judged_pairs using '
            '(pair_id) where kept limit 10"'
        )
    if len({row["pair_id"] for row in rows}) > 1:
        raise LineageError(f"{pair_id!r} is the start of {len(rows)} pair ids: give more of it")
    return rows[0]


def mark_excerpts(answer: str, chunk: str) -> str:
    """The chunk with the spans the answer copies wrapped in [[ ]]."""
    pieces, cursor = [], 0
    for start, end in excerpt_spans(answer, chunk):
        pieces += [chunk[cursor:start], MARK_OPEN, chunk[start:end], MARK_CLOSE]
        cursor = end
    pieces.append(chunk[cursor:])
    return "".join(pieces)


def _block(text: str | None) -> str:
    return textwrap.indent(text or "(missing)", "    ")


def _made_by(record: dict, role: str) -> str:
    engine, model = record[f"{role}_engine"], record[f"{role}_model"]
    return f"{role} {engine}" if engine == model else f"{role} {engine}: {model}"


def render_lineage(record: dict) -> str:
    """The lineage as text, from the pair back to the query and the chunk."""
    if record["score"] is None:
        judged = "not judged yet"
    else:
        verdict = "kept" if record["kept"] else "dropped"
        judged = f"score {record['score']} / 5, {verdict} ({_made_by(record, 'judge')})\n" + _block(
            record["feedback"]
        )
    chunk = record["chunk"] and mark_excerpts(record["answer"], record["chunk"])
    url = f", {record['url']}" if record["url"] else ""
    sections = [
        f"pair {record['pair_id']}  (doc shard {record['doc_shard']})",
        f"instruction ({_made_by(record, 'instantiator')}):\n" + _block(record["instruction"]),
        f"answer (excerpt ratio {record['excerpt_ratio']:.2f}):\n" + _block(record["answer"]),
        f"judgement: {judged}",
        (
            f"template {record['template_id']} ({_made_by(record, 'genericizer')}):\n"
            f"{_block(record['template'])}\n"
            f"  compatible documents: {record['compatible_document_description']}"
        ),
        (
            f"user query {record['query_id']} from query shard {record['query_shard']} "
            f"({record['query_source']}, line {record['query_line']}):\n{_block(record['query'])}"
        ),
        (
            f"document {record['doc_id']} ({record['doc_source']}, line {record['doc_line']}{url}),"
            f" chunk {record['chunk_id']} at position {record['chunk_position']}, matched with "
            f"similarity {record['similarity']:.3f}; the spans the answer copies are marked "
            f"{MARK_OPEN} {MARK_CLOSE}:\n{_block(chunk)}"
        ),
    ]
    return "\n\n".join(sections)
