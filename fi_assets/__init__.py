"""Dagster definitions of the FineInstructions pipeline (one module per stage) and the `fi` CLI."""
