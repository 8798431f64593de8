"""instantiated_pairs[d], judged_pairs[d] and continuations[d]: stages C and D, and the
non-instructional baseline. Every model call goes through the call cache (fi_resources.roles), so
a rerun pays only for calls it has never made."""

import time
from collections import Counter
from collections.abc import Iterable

import dagster as dg
import polars as pl

from fi_assets.checks import (
    INSTANTIATOR_NULL_RATE,
    JUDGE_PASS_RATE,
    NO_DOMINANT_TEMPLATE,
    check_result,
)
from fi_assets.partitions import doc_shards
from fi_assets.placement import on_gpu
from fi_assets.reporting import (
    PREVIEW_ROWS,
    call_metadata,
    distribution_chart,
    each_partition,
    log_progress,
    markdown_preview,
    preview_metadata,
    report_stage,
    write_stage,
)
from fi_method.evaluation.fidelity import render_markdown, synthesis_figures
from fi_method.llm_output import Refused
from fi_method.reasons import RejectReason
from fi_method.roles import MemoizedEmbed, RulesAids
from fi_method.synthesis import continuations as halving
from fi_method.synthesis.pairs import (
    FUNNEL_STAGES,
    INSTANTIATE_BATCH_REQUESTS,
    JUDGE_BATCH_PAIRS,
    JUDGEMENTS_VERSION,
    PAIRS_VERSION,
    REMEMBERED_KIND_VECTORS,
    RULES_BATCH_DOCUMENTS,
    collect_judgements,
    document_batches,
    funnel,
    funnel_counts,
    instantiate_by_rank,
    one_pair_per_question,
)
from fi_method.synthesis.quality import (
    MAX_JUDGE_PASS_RATE,
    MAX_NULL_RATE,
    MIN_PAIRS_FOR_PASS_RATE,
    PAPER_JUDGE_PASS_RATE,
    PAPER_NULL_RATE,
    dominant_templates,
    share_outside,
)
from fi_method.text import content_hash
from fi_resources.embedder import Embedder
from fi_resources.model_calls import CallResult
from fi_resources.roles import Continuer, Instantiator, Judge
from fi_resources.settings import Settings
from fi_resources.storage import Storage
from fi_resources.tables import (
    CONTINUATIONS,
    DOCUMENT_CHUNKS,
    DOCUMENTS,
    INSTANTIATED_PAIRS,
    INSTRUCTION_TEMPLATES,
    JUDGED_PAIRS,
    MATCHED_PAIRS,
    keys,
)


def _caller(context: dg.AssetExecutionContext, shard: str) -> tuple[str, str]:
    return context.run_id, shard


