"""Blocking asset checks that run inside the asset's own step, on the partition it just wrote: a
failure marks the run failed, so nothing downstream is built on bad rows (`fi materialize` skips
the runs that would read them). The rows themselves stay written, for audit. The logic is in
fi_method.synthesis.quality; this module names the checks and reports them."""

import dagster as dg

EXAMPLES_SHOWN = 10  # offending rows a failed check lists
# Tag of a materialization whose blocking checks failed: `fi materialize` re-runs that partition
# (and skips what reads it while it still fails) instead of building on it.
FAILED_CHECKS_TAG = "fi/failed_checks"

DOCUMENTS_MATCHED = dg.AssetCheckSpec(
    "documents_matched",
    asset="matched_pairs",
    blocking=True,
    description="At most half of the shard's documents have no template above the similarity "
    "threshold (a wrong threshold, or an index built by another embedder, leaves most without).",
)
INSTANTIATOR_NULL_RATE = dg.AssetCheckSpec(
    "instantiator_null_rate",
    asset="instantiated_pairs",
    blocking=True,
    description="The instantiator answers `null` (the template does not fit) for at most half of "
    "the shard's matches; the released instantiator does for ~5 %.",
)
JUDGE_PASS_RATE = dg.AssetCheckSpec(
    "judge_pass_rate_plausible",
    asset="judged_pairs",
    blocking=True,
    description="The judge keeps at most 95 % of the shard's pairs, once it judged 50 or more "
    "(the paper: ~58 %): one that keeps all is not judging. One that keeps none leaves its recipe without tokens, which "
    "recipes_fill_training_budget fails.",
)
NO_DOMINANT_TEMPLATE = dg.AssetCheckSpec(
    "no_dominant_template",
    asset="judged_pairs",
    blocking=True,
    description="No template holds more than 10x a uniform share of the shard's kept pairs (the "
    "paper: none above 0.09 % of 1.08B).",
)
TRAINING_BUDGET = dg.AssetCheckSpec(
    "recipes_fill_training_budget",
    asset="training_budget",
    blocking=True,
    description="Every recipe packed, over the same training shards, at least the training "
    "budget (FI_TRAINING_TOKENS, default the smallest recipe's total): one with fewer could only "
    "reach it by repeating data, one with none has nothing to train on. Otherwise the comparison "
    "is not controlled and no model trains.",
)
NO_EVAL_LEAK = dg.AssetCheckSpec(
    "no_eval_items_in_training_data",
    asset="packed_corpus",
    blocking=True,
    description="No packed sample contains a whole item of MixEval, MixEval-Hard, MT-Bench, "
    "MT-Bench-101 or AlpacaEval (blocks); one whose 8-grams cover half an item or more is listed "
    "in the result's notes (the Tulu 3 test), without failing it.",
)


def blocks(check: dg.AssetCheckResult) -> bool:
    """A failed check of ERROR severity: what a blocking check stops downstream work for."""
    return not check.passed and check.severity == dg.AssetCheckSeverity.ERROR


def failed_checks_tags(checks: list[dg.AssetCheckResult]) -> dict[str, str]:
    """The FAILED_CHECKS_TAG of a materialization with these check results, if any blocks."""
    failed = sorted({check.check_name for check in checks if blocks(check)})
    return {FAILED_CHECKS_TAG: ",".join(failed)} if failed else {}


def check_result(
    spec: dg.AssetCheckSpec, checked: int, failures: list[str], notes: list[str] = ()
) -> dg.AssetCheckResult:
    """The result of `spec` over `checked` rows: any `failures` fail it with ERROR severity, which
    blocks (every check of the pipeline is blocking). `notes` are findings worth a look that do not
    fail it; they are listed in its metadata."""
    return dg.AssetCheckResult(
        check_name=spec.name,
        asset_key=spec.asset_key,
        passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "checked_rows": checked,
            "failed_rows": len(failures),
            "failures": dg.MetadataValue.md(_listed(failures)),
            "noted_rows": len(notes),
            "notes": dg.MetadataValue.md(_listed(notes)),
        },
    )


def _listed(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines[:EXAMPLES_SHOWN]) or "none"
