"""The evaluation report: one table recipe x benchmark like the paper's Table 1, and a bar chart,
from the rows of eval_scores (recipe, benchmark, metric, value, judge, n_items, note)."""

from __future__ import annotations

from pathlib import Path

from fi_method.corpus.packing import RECIPES
from fi_method.evaluation.benchmarks import (
    ALPACA_EVAL,
    BENCHMARKS,
    HELDOUT_NLL,
    MECHANICAL,
    MIXEVAL,
    MIXEVAL_HARD,
    MT_BENCH_101,
    NEEDS_LLM_JUDGE,
)

# The one number per benchmark the table shows, and what it means.
HEADLINE = {
    HELDOUT_NLL: ("answer_nll", "held-out answer NLL, nats/token (lower is better)"),
    MIXEVAL: ("overall", "MixEval, 0-100"),
    MIXEVAL_HARD: ("overall", "MixEval-Hard, 0-100"),
    MT_BENCH_101: ("score", "MT-Bench-101 single-turn, 1-10"),
    ALPACA_EVAL: ("lc_win_rate", "AlpacaEval length-controlled win rate, %"),
}


def headline_cells(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(recipe, benchmark) -> the row of its headline metric."""
    return {
        (row["recipe"], row["benchmark"]): row
        for row in rows
        if HEADLINE.get(row["benchmark"], (None,))[0] == row["metric"]
    }


def _cell(row: dict | None) -> str:
    if row is None:
        return "not run"
    if row["value"] is None:
        return "n/a ‡" if row["judge"] == NEEDS_LLM_JUDGE else "n/a"
    mark = " †" if row["judge"] == MECHANICAL else ""
    return f"{row['value']:.2f}{mark}"


def _headline_grid(rows: list[dict], by_benchmark: bool) -> str:
    """The headline cells as a Markdown table: a row per recipe and a column per benchmark, or
    transposed."""
    cells = headline_cells(rows)
    recipes = [r for r in RECIPES if any(row["recipe"] == r for row in rows)]
    lines_of, columns = (BENCHMARKS, recipes) if by_benchmark else (recipes, BENCHMARKS)
    lines = [
        f"| {'benchmark' if by_benchmark else 'recipe'} | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for line in lines_of:
        keys = [(column, line) if by_benchmark else (line, column) for column in columns]
        lines.append(f"| {line} | " + " | ".join(_cell(cells.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def headline_table(rows: list[dict]) -> str:
    """The recipe x benchmark table alone, as Markdown (the paper's Table 1)."""
    return _headline_grid(rows, by_benchmark=False)


def headline_table_by_benchmark(rows: list[dict]) -> str:
    """The same cells as `headline_table`, one row per benchmark and a column per recipe: four
    columns, which fit the width the UI gives a metadata value (a column per benchmark does
    not)."""
    return _headline_grid(rows, by_benchmark=True)


def render_markdown(rows: list[dict], title: str = "Evaluation report") -> str:
    """The report as Markdown: the recipe x benchmark table, what each column measures and who
    scored it, and every metric row underneath."""
    lines = [
        f"# {title}",
        "",
        headline_table(rows),
        "",
        *(f"- **{b}**: {HEADLINE[b][1]}" for b in BENCHMARKS),
        (
            "- † scored mechanically (multiple-choice letters, normalised match against the "
            "gold answers); the paper's MixEval scores use an LLM judge on free-form answers."
        ),
        f"- ‡ {NEEDS_LLM_JUDGE}: set FI_EVAL_JUDGE_ENGINE to transformers or vllm.",
        "",
        "## All metrics",
        "",
        "| recipe | benchmark | metric | value | judge | items | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["recipe"], r["benchmark"], r["metric"])):
        value = "" if row["value"] is None else f"{row['value']:.4g}"
        lines.append(
            f"| {row['recipe']} | {row['benchmark']} | {row['metric']} | {value} | "
            f"{row['judge']} | {row['n_items']} | {row.get('note') or ''} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    """A PNG with one panel per benchmark and one bar per recipe (its headline metric); a
    benchmark without a value says why in its panel."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    cells = headline_cells(rows)
    recipes = [r for r in RECIPES if any(row["recipe"] == r for row in rows)]
    figure, axes = plt.subplots(1, len(BENCHMARKS), figsize=(4 * len(BENCHMARKS), 3.6))
    for axis, benchmark in zip(axes, BENCHMARKS, strict=True):
        values = [cells.get((recipe, benchmark), {}).get("value") for recipe in recipes]
        mechanical = any(cells.get((r, benchmark), {}).get("judge") == MECHANICAL for r in recipes)
        axis.set_title(HEADLINE[benchmark][1] + (" (mechanical)" if mechanical else ""), fontsize=8)
        if all(value is None for value in values):
            judge = next(
                (cells[(r, benchmark)]["judge"] for r in recipes if (r, benchmark) in cells),
                "not run",
            )
            axis.text(0.5, 0.5, judge, ha="center", va="center", transform=axis.transAxes)
            axis.set_xticks([])
            axis.set_yticks([])
            continue
        heights = [0.0 if value is None else value for value in values]
        axis.set_ylim(0, max(max(heights) * 1.2, 1.0))
        bars = axis.bar(recipes, heights, color=["#888888", "#1f77b4", "#ff7f0e"][: len(recipes)])
        axis.bar_label(
            bars, labels=["n/a" if v is None else f"{v:.2f}" for v in values], fontsize=7
        )
        axis.tick_params(axis="x", labelsize=7, rotation=15)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