@dg.asset(
    partitions_def=doc_shards,
    # Templates are read by id (a content hash: an id always names the same text), so they are
    # not a dependency of their own: new or removed templates reach this asset via matched_pairs.
    deps=keys(MATCHED_PAIRS, DOCUMENTS, DOCUMENT_CHUNKS),
    group_name="synthesis",
    kinds={"polars", "parquet"},
    code_version=PAIRS_VERSION,
    **on_gpu(),
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[INSTANTIATOR_NULL_RATE],
    description="Stage C: the instantiator role (FI_INSTANTIATOR_ENGINE) fills each matched "
    "template from its document and answers it from the document. <excerpt> markers are expanded "
    "against the document; null outputs, unfilled slots, unresolvable excerpts and answers under "
    "the minimum excerpt ratio (FI_MIN_EXCERPT_RATIO, 0.80) are in `rejects`.",
)
def instantiated_pairs(
    context: dg.AssetExecutionContext,
    storage: Storage,
    instantiator: Instantiator,
    embedder: Embedder,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    return each_partition(
        context,
        lambda shard: _instantiate_shard(
            context, shard, storage, instantiator, embedder, settings.max_template_uses
        ),
    )


def _templates(storage: Storage, template_ids: pl.Series) -> pl.DataFrame:
    """template_id, query_id and template of the templates `template_ids` names, read alone from
    every query shard (a library of millions stays on disk). Two query shards can yield the same
    template: the first query (by id) stands for it."""
    return (
        storage.scan_all(INSTRUCTION_TEMPLATES)
        .select("template_id", "query_id", "template")
        .filter(pl.col("template_id").is_in(template_ids.unique().to_list()))
        .sort("template_id", "query_id")
        .unique("template_id", keep="first", maintain_order=True)
        .collect()
    )


def _instantiate_shard(
    context: dg.AssetExecutionContext,
    shard: str,
    storage: Storage,
    instantiator: Instantiator,
    embedder: Embedder,
    max_template_uses: int,
) -> dg.MaterializeResult:
    # The matches alone (ids, ranks) are read whole; passages and documents a batch at a time.
    matched = storage.read_table(MATCHED_PAIRS, shard).sort(
        # The order in which templates reach their cap of uses.
        "doc_id",
        "rank",
        "chunk_id",
        "vector_index",
    )
    templates = _templates(storage, matched["template_id"])
    context.log.info(
        f"instantiating the templates of {matched.filter(pl.col('rank') == 0).height} passage "
        f"vectors ({matched.height} with their alternates) with {instantiator.label}"
    )
    rounds: list[CallResult] = []
    # Every rank of a batch reads the same documents' filler kinds: each is embedded once.
    aids = RulesAids(
        embed=MemoizedEmbed(embedder.embed, most=REMEMBERED_KIND_VECTORS),
        embedder_model=embedder.model,
    )

    def instantiate(batch: list[dict]) -> list[str | Refused]:
        result = instantiator.call(
            batch,
            aids,
            progress=log_progress(context, "instantiated"),
            caller=_caller(context, shard),
        )
        # Only the figures stay for the partition: a batch's outputs are written with it.
        rounds.append(result.tally())
        return result.outputs

    uses, seen = Counter(), set()
    tried = instantiated = nulls = 0
    ratios: list[float] = []
    n_documents, done_documents = matched["doc_id"].n_unique(), 0
    started = time.perf_counter()
    with (
        storage.table_writer(INSTANTIATED_PAIRS, shard) as written,
        storage.rejects_writer(INSTANTIATED_PAIRS.name, shard) as rejected,
    ):
        for batch in document_batches(
            matched["doc_id"].to_list(),
            INSTANTIATE_BATCH_REQUESTS,
            RULES_BATCH_DOCUMENTS if instantiator.engine == "rules" else None,
        ):
            requests, text_of = _requests(storage, shard, matched[batch], templates, embedder)
            # Templates of a since removed query shard are gone: those matches wait for
            # matched_pairs.
            stale = [
                {
                    "source": r["source"],
                    "item_id": f"{r['doc_id']}:{r['template_id']}",
                    "reason": RejectReason.TEMPLATE_REMOVED,
                    "detail": "its query shard was removed; matched_pairs is stale",
                }
                for r in requests
                if r["template"] is None
            ]
            kept, rejects, made, batch_tried = instantiate_by_rank(
                [r for r in requests if r["template"] is not None],
                instantiate,
                text_of,
                instantiator.min_excerpt_ratio,
                instantiator.engine,
                instantiator.model_name,
                max_template_uses,
                uses,
                seen,
            )
            frame = INSTANTIATED_PAIRS.frame(kept)
            written.write(frame)
            rejected.add(rejects + stale)
            tried, instantiated = tried + batch_tried, instantiated + made
            nulls += sum(r["reason"] == RejectReason.TEMPLATE_DOES_NOT_FIT for r in rejects)
            ratios += frame["excerpt_ratio"].to_list()
            # The partition's progress: a role call's own log covers one batch.
            done_documents += matched[batch]["doc_id"].n_unique()
            elapsed = time.perf_counter() - started
            context.log.info(
                f"instantiated the matches of {done_documents}/{n_documents} documents "
                f"({written.rows} grounded pairs, "
                f"~{(n_documents - done_documents) * elapsed / done_documents:.0f}s left)"
            )
    calls = CallResult.combined(rounds)
    return report_stage(
        written,
        rejected,
        shard,
        ["instruction", "answer", "excerpt_ratio"],
        {
            "engine": instantiator.engine,
            "model": instantiator.model_name,
            "matched": matched.filter(pl.col("rank") == 0).height,
            "tried": tried,
            "instantiated": instantiated,
            "null_outputs": nulls,
            "null_rate": round(nulls / tried, 4) if tried else 0.0,
            "max_template_uses": max_template_uses,
            "null_rate_paper": PAPER_NULL_RATE,
            "grounded": written.rows,
            "min_excerpt_ratio": instantiator.min_excerpt_ratio,
            "mean_excerpt_ratio": round(sum(ratios) / len(ratios), 4) if ratios else 0.0,
            "excerpt_ratio_chart": distribution_chart(ratios, "excerpt ratio of grounded pairs"),
            **call_metadata(calls),
        },
        checks=[
            check_result(
                INSTANTIATOR_NULL_RATE,
                tried,
                share_outside(
                    "matches the instantiator answered null",
                    nulls,
                    tried,
                    0.0,
                    # The rules instantiator answers null wherever the passage does not support
                    # the template: its null rate measures the library's fit, not a fault.
                    1.0 if instantiator.engine == "rules" else MAX_NULL_RATE,
                    f"the paper's is ~{PAPER_NULL_RATE:.0%}: do the templates fit the documents, "
                    "and does the model get its prompt format?",
                ),
            )
        ],
    )


def _requests(
    storage: Storage,
    shard: str,
    matched: pl.DataFrame,
    templates: pl.DataFrame,
    embedder: Embedder,
) -> tuple[list[dict], dict[str, str]]:
    """The instantiator's requests for a batch of matched pairs (whole documents), in their
    order, each with its template (None when removed), passage, source, anchor and document, and
    the batch's documents' text by doc_id."""
    docs = _documents_of(storage, shard, matched["doc_id"])
    chunks = (
        storage.scan_table(DOCUMENT_CHUNKS, shard)
        .select("chunk_id", "text")
        .filter(pl.col("chunk_id").is_in(matched["chunk_id"].unique().to_list()))
        .collect()
    )
    requests = (
        matched.join(templates, on="template_id", how="left", maintain_order="left")
        .join(chunks.rename({"text": "chunk"}), on="chunk_id", how="left", maintain_order="left")
        .join(docs.select("doc_id", "source"), on="doc_id", how="left", maintain_order="left")
        .to_dicts()
    )
    text_of = dict(docs.select("doc_id", "text").iter_rows())
    for request in requests:
        # Where in its passage the template matched: local vector k is centred at k/(K+1).
        request["anchor"] = request["vector_index"] / (embedder.pooling_k + 1)
        # One string per document, shared by its requests (a copy each would hold every
        # document once per matched template).
        request["document"] = text_of.get(request["doc_id"])
    return requests, text_of


@dg.asset(
    partitions_def=doc_shards,
    # matched_pairs: the funnel's first count (matched, then instantiated, grounded, kept).
    deps=keys(INSTANTIATED_PAIRS, DOCUMENTS, MATCHED_PAIRS),
    group_name="synthesis",
    kinds={"polars", "parquet"},
    code_version=JUDGEMENTS_VERSION,
    **on_gpu(),
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[JUDGE_PASS_RATE, NO_DOMINANT_TEMPLATE],
    description="Stage D: the judge role (FI_JUDGE_ENGINE; Flow Judge's prompt and 5-point rubric) "
    "scores every grounded pair; `kept` = score >= FI_MIN_JUDGE_SCORE (4). The metadata holds the "
    "funnel matched -> instantiated -> grounded -> judged -> kept.",
)
def judged_pairs(
    context: dg.AssetExecutionContext, storage: Storage, judge: Judge
) -> dg.MaterializeResult:
    return each_partition(context, lambda shard: _judge_shard(context, shard, storage, judge))


def _offset(progress, done: int, total: int, rounds: list[CallResult]):
    """A batch's progress callback reporting on the whole shard: the pairs of the batches before
    it done, and the cache's answers to them counted."""
    cached = sum(calls.cached for calls in rounds)
    return lambda batch_done, _batch_total, batch_cached: progress(
        done + batch_done, total, cached + batch_cached
    )


def _judge_shard(
    context: dg.AssetExecutionContext, shard: str, storage: Storage, judge: Judge
) -> dg.MaterializeResult:
    # The pairs' ids are read whole; their text and their documents a batch at a time.
    pairs = storage.scan_table(INSTANTIATED_PAIRS, shard)
    listed = (
        pairs.select("pair_id", "doc_id", "template_id", "excerpt_ratio")
        .collect()
        .sort("doc_id", maintain_order=True)
    )
    # The rules judge reads what the template asks beside its slot values; a template_id is a
    # hash of its text, so the pair's template_id stands for it in the lineage.
    templates = _templates(storage, listed["template_id"]).select("template_id", "template")
    context.log.info(f"judging {listed.height} pairs with {judge.label}")
    progress = log_progress(context, "judged")
    rounds: list[CallResult] = []
    verdicts, best = [], []
    with (
        storage.table_writer(JUDGED_PAIRS, shard) as written,
        storage.rejects_writer(JUDGED_PAIRS.name, shard) as rejected,
    ):
        # A batch of documents at a time: only its rows hold their documents' text.
        for batch in document_batches(listed["doc_id"].to_list(), JUDGE_BATCH_PAIRS):
            ids = listed[batch]
            text = pairs.filter(pl.col("pair_id").is_in(ids["pair_id"].to_list())).collect()
            docs = _documents_of(storage, shard, ids["doc_id"])
            rows = (
                ids.select("pair_id")
                .join(text, on="pair_id", how="left", maintain_order="left")
                .join(
                    docs.rename({"text": "document"}),
                    on="doc_id",
                    how="left",
                    maintain_order="left",
                )
                .join(templates, on="template_id", how="left", maintain_order="left")
                .to_dicts()
            )
            result = judge.call(
                rows,
                progress=_offset(progress, batch.start, listed.height, rounds),
                caller=_caller(context, shard),
            )
            rounds.append(result.tally())
            found = collect_judgements(
                rows, result.outputs, judge.min_score, judge.engine, judge.model_name
            )
            judged, rejects = one_pair_per_question(rows, *found)
            frame = JUDGED_PAIRS.frame(judged)
            written.write(frame)
            rejected.add(rejects)
            verdicts.append(frame.select("pair_id", "score", "kept"))
            # What a reader wants to see first: kept pairs, best first, with what they say.
            best.append(_best_first(frame.join(text, on="pair_id")).head(PREVIEW_ROWS))
    calls = CallResult.combined(rounds)
    frame = (
        pl.concat(verdicts)
        if verdicts
        else JUDGED_PAIRS.frame([]).select("pair_id", "score", "kept")
    )
    scores = frame.group_by("score").len().sort("score")
    counts = _funnel_counts(storage, shard, listed.height, rejected.reasons.elements())
    kept_pairs = frame.filter(pl.col("kept")).select("pair_id").join(listed, on="pair_id")
    kept, kept_templates = kept_pairs.height, kept_pairs["template_id"].to_list()
    fidelity = synthesis_figures(
        _documents(storage, shard),
        counts["tried"],
        counts["null"],
        frame.height,
        kept_templates,
        kept_pairs["excerpt_ratio"].to_list(),
    )
    shown = ["score", "instruction", "answer", "feedback"]
    return report_stage(
        written,
        rejected,
        shard,
        shown,
        {
            **preview_metadata(
                _best_first(pl.concat(best))
                if best
                else pl.DataFrame(schema=dict.fromkeys(shown, pl.String)),
                shown,
            ),
            "engine": judge.engine,
            "model": judge.model_name,
            "min_score": judge.min_score,
            "kept": kept,
            "kept_share": round(float(frame["kept"].mean() or 0.0), 4),
            "fidelity": dg.MetadataValue.md(render_markdown(fidelity)),
            "score_distribution": {str(k): v for k, v in scores.iter_rows()},
            "score_chart": distribution_chart(frame["score"].to_list(), "judge scores", True),
            "funnel": dg.MetadataValue.md(
                markdown_preview(
                    pl.DataFrame(funnel(counts)),
                    ["stage", "pairs", "of_matched", "of_previous"],
                    rows=len(FUNNEL_STAGES),
                )
            ),
            **{f"funnel_{stage}": counts[stage] for stage in FUNNEL_STAGES},
            "instantiator_outputs": counts["tried"],
            **call_metadata(calls),
        },
        checks=[
            check_result(
                JUDGE_PASS_RATE,
                frame.height,
                share_outside(
                    "pairs kept by the judge",
                    kept,
                    frame.height,
                    0.0,
                    MAX_JUDGE_PASS_RATE,
                    f"the paper keeps ~{PAPER_JUDGE_PASS_RATE:.0%}",
                    MIN_PAIRS_FOR_PASS_RATE,
                ),
            ),
            check_result(
                NO_DOMINANT_TEMPLATE,
                kept,
                dominant_templates(kept_templates),
            ),
        ],
    )


def _best_first(judged: pl.DataFrame) -> pl.DataFrame:
    return judged.sort(["kept", "score", "pair_id"], descending=[True, True, False])


def _documents(storage: Storage, shard: str) -> int:
    return storage.scan_table(DOCUMENTS, shard).select(pl.len()).collect().item()


def _documents_of(storage: Storage, shard: str, doc_ids: pl.Series) -> pl.DataFrame:
    """doc_id, source and text of the shard's documents that `doc_ids` names, read alone."""
    return (
        storage.scan_table(DOCUMENTS, shard)
        .select("doc_id", "source", "text")
        .filter(pl.col("doc_id").is_in(doc_ids.unique().to_list()))
        .collect()
    )


def _funnel_counts(
    storage: Storage, shard: str, grounded: int, judge_reasons: Iterable[str]
) -> dict[str, int]:
    """The funnel of a shard (fi_method.synthesis.pairs.funnel_counts): its passage vectors with
    a template, its `grounded` pairs, and the reasons of instantiated_pairs' rejects and of the
    judge's."""
    matched = storage.scan_table(MATCHED_PAIRS, shard).filter(pl.col("rank") == 0).select(pl.len())
    # The reasons alone: a shard's rejects with their details run to hundreds of MB.
    reasons = storage.read_rejects(INSTANTIATED_PAIRS.name, shard, ["reason"])["reason"].to_list()
    return funnel_counts(matched.collect().item(), grounded, reasons + list(judge_reasons))


@dg.asset(
    partitions_def=doc_shards,
    deps=keys(DOCUMENTS),
    group_name="synthesis",
    kinds={"polars", "parquet"},
    code_version=halving.HALVING_VERSION,
    **on_gpu(),
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="Non-instructional pairs (halving and completion): each document is cut at the "
    "sentence boundary nearest its middle; the first half is the instruction, the answer is a "
    "teacher's continuation (FI_CONTINUATION_ENGINE) or, with the rules engine, the document's own "
    "second half (variant `teacher_free`).",
)
def continuations(
    context: dg.AssetExecutionContext, storage: Storage, continuer: Continuer
) -> dg.MaterializeResult:
    return each_partition(
        context, lambda shard: _continue_shard(context, shard, storage, continuer)
    )


def _continue_shard(
    context: dg.AssetExecutionContext, shard: str, storage: Storage, continuer: Continuer
) -> dg.MaterializeResult:
    docs = storage.read_table(DOCUMENTS, shard).select("doc_id", "source", "line", "text")
    halves = [
        (doc_id, *halving.halve(text)) for doc_id, text in docs.select("doc_id", "text").iter_rows()
    ]
    metadata = {"engine": continuer.engine, "model": continuer.model_name}
    if continuer.engine == "rules":
        variant = halving.TEACHER_FREE
        instructions = [first for _, first, _ in halves]
        answers = [second for _, _, second in halves]
    else:
        variant = halving.TEACHER
        instructions = [halving.teacher_prompt(first) for _, first, _ in halves]
        calls = continuer.call(
            [{"prompt": instruction} for instruction in instructions],
            progress=log_progress(context, "continued"),
            caller=_caller(context, shard),
        )
        answers = [
            output if isinstance(output, Refused) else output.strip() for output in calls.outputs
        ]
        metadata |= call_metadata(calls)
    rows, rejects = [], []
    origins = docs.select("doc_id", "source", "line").rows()
    for (doc_id, source, line), instruction, answer in zip(
        origins, instructions, answers, strict=True
    ):
        if isinstance(answer, Refused):
            rejects.append(
                {
                    "source": source,
                    "line": line,
                    "item_id": doc_id,
                    "reason": RejectReason.PROMPT_TOO_LONG,
                    "detail": answer.detail,
                }
            )
            continue
        if not instruction or not answer:
            reason = "no_boundary" if not instruction else "empty_continuation"
            rejects.append({"source": source, "line": line, "item_id": doc_id, "reason": reason})
            continue
        rows.append(
            {
                "continuation_id": content_hash(doc_id, variant, instruction, answer),
                "doc_id": doc_id,
                "instruction": instruction,
                "answer": answer,
                "variant": variant,
                "engine": continuer.engine,
                "model": continuer.model_name,
            }
        )
    frame = CONTINUATIONS.frame(rows)
    return write_stage(
        storage,
        CONTINUATIONS,
        shard,
        frame,
        rejects,
        ["variant", "instruction", "answer"],
        {"variant": variant, "documents": docs.height, **metadata},
    )
