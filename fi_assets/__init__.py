"""Dagster definitions of the FineInstructions pipeline (one module per stage) and the `fi` CLI."""

import warnings

# The pipeline pins Dagster and uses some of its beta and preview APIs on purpose (multi-dimension
# partition mappings, per-asset backfill policies): their warnings are for Dagster's own users of
# those APIs, and a user of this pipeline could do nothing about them.
warnings.filterwarnings("ignore", message=r".* is currently in (beta|preview)")
# One `fi materialize` run holds assets with different backfill policies; Dagster says it runs
# them all one partition per run, which is what each of them allows.
warnings.filterwarnings("ignore", message=r"Asset job .* varying BackfillPolicies")
