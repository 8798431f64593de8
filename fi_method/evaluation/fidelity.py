"""The fidelity report: the figures by which a run can be held against the paper's method, each
beside the paper's own value where the paper gives one (METHOD.md, stages C-E). The stages put it
in their metadata and the eval report prints it, so a researcher reads at a glance whether the
synthetic data is shaped like the paper's before reading any score."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from fi_method.synthesis.quality import (
    PAPER_JUDGE_PASS_RATE,
    PAPER_MAX_TEMPLATE_SHARE,
    PAPER_NULL_RATE,
    PAPER_PAIRS_PER_DOCUMENT,
)

# The paper requires at least this share of an answer copied from its document (stage C).
PAPER_MIN_EXCERPT_RATIO = 0.80


@dataclass(frozen=True)
class Figure:
    """One line of the report: what, the run's value, the paper's (None: it gives none)."""

    name: str
    value: float | None
    paper: float | str | None = None
    percent: bool = False

    def cells(self) -> tuple[str, str]:
        return _format(self.value, self.percent), _format(self.paper, self.percent)


def _format(value: float | str | None, percent: bool) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if percent:
        return f"{value:.2%}" if 0 < value < 0.01 else f"{value:.1%}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def synthesis_figures(
    n_documents: int,
    n_matched: int,
    n_null: int,
    n_judged: int,
    kept_template_ids: list[str],
    kept_excerpt_ratios: list[float],
) -> list[Figure]:
    """The synthesis figures of a shard: kept pairs per document, the judge's pass rate, the
    instantiator's null rate, the largest template share and the excerpt ratio of kept pairs."""
    kept = len(kept_template_ids)
    largest = max(Counter(kept_template_ids).values()) / kept if kept else None
    ratios = np.asarray(kept_excerpt_ratios, dtype=float)
    quantiles = np.quantile(ratios, [0.1, 0.5, 0.9]) if len(ratios) else [None] * 3
    return [
        Figure("kept pairs per document (before packing)", _share(kept, n_documents)),
        Figure("judge pass rate", _share(kept, n_judged), PAPER_JUDGE_PASS_RATE, True),
        Figure("instantiator null rate", _share(n_null, n_matched), PAPER_NULL_RATE, True),
        Figure("largest template share of kept pairs", largest, PAPER_MAX_TEMPLATE_SHARE, True),
        Figure("excerpt ratio of kept pairs, p10", quantiles[0], f">= {PAPER_MIN_EXCERPT_RATIO}"),
        Figure("excerpt ratio of kept pairs, median", quantiles[1]),
        Figure("excerpt ratio of kept pairs, p90", quantiles[2]),
    ]


def packing_figures(
    tokens_by_recipe: dict[str, int], samples_by_recipe: dict[str, int], n_documents: int
) -> list[Figure]:
    """Tokens per recipe with their ratio to `standard`'s (the paper: exactly 1), and packed
    samples per document (the paper: ~3 pairs)."""
    standard = tokens_by_recipe.get("standard")
    figures = []
    for recipe, tokens in tokens_by_recipe.items():
        figures.append(Figure(f"{recipe}: packed tokens", tokens))
        if standard and recipe != "standard":
            figures.append(
                Figure(f"{recipe}: tokens / standard's", tokens / standard, 1.0, percent=True)
            )
            figures.append(
                Figure(
                    f"{recipe}: samples per document",
                    _share(samples_by_recipe.get(recipe, 0), n_documents),
                    PAPER_PAIRS_PER_DOCUMENT if recipe == "fineinstructions" else None,
                )
            )
    return figures


def training_figures(
    budget_tokens: int | None, packed_by_recipe: dict[str, int], trained_by_recipe: dict
) -> list[Figure]:
    """The training budget (packed tokens every recipe trains on; the paper: the same token count
    for every recipe) and, per recipe, the tokens its model trained on (whole steps within the
    budget, BOS/EOS included) and the share of its packed tokens that is."""
    figures = [Figure("training budget, tokens per recipe", budget_tokens)]
    for recipe, trained in trained_by_recipe.items():
        figures.append(Figure(f"{recipe}: tokens trained on", trained))
        packed = packed_by_recipe.get(recipe)
        figures.append(
            Figure(
                f"{recipe}: trained / packed tokens",
                trained / packed if trained is not None and packed else None,
                percent=True,
            )
        )
    return figures


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def render_markdown(figures: list[Figure]) -> str:
    """The figures as a Markdown table: figure, this run, the paper."""
    lines = ["| figure | this run | paper |", "|---|---|---|"]
    for figure in figures:
        value, paper = figure.cells()
        lines.append(f"| {figure.name} | {value} | {paper} |")
    return "\n".join(lines)
