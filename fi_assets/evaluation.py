"""eval_scores[recipe x benchmark] and eval_report: stage F's evaluation. Each recipe's trained
model answers every benchmark greedily in its training format; answers are scored mechanically
where they can be checked, by the configured LLM judge otherwise, and `heldout_nll` measures the
answer-token likelihood of pairs from a document shard no recipe trained on."""

import json
import math

import dagster as dg
import polars as pl

from fi_assets.packing import training_files
from fi_assets.partitions import BENCHMARK, RECIPE, by_recipe, recipe_benchmarks
from fi_assets.placement import on_gpu
from fi_assets.reporting import (
    call_metadata,
    column_schema,
    frame_version,
    log_progress,
    markdown_preview,
    png_markdown,
)
from fi_method.corpus.packing import RECIPES, load_training_tokenizer, tokenize_sample
from fi_method.evaluation import benchmarks as bench
from fi_method.evaluation.eval_report import headline_table, plot, render_markdown
from fi_method.evaluation.fidelity import Figure, packing_figures, synthesis_figures
from fi_method.evaluation.fidelity import render_markdown as render_fidelity
from fi_method.synthesis.pairs import NULL_OUTPUT
from fi_resources.checkpoints import answer_nll, export_folder, weights_hash
from fi_resources.embedder import torch_device
from fi_resources.roles import BenchmarkJudge, Candidate, role_resource
from fi_resources.settings import Settings
from fi_resources.storage import Storage

SCORES_SCHEMA = {
    "recipe": pl.String,
    "benchmark": pl.String,
    "metric": pl.String,
    "value": pl.Float64,
    "judge": pl.String,
    "n_items": pl.Int64,
    "note": pl.String,
}
GENERATIONS_SCHEMA = {
    "recipe": pl.String,
    "benchmark": pl.String,
    "item_id": pl.String,
    "kind": pl.String,
    "task": pl.String,
    "question": pl.String,
    "response": pl.String,
    "score": pl.Float64,
    "judge": pl.String,
    "judge_output": pl.String,
}


class EvalConfig(dg.Config):
    """How much of each benchmark to run. The defaults are a CPU demo's; `items_per_kind: 0`
    runs every item, as the paper does."""

    items_per_kind: int = 8
    max_new_tokens: int = 64
    seed: int = 0


def _score_row(recipe, benchmark, metric, value, judge, n_items, note="") -> dict:
    return {
        "recipe": recipe,
        "benchmark": benchmark,
        "metric": metric,
        "value": value,
        "judge": judge,
        "n_items": n_items,
        "note": note,
    }


