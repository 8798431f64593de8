"""What would silently ruin an experiment, as plain functions on a partition's distribution: each
returns one line per problem (empty when all is well). The assets run them as blocking asset
checks, so a failure stops what would be built on top. None re-tests a filter the stage has just
applied: each can fail on data the stage wrote."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from fi_method.corpus.decontamination import NGramIndex

# The paper's figures a run is measured against (METHOD.md, stages C-E).
PAPER_PAIRS_PER_DOCUMENT = 3.0
PAPER_JUDGE_PASS_RATE = 0.58
PAPER_NULL_RATE = 0.05
PAPER_MAX_TEMPLATE_SHARE = 0.0009

# A share measured on fewer items than this says nothing yet: the distribution checks pass it.
MIN_ITEMS_FOR_A_SHARE = 20
# The paper's 0.09 % is over 4.3M templates; a run with a few hundred templates cannot meet it.
# What goes wrong in practice is one template (a degenerate "<fi>a topic</fi>", or one that
# matches every passage) crowding out the rest, so a template may hold at most this many times a
# uniform share of the shard's distinct templates (and at least the paper's 0.09 %).
TEMPLATE_SHARE_SLACK = 10
# A judge that keeps almost everything is not judging (the pairs it scored 5 were nonsense). The
# paper keeps ~58 %; the honest rules judge keeps ~24 % of the rules baseline's pairs on the
# sample, and next to none on a shard of an article or two whose templates fit badly, which is
# data, not a fault: there is no floor. A judge that keeps nothing leaves its recipe without
# tokens, and recipes_fill_training_budget fails that.
MAX_JUDGE_PASS_RATE = 0.95
# A pass rate near that ceiling is told from it only over this many pairs: the rules instantiator
# fills a template only where the passage supports it, so a judge that keeps 80 % of such pairs
# keeps 21 of 22 one time in twenty, while over 50 pairs 48 or more one time in eight hundred.
MIN_PAIRS_FOR_PASS_RATE = 50
# The released instantiator answers `null` for ~5 % of its inputs; half or more means the
# templates do not fit the documents or the model's prompt is wrong.
MAX_NULL_RATE = 0.5
# The similarity threshold is calibrated so half of all vectors keep a candidate: a document of
# several vectors almost always gets one. More documents without any point at a wrong threshold
# or an index of another embedder. Documents are few per shard, so a share of 5 already tells.
MAX_UNMATCHED_DOCUMENT_SHARE = 0.5
MIN_DOCUMENTS_FOR_A_SHARE = 5


def template_share_limit(n_templates: int) -> float:
    """The largest share of a shard's pairs one template may hold (see TEMPLATE_SHARE_SLACK)."""
    return max(PAPER_MAX_TEMPLATE_SHARE, TEMPLATE_SHARE_SLACK / max(n_templates, 1))


def dominant_templates(template_ids: list[str]) -> list[str]:
    """Templates holding more than `template_share_limit` of the pairs."""
    if len(template_ids) < MIN_ITEMS_FOR_A_SHARE:
        return []
    counts = Counter(template_ids)
    limit = template_share_limit(len(counts))
    return [
        f"template {template}: {n} of {len(template_ids)} pairs ({n / len(template_ids):.1%}), "
        f"above {limit:.1%} (10x a uniform share of {len(counts)} templates)"
        for template, n in counts.most_common()
        if n / len(template_ids) > limit
    ]


def share_outside(
    what: str,
    count: int,
    total: int,
    low: float,
    high: float,
    reference: str,
    min_items: int = MIN_ITEMS_FOR_A_SHARE,
) -> list[str]:
    """One line when count / total falls outside [low, high], over at least `min_items`."""
    if total < min_items:
        return []
    share = count / total
    if low <= share <= high:
        return []
    return [f"{what}: {count} of {total} ({share:.1%}), outside {low:.0%}-{high:.0%}; {reference}"]


def leaked_eval_items(rows: Iterable[dict], index: NGramIndex) -> tuple[list[str], list[str]]:
    """Training samples (`sample_id`, `text`) that overlap an evaluation item by the Tulu 3
    n-gram test that decontaminates the queries, as (verbatim, partial): a sample holding a whole
    item is a leak; one covering only part of it (a Wikipedia definition a trivia question was
    written from) is worth a warning, not a stop."""
    verbatim, partial = [], []
    for row in rows:
        found = index.match(row["text"])
        if found is not None:
            line = (
                f"{row['sample_id']}: {found.benchmark} {found.item_id} "
                f"({found.coverage:.0%} of its words)"
            )
            (verbatim if found.coverage >= 1.0 else partial).append(line)
    return verbatim, partial
