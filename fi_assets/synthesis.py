"""instantiated_pairs[d], judged_pairs[d] and continuations[d]: stages C and D, and the
non-instructional baseline. Every model call goes through the call cache (fi_resources.roles), so
a rerun pays only for calls it has never made."""

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
    call_metadata,
    distribution_chart,
    each_partition,
    log_progress,
    markdown_preview,
    preview_metadata,
    write_stage,
)
from fi_method.evaluation.fidelity import render_markdown, synthesis_figures
from fi_method.llm_output import Refused
from fi_method.reasons import RejectReason
from fi_method.roles import RulesAids
from fi_method.synthesis import continuations as halving
from fi_method.synthesis.pairs import (
    FUNNEL_STAGES,
    JUDGE_BATCH_PAIRS,
    JUDGEMENTS_VERSION,
    PAIRS_VERSION,
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
    matched = storage.read_table(MATCHED_PAIRS, shard)
    docs = storage.read_table(DOCUMENTS, shard).select("doc_id", "source", "text")
    chunks = storage.read_table(DOCUMENT_CHUNKS, shard).select("chunk_id", "text")
    requests = (
        matched.join(_templates(storage, matched["template_id"]), on="template_id", how="left")
        .join(chunks.rename({"text": "chunk"}), on="chunk_id", how="left")
        .join(docs.select("doc_id", "source"), on="doc_id", how="left")
        # The order in which templates reach their cap of uses.
        .sort("doc_id", "rank", "chunk_id", "vector_index")
        .to_dicts()
    )
    # Templates of a since removed query shard are gone: those matches wait for matched_pairs.
    stale = [r for r in requests if r["template"] is None]
    requests = [r for r in requests if r["template"] is not None]
    text_of = dict(docs.select("doc_id", "text").iter_rows())
    for request in requests:
        # Where in its passage the template matched: local vector k is centred at k/(K+1).
        request["anchor"] = request["vector_index"] / (embedder.pooling_k + 1)
        # One string per document, shared by its requests (a copy each would hold every
        # document once per matched template).
        request["document"] = text_of.get(request["doc_id"])
    context.log.info(
        f"instantiating the templates of {matched.filter(pl.col('rank') == 0).height} passage "
        f"vectors ({len(requests)} with their alternates) with {instantiator.label}"
    )
    rounds: list[CallResult] = []

    def instantiate(batch: list[dict]) -> list[str | Refused]:
        rounds.append(
            instantiator.call(
                batch,
                RulesAids(embed=embedder.embed, embedder_model=embedder.model),
                progress=log_progress(context, "instantiated"),
                caller=_caller(context, shard),
            )
        )
        return rounds[-1].outputs

    kept, rejects, instantiated, tried = instantiate_by_rank(
        requests,
        instantiate,
        text_of,
        instantiator.min_excerpt_ratio,
        instantiator.engine,
        instantiator.model_name,
        max_template_uses,
    )
    calls = CallResult.combined(rounds)
    nulls = sum(reject["reason"] == RejectReason.TEMPLATE_DOES_NOT_FIT for reject in rejects)
    rejects += [
        {
            "source": r["source"],
            "item_id": f"{r['doc_id']}:{r['template_id']}",
            "reason": RejectReason.TEMPLATE_REMOVED,
            "detail": "its query shard was removed; matched_pairs is stale",
        }
        for r in stale
    ]
    frame = INSTANTIATED_PAIRS.frame(kept)
    return write_stage(
        storage,
        INSTANTIATED_PAIRS,
        shard,
        frame,
        rejects,
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
            "grounded": frame.height,
            "min_excerpt_ratio": instantiator.min_excerpt_ratio,
            "mean_excerpt_ratio": round(float(frame["excerpt_ratio"].mean() or 0.0), 4),
            "excerpt_ratio_chart": distribution_chart(
                frame["excerpt_ratio"].to_list(), "excerpt ratio of grounded pairs"
            ),
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
    pairs = storage.read_table(INSTANTIATED_PAIRS, shard)
    docs = storage.read_table(DOCUMENTS, shard).select("doc_id", "source", "text")
    # The rules judge reads what the template asks beside its slot values; a template_id is a
    # hash of its text, so the pair's template_id stands for it in the lineage.
    templates = _templates(storage, pairs["template_id"]).select("template_id", "template")
    context.log.info(f"judging {pairs.height} pairs with {judge.label}")
    progress = log_progress(context, "judged")
    rounds: list[CallResult] = []
    judged, rejects = [], []
    by_document = pairs.sort("doc_id", maintain_order=True)
    # A batch of documents at a time: only its rows hold their documents' text.
    for batch in document_batches(by_document["doc_id"].to_list(), JUDGE_BATCH_PAIRS):
        rows = (
            by_document[batch]
            .join(docs.rename({"text": "document"}), on="doc_id", how="left")
            .join(templates, on="template_id", how="left")
            .to_dicts()
        )
        rounds.append(
            judge.call(
                rows,
                progress=_offset(progress, batch.start, pairs.height, rounds),
                caller=_caller(context, shard),
            )
        )
        outputs = rounds[-1].outputs
        found = collect_judgements(rows, outputs, judge.min_score, judge.engine, judge.model_name)
        batch_judged, batch_rejects = one_pair_per_question(rows, *found)
        judged += batch_judged
        rejects += batch_rejects
    calls = CallResult.combined(rounds)
    # Stored in the pairs' own order, whatever the batches.
    position = {pair_id: i for i, pair_id in enumerate(pairs["pair_id"].to_list())}
    judged.sort(key=lambda row: position[row["pair_id"]])
    frame = JUDGED_PAIRS.frame(judged)
    scores = frame.group_by("score").len().sort("score")
    counts = _funnel_counts(storage, shard, pairs.height, rejects)
    kept_pairs = frame.filter(pl.col("kept")).select("pair_id").join(pairs, on="pair_id")
    kept, kept_templates = kept_pairs.height, kept_pairs["template_id"].to_list()
    fidelity = synthesis_figures(
        docs.height,
        counts["tried"],
        counts["null"],
        frame.height,
        kept_templates,
        kept_pairs["excerpt_ratio"].to_list(),
    )
    return write_stage(
        storage,
        JUDGED_PAIRS,
        shard,
        frame,
        rejects,
        ["pair_id", "score", "kept", "feedback"],
        {
            # What a reader wants to see first: kept pairs, best first, with what they say.
            **preview_metadata(
                frame.join(pairs.select("pair_id", "instruction", "answer"), on="pair_id").sort(
                    ["kept", "score", "pair_id"], descending=[True, True, False]
                ),
                ["score", "instruction", "answer", "feedback"],
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


def _funnel_counts(
    storage: Storage, shard: str, grounded: int, judge_rejects: list[dict]
) -> dict[str, int]:
    """The funnel of a shard (fi_method.synthesis.pairs.funnel_counts): its passage vectors with
    a template, its `grounded` pairs, and the reasons of instantiated_pairs' rejects and of the
    judge's (`judge_rejects`)."""
    matched = storage.read_table(MATCHED_PAIRS, shard).filter(pl.col("rank") == 0).height
    reasons = storage.read_rejects(INSTANTIATED_PAIRS.name, shard)["reason"].to_list()
    return funnel_counts(matched, grounded, reasons + [r["reason"] for r in judge_rejects])


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