def _mean(values: list[float]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def heldout_rows(storage: Storage, recipe: str, settings: Settings) -> list[dict]:
    """heldout_nll: the answer-token NLL, per token, of the grounded pairs of the held-out
    document shard under the recipe's model. Every grounded pair counts, not only those the judge
    kept: the measure needs no judge, and more pairs make it steadier. A row without a value says
    why when there are none."""
    shard = settings.heldout_doc_shard
    if not storage.table_path("instantiated_pairs", shard).exists():
        note = f"no pairs of the held-out doc shard {shard!r}: ingest one (--shard {shard})"
        return [_score_row(recipe, bench.HELDOUT_NLL, "answer_nll", None, bench.OBJECTIVE, 0, note)]
    pairs = storage.read_table("instantiated_pairs", shard)
    tokenizer = load_training_tokenizer(settings.training_tokenizer)
    samples = [
        tokenize_sample(tokenizer, row["instruction"], row["answer"])
        for row in pairs.sort("pair_id").iter_rows(named=True)
    ]
    device = torch_device(settings.device)
    total, tokens = answer_nll(export_folder(storage.root, recipe), samples, device)
    nll = total / tokens if tokens else None
    note = f"{len(samples)} grounded pairs, {tokens} answer tokens of doc shard {shard}"
    return [
        _score_row(
            recipe, bench.HELDOUT_NLL, "answer_nll", nll, bench.OBJECTIVE, len(samples), note
        ),
        _score_row(
            recipe,
            bench.HELDOUT_NLL,
            "answer_perplexity",
            None if nll is None else math.exp(nll),
            bench.OBJECTIVE,
            len(samples),
            note,
        ),
    ]


class _Scorer:
    """Scores one recipe's answers to one benchmark: mechanically where possible, else with the
    judge. Each method returns the aggregate rows (metric, value, judge, n_items, note) and the
    per-item (item, score, judge, judge output); the judge's call counts are kept."""

    def __init__(self, context, judge: BenchmarkJudge, seed: int):
        self.context, self.judge, self.seed = context, judge, seed
        self.judge_calls = None

    def _ask(self, conversations: list[list[dict]]) -> list[str]:
        calls = self.judge.call(
            [{"messages": messages} for messages in conversations],
            progress=log_progress(self.context, "judged"),
            caller=(self.context.run_id, self.context.partition_key),
        )
        self.judge_calls = calls
        return calls.outputs

    def mixeval(self, items, responses):
        scored = []  # (item, score, judge, judge_output)
        free_form = [(i, r) for i, r in zip(items, responses) if i.kind == bench.FREE_FORM]
        if self.judge.is_llm and free_form:
            outputs = self._ask([bench.mixeval_judge_messages(i, r) for i, r in free_form])
            free_scores = {
                i.item_id: (bench.parse_bracketed_score(o, 0.0, 1.0), self.judge.label, o)
                for (i, _), o in zip(free_form, outputs)
            }
        else:
            free_scores = {
                i.item_id: (bench.score_free_form(r, i.targets), bench.MECHANICAL, "")
                for i, r in free_form
            }
        for item, response in zip(items, responses):
            if item.kind == bench.MULTIPLE_CHOICE:
                scored.append(
                    (item, bench.score_multiple_choice(response, item), bench.MECHANICAL, "")
                )
            else:
                scored.append((item, *free_scores[item.item_id]))
        free_judge = self.judge.label if self.judge.is_llm else bench.MECHANICAL
        rows = []
        for metric, kind, judge in (
            ("multiple_choice", bench.MULTIPLE_CHOICE, bench.MECHANICAL),
            ("free_form", bench.FREE_FORM, free_judge),
            (
                "overall",
                None,
                free_judge if free_judge == bench.MECHANICAL else f"{free_judge} + mechanical",
            ),
        ):
            of_kind = [s for s in scored if kind is None or s[0].kind == kind]
            values = [s[1] for s in of_kind if s[1] is not None]
            unparsed = len(of_kind) - len(values)
            note = f"{unparsed} judge outputs without a score, left out" if unparsed else ""
            rows.append((metric, _mean(values), judge, len(values), note))
        return rows, scored

    def mt_bench_101(self, items, responses):
        if not self.judge.is_llm:
            return [
                ("score", None, bench.NEEDS_LLM_JUDGE, 0, "MT-Bench-101 is judged 1-10 by an LLM")
            ], [(i, None, bench.NEEDS_LLM_JUDGE, "") for i in items]
        outputs = self._ask(
            [bench.mt_bench_101_judge_messages(i, r) for i, r in zip(items, responses)]
        )
        scored = [
            (i, bench.parse_bracketed_score(o, 1.0, 10.0), self.judge.label, o)
            for i, o in zip(items, outputs)
        ]
        values = [s[1] for s in scored if s[1] is not None]
        note = f"{len(scored) - len(values)} judge outputs without a rating, left out"
        mean = sum(values) / len(values) if values else None
        return [("score", mean, self.judge.label, len(values), note)], scored

    def alpaca_eval(self, items, responses, baseline: list[str], baseline_name: str):
        if not self.judge.is_llm:
            return [
                (m, None, bench.NEEDS_LLM_JUDGE, 0, f"head-to-head against {baseline_name}")
                for m in ("lc_win_rate", "win_rate")
            ], [(i, None, bench.NEEDS_LLM_JUDGE, "") for i in items]
        first = [bench.candidate_goes_first(i.item_id, self.seed) for i in items]
        outputs = self._ask(
            [
                bench.alpaca_eval_judge_messages(i.question, *((r, b) if f else (b, r)))
                for i, r, b, f in zip(items, responses, baseline, first)
            ]
        )
        scored, kept = [], []
        for item, response, opponent, goes_first, output in zip(
            items, responses, baseline, first, outputs
        ):
            choice = bench.parse_preference(output)
            win = None if choice is None else float((choice == "m") == goes_first)
            scored.append((item, win, self.judge.label, output))
            if win is not None:
                kept.append((win, len(response), len(opponent)))
        if not kept:
            return [
                (m, None, self.judge.label, 0, "no judge output named m or M")
                for m in ("lc_win_rate", "win_rate")
            ], scored
        raw, controlled = bench.win_rates(*map(list, zip(*kept)))
        note = f"against {baseline_name}; {len(items) - len(kept)} unparsed judge outputs left out"
        return [
            ("lc_win_rate", controlled, self.judge.label, len(kept), note),
            ("win_rate", raw, self.judge.label, len(kept), note),
        ], scored


@dg.asset(
    partitions_def=recipe_benchmarks,
    ins={
        "trained_checkpoint": dg.AssetIn(
            partition_mapping=by_recipe,
            dagster_type=dg.Nothing,
        ),
        "instantiated_pairs": dg.AssetIn(
            partition_mapping=dg.AllPartitionMapping(), dagster_type=dg.Nothing
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
    keys = context.partition_key.keys_by_dimension
    recipe, benchmark = keys[RECIPE], keys[BENCHMARK]
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
        scorer = _Scorer(context, benchmark_judge, config.seed)
        if benchmark == bench.MT_BENCH_101:
            aggregates, scored = scorer.mt_bench_101(items, responses)
        elif benchmark == bench.ALPACA_EVAL:
            baseline_name = settings.alpaca_eval_baseline
            if baseline_name == "reference":
                baseline = [item.reference for item in items]
                baseline_name = "the reference outputs (gpt4_1106_preview)"
            else:
                baseline, _ = _answers(context, storage, baseline_name, items, config, settings)
                baseline_name = f"recipe {baseline_name}"
            aggregates, scored = scorer.alpaca_eval(items, responses, baseline, baseline_name)
        else:
            aggregates, scored = scorer.mixeval(items, responses)
        if scorer.judge_calls is not None:
            metadata |= {f"judge_{k}": v for k, v in call_metadata(scorer.judge_calls).items()}
        rows = [_score_row(recipe, benchmark, *aggregate) for aggregate in aggregates]
        generations = pl.DataFrame(
            [
                {
                    "recipe": recipe,
                    "benchmark": benchmark,
                    "item_id": item.item_id,
                    "kind": item.kind,
                    "task": item.task,
                    "question": item.question,
                    "response": response,
                    "score": score,
                    "judge": judge,
                    "judge_output": output,
                }
                for (item, score, judge, output), response in zip(scored, responses)
            ],
            schema=GENERATIONS_SCHEMA,
        )
        storage.write_table("eval_generations", partition, generations)
        metadata["answers_preview"] = dg.MetadataValue.md(
            markdown_preview(generations, ["item_id", "question", "response", "score"])
        )
    scores = pl.DataFrame(rows, schema=SCORES_SCHEMA)
    path = storage.write_table("eval_scores", partition, scores)
    return dg.MaterializeResult(
        metadata={
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
    return [bench.clean_response(output) for output in calls.outputs], calls


@dg.asset(
    # The fidelity section reads the synthesis tables of every training shard.
    deps=["eval_scores", "documents", "matched_pairs", "instantiated_pairs", "judged_pairs"],
    group_name="evaluation",
    kinds={"markdown"},
    code_version="1",
    description="Stage F's report: recipe x benchmark like the paper's Table 1 and a bar chart, "
    "written to FI_HOME/reports/eval_report.md and .png and shown here.",
)
def eval_report(storage: Storage, settings: dg.ResourceParam[Settings]) -> dg.MaterializeResult:
    frame = storage.read_all("eval_scores")
    if frame is None:
        raise FileNotFoundError("no eval_scores yet: materialize eval_scores first")
    rows = frame.to_dicts()
    reports = storage.root / "reports"
    fidelity = render_fidelity(fidelity_figures(storage, settings.heldout_doc_shard))
    markdown = render_markdown(rows) + "\n\n## Fidelity to the method\n\n" + fidelity
    png = plot(rows, reports / "eval_report.png")
    (reports / "eval_report.md").write_text(markdown + "\n![plot](eval_report.png)\n")
    return dg.MaterializeResult(
        metadata={
            # The table in place; the legend and every metric behind the link.
            "table": dg.MetadataValue.md(headline_table(rows)),
            "report": dg.MetadataValue.md(markdown),
            "fidelity": dg.MetadataValue.md(fidelity),
            "plot": png_markdown(png.read_bytes(), "eval report"),
            "markdown_path": dg.MetadataValue.path(str(reports / "eval_report.md")),
            "png_path": dg.MetadataValue.path(str(png)),
        },
        data_version=dg.DataVersion(frame_version(frame.sort(["recipe", "benchmark", "metric"]))),
    )


def fidelity_figures(storage: Storage, heldout_shard: str) -> list[Figure]:
    """The fidelity report over the training shards (all but `heldout_shard`): synthesis
    figures, tokens per recipe and what each recipe's model trained on."""
    trained_on = {recipe: training_files(storage, recipe, heldout_shard) for recipe in RECIPES}
    packed = {recipe: list(files.values()) for recipe, files in trained_on.items()}
    shards = sorted(trained_on[RECIPES[0]])
    tokens, samples = {}, {}
    for recipe, files in packed.items():
        if files:
            counts = pl.scan_parquet(files).select(pl.len(), pl.col("n_tokens").sum()).collect()
            samples[recipe], tokens[recipe] = (int(value) for value in counts.row(0))
    n_documents = matched = nulls = judged = 0
    kept_templates, kept_ratios = [], []
    for shard in shards:
        n_documents += storage.read_table("documents", shard).height
        if not storage.table_path("judged_pairs", shard).exists():
            continue
        matched += storage.read_table("matched_pairs", shard).height
        reasons = storage.read_rejects("instantiated_pairs", shard)["reason"]
        nulls += int((reasons == NULL_OUTPUT).sum())
        verdicts = storage.read_table("judged_pairs", shard)
        judged += verdicts.height
        kept = verdicts.filter(pl.col("kept")).select("pair_id")
        kept = kept.join(storage.read_table("instantiated_pairs", shard), on="pair_id")
        kept_templates += kept["template_id"].to_list()
        kept_ratios += kept["excerpt_ratio"].to_list()
    trained = [
        Figure(f"{recipe}: tokens trained on", _trained_tokens(storage, recipe))
        for recipe in RECIPES
    ]
    return [
        *synthesis_figures(n_documents, matched, nulls, judged, kept_templates, kept_ratios),
        *packing_figures(tokens, samples, n_documents),
        *trained,
    ]


def _trained_tokens(storage: Storage, recipe: str) -> int | None:
    """Tokens the recipe's model saw, from the last line of its training metrics."""
    history = storage.root / "checkpoints" / recipe / "metrics.jsonl"
    if not history.exists():
        return None
    lines = history.read_text().splitlines()
    return json.loads(lines[-1]).get("tokens") if lines else None
