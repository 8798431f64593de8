"""What would silently ruin an experiment, as plain functions: each takes a stage's rows and
returns one line per offending row (empty when all is well). The assets run them as blocking
asset checks, so a failure stops what would be built on top."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from fi_method.decontamination import NGramIndex
from fi_method.templates import TemplateError, count_tags, slot_descriptions

JUDGE_SCALE = range(1, 6)  # the rubric's 1..5


def invalid_templates(rows: Iterable[dict]) -> list[str]:
    """Templates whose `<fi>` tags do not parse, that have none, or whose `n_tags` disagrees."""
    failures = []
    for row in rows:
        try:
            slot_descriptions(row["template"])
            tags = count_tags(row["template"])
        except TemplateError as error:
            failures.append(f"{row['template_id']}: {error}")
            continue
        if tags < 1 or tags != row["n_tags"]:
            failures.append(f"{row['template_id']}: {tags} tags, n_tags says {row['n_tags']}")
    return failures


def below_minimum(rows: Iterable[dict], id_column: str, column: str, minimum: float) -> list[str]:
    """Rows whose `column` is below `minimum` (or missing)."""
    return [
        f"{row[id_column]}: {column} {row[column]} < {minimum}"
        for row in rows
        if row[column] is None or row[column] < minimum
    ]


def duplicate_ids(ids: Iterable[str]) -> list[str]:
    """Ids that occur more than once, with their count."""
    return [f"{key}: {n} times" for key, n in Counter(ids).items() if n > 1]


def judge_score_errors(rows: Iterable[dict], min_score: int) -> list[str]:
    """Scores outside the rubric's 1..5, or a `kept` flag that disagrees with `min_score`."""
    failures = []
    for row in rows:
        if row["score"] not in JUDGE_SCALE:
            failures.append(f"{row['pair_id']}: score {row['score']} outside 1..5")
        elif row["kept"] != (row["score"] >= min_score):
            failures.append(f"{row['pair_id']}: kept={row['kept']} with score {row['score']}")
    return failures


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
