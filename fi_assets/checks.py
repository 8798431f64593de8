"""Blocking asset checks that run inside the asset's own step, on the partition it just wrote: a
failure marks the run failed, so nothing downstream is built on bad rows (`fi materialize` skips
the runs that would read them). The rows themselves stay written, for audit. The logic is in
fi_method.quality; this module names the checks and reports them."""

import dagster as dg

EXAMPLES_SHOWN = 10  # offending rows a failed check lists
# Tag of a materialization whose blocking checks failed: `fi materialize` re-runs that partition
# (and skips what reads it while it still fails) instead of building on it.
FAILED_CHECKS_TAG = "fi/failed_checks"

TEMPLATES_VALID = dg.AssetCheckSpec(
    "templates_are_valid",
    asset="instruction_templates",
    blocking=True,
    description="Every template's <fi> tags parse, it has at least one, and n_tags agrees.",
)
SIMILARITY_ABOVE_THRESHOLD = dg.AssetCheckSpec(
    "similarity_above_threshold",
    asset="matched_pairs",
    blocking=True,
    description="Every matched template is at least as similar to its chunk as the threshold.",
)
PAIR_IDS_UNIQUE = dg.AssetCheckSpec(
    "pair_ids_unique",
    asset="instantiated_pairs",
    blocking=True,
    description="No pair_id occurs twice (duplicates would be trained on twice).",
)
EXCERPT_RATIO_ABOVE_MINIMUM = dg.AssetCheckSpec(
    "excerpt_ratio_above_minimum",
    asset="instantiated_pairs",
    blocking=True,
    description="Every grounded pair copies at least FI_MIN_EXCERPT_RATIO of its answer from "
    "its document.",
)
JUDGE_SCORES_VALID = dg.AssetCheckSpec(
    "judge_scores_valid",
    asset="judged_pairs",
    blocking=True,
    description="Every score is on the rubric's 1..5 and `kept` is exactly score >= "
    "FI_MIN_JUDGE_SCORE.",
)
NO_EVAL_LEAK = dg.AssetCheckSpec(
    "no_eval_items_in_training_data",
    asset="packed_corpus",
    blocking=True,
    description="No packed sample contains a whole item of MixEval, MixEval-Hard, MT-Bench, "
    "MT-Bench-101 or AlpacaEval (blocks); one whose 8-grams cover half an item or more is a "
    "warning (the Tulu 3 test).",
)


def blocks(check: dg.AssetCheckResult) -> bool:
    """A failed check of ERROR severity: what a blocking check stops downstream work for."""
    return not check.passed and check.severity == dg.AssetCheckSeverity.ERROR


def failed_checks_tags(checks: list[dg.AssetCheckResult]) -> dict[str, str]:
    """The FAILED_CHECKS_TAG of a materialization with these check results, if any blocks."""
    failed = sorted({check.check_name for check in checks if blocks(check)})
    return {FAILED_CHECKS_TAG: ",".join(failed)} if failed else {}


def check_result(
    spec: dg.AssetCheckSpec, checked: int, failures: list[str], warnings: list[str] = ()
) -> dg.AssetCheckResult:
    """The result of `spec` over `checked` rows: `failures` (bad rows) fail it with ERROR
    severity, which blocks; `warnings` alone fail it with WARN severity, which does not."""
    lines = [f"- {line}" for line in failures] + [f"- warning: {line}" for line in warnings]
    return dg.AssetCheckResult(
        check_name=spec.name,
        asset_key=spec.asset_key,
        passed=not failures and not warnings,
        severity=dg.AssetCheckSeverity.ERROR if failures else dg.AssetCheckSeverity.WARN,
        metadata={
            "checked_rows": checked,
            "failed_rows": len(failures),
            "warned_rows": len(warnings),
            "failures": dg.MetadataValue.md("\n".join(lines[:EXAMPLES_SHOWN]) or "none"),
        },
    )
