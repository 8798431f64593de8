"""eval_scores[recipe x benchmark] and eval_report: stage F's evaluation. Each recipe's trained
model answers every benchmark greedily in its training format; answers are scored mechanically
where they can be checked, by the configured LLM judge otherwise, and `heldout_nll` measures the
answer-token likelihood of pairs from a document shard no recipe trained on."""

import json
import math

import dagster as dg
import polars as pl

from fi_assets.packing import packed_counts
from fi_assets.partitions import BENCHMARK, RECIPE, by_recipe, recipe_benchmarks
from fi_assets.placement import on_gpu
from fi_assets.reporting import (
    call_metadata,
    column_schema,
    log_progress,
    markdown_preview,
    png_markdown,
)
from fi_method.corpus.budget import ShardTokens, plan_budget
from fi_method.corpus.packing import RECIPES, load_training_tokenizer, tokenize_sample
from fi_method.evaluation import benchmarks as bench
from fi_method.evaluation.eval_report import headline_table_by_benchmark, plot, render_markdown
from fi_method.evaluation.fidelity import (
    Figure,
    packing_figures,
    synthesis_figures,
    training_figures,
)
from fi_method.evaluation.fidelity import render_markdown as render_fidelity
from fi_method.evaluation.scoring import Aggregate, BenchmarkJudging, score_benchmark
from fi_method.reasons import RejectReason
from fi_resources.checkpoints import answer_nll, export_folder, weights_hash
from fi_resources.embedder import torch_device
from fi_resources.roles import BenchmarkJudge, Candidate, role_resource
from fi_resources.settings import Settings
from fi_resources.storage import Storage, frame_version
from fi_resources.tables import (
    DOCUMENTS,
    EVAL_GENERATIONS,
    EVAL_SCORES,
    INSTANTIATED_PAIRS,
    JUDGED_PAIRS,
    MATCHED_PAIRS,
    keys,
)


class EvalConfig(dg.Config):
    """How much of each benchmark to run. The defaults are a CPU demo's; `items_per_kind: 0`
    runs every item, as the paper does."""

    items_per_kind: int = 8
    max_new_tokens: int = 64
    seed: int = 0


def _score_row(recipe: str, benchmark: str, aggregate: Aggregate) -> dict:
    return {"recipe": recipe, "benchmark": benchmark, **vars(aggregate)}


def heldout_rows(storage: Storage, recipe: str, settings: Settings) -> list[dict]:
    """heldout_nll: the answer-token NLL, per token, of the grounded pairs of the held-out
    document shard under the recipe's model. Every grounded pair counts, not only those the judge
    kept: the measure needs no judge, and more pairs make it steadier. A row without a value says
    why when there are none."""
    shard = settings.heldout_doc_shard
    if not storage.table_path(INSTANTIATED_PAIRS, shard).exists():
        note = f"no pairs of the held-out doc shard {shard!r}: ingest one (--shard {shard})"
        missing = Aggregate("answer_nll", None, bench.OBJECTIVE, 0, note)
        return [_score_row(recipe, bench.HELDOUT_NLL, missing)]
    pairs = storage.read_table(INSTANTIATED_PAIRS, shard)
    tokenizer = load_training_tokenizer(settings.training_tokenizer)
    samples = [
        tokenize_sample(tokenizer, row["instruction"], row["answer"])
        for row in pairs.sort("pair_id").iter_rows(named=True)
    ]
    device = torch_device(settings.device)
    total, tokens = answer_nll(export_folder(storage.root, recipe), samples, device)
    nll = total / tokens if tokens else None
    note = f"{len(samples)} grounded pairs, {tokens} answer tokens of doc shard {shard}"
    perplexity = None if nll is None else math.exp(nll)
    return [
        _score_row(
            recipe, bench.HELDOUT_NLL, Aggregate(metric, value, bench.OBJECTIVE, len(samples), note)
        )
        for metric, value in (("answer_nll", nll), ("answer_perplexity", perplexity))
    ]


@dg.asset(
    partitions_def=recipe_benchmarks,
    ins={
        "trained_checkpoint": dg.AssetIn(
            partition_mapping=by_recipe,
            dagster_type=dg.Nothing,
        ),
        INSTANTIATED_PAIRS.name: dg.AssetIn(
            INSTANTIATED_PAIRS.key,
            partition_mapping=dg.AllPartitionMapping(),
            dagster_type=dg.Nothing,
        ),
    },
    group_name="evaluation",
    kinds={"pytorch"},
    code_version="1",
    **on_gpu(),
    description="Stage F: one recipe's model on one benchmark. heldout_nll: answer-token NLL of "
    "the held-out doc shard's grounded pairs (FI_HELDOUT_DOC_SHARD). mixeval, mixeval_hard, "
    "mt_bench_101, alpaca_eval: greedy answers in the training format, scored mechanically "
    "where possible (column judge = mechanical) and by the FI_EVAL_JUDGE_ENGINE judge otherwise. "
    "Per-item answers and scores: table eval_generations.",
)
def eval_scores(
    context: dg.AssetExecutionContext,
    config: EvalConfig,
    storage: Storage,
    benchmark_judge: BenchmarkJudge,
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    dimensions = context.partition_key.keys_by_dimension
    recipe, benchmark = dimensions[RECIPE], dimensions[BENCHMARK]
    partition = f"{recipe}.{benchmark}"
    metadata: dict = {}
    if benchmark == bench.HELDOUT_NLL:
        rows = heldout_rows(storage, recipe, settings)
    else:
        items = bench.select_items(
            bench.load_benchmark(benchmark), config.items_per_kind, config.seed
        )
        responses, calls = _answers(context, storage, recipe, items, config, settings)
        metadata |= {f"candidate_{k}": v for k, v in call_metadata(calls).items()}
        judge_calls = []

        def ask(conversations: list[list[dict]]) -> list[str]:
            judge_calls.append(
                benchmark_judge.call(
                    [{"messages": messages} for messages in conversations],
                    progress=log_progress(context, "judged"),
                    caller=(context.run_id, context.partition_key),
                )
            )
            return judge_calls[-1].texts()

        judging = BenchmarkJudging(ask, benchmark_judge.label, benchmark_judge.is_llm, config.seed)
        baseline, baseline_name = (
            _alpaca_eval_baseline(context, storage, items, config, settings)
            if benchmark == bench.ALPACA_EVAL
            else (None, "")
        )
        aggregates, scored = score_benchmark(
            benchmark, items, responses, judging, baseline, baseline_name
        )
        for judged in judge_calls:
            metadata |= {f"judge_{k}": v for k, v in call_metadata(judged).items()}
        rows = [_score_row(recipe, benchmark, aggregate) for aggregate in aggregates]
        generations = EVAL_GENERATIONS.frame(
            {
                "recipe": recipe,
                "benchmark": benchmark,
                "item_id": each.item.item_id,
                "kind": each.item.kind,
                "task": each.item.task,
                "question": each.item.question,
                "response": response,
                "score": each.score,
                "judge": each.judge,
                "judge_output": each.judge_output,
            }
            for each, response in zip(scored, responses)
        )
        storage.write_table(EVAL_GENERATIONS, partition, generations)
        metadata["answers_preview"] = dg.MetadataValue.md(
            markdown_preview(generations, ["item_id", "question", "response", "score"])
        )
    scores = EVAL_SCORES.frame(rows)
    path = storage.write_table(EVAL_SCORES, partition, scores)
    return dg.MaterializeResult(
        metadata={
            "partition": partition,
            "dagster/row_count": scores.height,
            "dagster/column_schema": column_schema(scores),
            "scores": dg.MetadataValue.md(
                markdown_preview(scores, ["metric", "value", "judge", "n_items", "note"], rows=10)
            ),
            "path": dg.MetadataValue.path(str(path)),
            **{row["metric"]: row["value"] for row in rows if row["value"] is not None},
            **metadata,
        },
        data_version=dg.DataVersion(frame_version(scores)),
    )


def _alpaca_eval_baseline(
    context, storage: Storage, items, config: EvalConfig, settings: Settings
) -> tuple[list[str], str]:
    """What AlpacaEval compares with (FI_ALPACA_EVAL_BASELINE): the reference outputs, or another
    recipe's model's answers; and its name for the note."""
    if settings.alpaca_eval_baseline == "reference":
        return [item.reference for item in items], "the reference outputs (gpt4_1106_preview)"
    baseline, _ = _answers(context, storage, settings.alpaca_eval_baseline, items, config, settings)
    return baseline, f"recipe {settings.alpaca_eval_baseline}"


def _answers(context, storage: Storage, recipe: str, items, config: EvalConfig, settings: Settings):
    """A recipe's model's greedy answers to `items`, through the call cache."""
    folder = export_folder(storage.root, recipe)
    candidate = role_resource(
        Candidate, settings, model=str(folder), max_new_tokens=config.max_new_tokens
    )
    calls = candidate.call(
        [{"question": item.question} for item in items],
        progress=log_progress(context, f"{recipe} answered"),
        caller=(context.run_id, context.partition_key),
        # A retrained checkpoint in the same folder is asked afresh.
        params={"weights": weights_hash(folder)},
    )
    return [bench.clean_response(output) for output in calls.texts()], calls


@dg.asset(
    # The fidelity section reads the synthesis tables of every training shard.
    deps=keys(EVAL_SCORES, DOCUMENTS, MATCHED_PAIRS, INSTANTIATED_PAIRS, JUDGED_PAIRS),
    group_name="evaluation",
    kinds={"markdown"},
    code_version="2",
    description="Stage F's report: recipe x benchmark like the paper's Table 1 and a bar chart, "
    "written to FI_HOME/reports/eval_report.md and .png and shown here.",
)
def eval_report(storage: Storage, settings: dg.ResourceParam[Settings]) -> dg.MaterializeResult:
    frame = storage.read_all(EVAL_SCORES)
    if frame is None:
        raise FileNotFoundError("no eval_scores yet: materialize eval_scores first")
    rows = frame.to_dicts()
    reports = storage.root / "reports"
    fidelity = fidelity_report(storage, settings)
    markdown = render_markdown(rows) + "\n\n## Fidelity to the method\n\n" + fidelity
    png = plot(rows, reports / "eval_report.png")
    (reports / "eval_report.md").write_text(markdown + "\n![plot](eval_report.png)\n")
    return dg.MaterializeResult(
        metadata={
            # The table in place; the legend and every metric behind the link.
            "table": dg.MetadataValue.md(headline_table_by_benchmark(rows)),
            "report": dg.MetadataValue.md(markdown),
            "fidelity": dg.MetadataValue.md(fidelity),
            "plot": png_markdown(png.read_bytes(), "eval report"),
            "markdown_path": dg.MetadataValue.path(str(reports / "eval_report.md")),
            "png_path": dg.MetadataValue.path(str(png)),
        },
        data_version=dg.DataVersion(frame_version(frame.sort(["recipe", "benchmark", "metric"]))),
    )


def fidelity_report(storage: Storage, settings: Settings) -> str:
    """The fidelity table as Markdown, under a line naming the shards it covers: the training
    shards. The held-out shard is left out (no recipe trains on it), so its totals are smaller
    than `fi sql`'s over every shard."""
    counts = packed_counts(storage, settings.heldout_doc_shard)
    shards = sorted({count.shard for count in counts})
    covered = ", ".join(shards) if shards else "none packed yet"
    caption = (
        f"Training shards: {covered}; the held-out shard {settings.heldout_doc_shard} is left "
        "out (no recipe trains on it)."
    )
    figures = fidelity_figures(
        storage, counts, settings.training_tokens, settings.max_training_tokens
    )
    return caption + "\n\n" + render_fidelity(figures)


def fidelity_figures(
    storage: Storage,
    counts: list[ShardTokens],
    training_tokens: int | None = None,
    max_training_tokens: int | None = None,
) -> list[Figure]:
    """The fidelity figures over the training shards that `counts` (`packed_counts`) covers:
    synthesis figures, tokens per recipe packed, the training budget (`training_tokens`,
    FI_TRAINING_TOKENS, or the smallest recipe's total) and what each recipe's model trained
    on."""
    budget = plan_budget(counts, training_tokens or None, cap=max_training_tokens)
    packed_recipes = {count.recipe for count in counts}
    packed = {r: n for r, n in budget.packed_tokens.items() if r in packed_recipes}
    samples = {r: n for r, n in budget.samples.items() if r in packed_recipes}
    shards = sorted({count.shard for count in counts})
    n_documents = matched = nulls = judged = 0
    kept_templates, kept_ratios = [], []
    for shard in shards:
        n_documents += storage.read_table(DOCUMENTS, shard).height
        if not storage.table_path(JUDGED_PAIRS, shard).exists():
            continue
        matched += storage.read_table(MATCHED_PAIRS, shard).height
        reasons = storage.read_rejects(INSTANTIATED_PAIRS.name, shard)["reason"]
        nulls += int((reasons == RejectReason.TEMPLATE_DOES_NOT_FIT).sum())
        verdicts = storage.read_table(JUDGED_PAIRS, shard)
        judged += verdicts.height
        kept = verdicts.filter(pl.col("kept")).select("pair_id")
        kept = kept.join(storage.read_table(INSTANTIATED_PAIRS, shard), on="pair_id")
        kept_templates += kept["template_id"].to_list()
        kept_ratios += kept["excerpt_ratio"].to_list()
    trained = {recipe: _trained_tokens(storage, recipe) for recipe in RECIPES}
    return [
        *synthesis_figures(n_documents, matched, nulls, judged, kept_templates, kept_ratios),
        *packing_figures(packed, samples, n_documents),
        *training_figures(budget.tokens if counts else None, packed, trained),
    ]


def _trained_tokens(storage: Storage, recipe: str) -> int | None:
    """Tokens the recipe's model saw, from the last line of its training metrics."""
    history = storage.root / "checkpoints" / recipe / "metrics.jsonl"
    if not history.exists():
        return None
    lines = history.read_text().splitlines()
    return json.loads(lines[-1]).get("tokens") if lines else None
