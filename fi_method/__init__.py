"""The FineInstructions method as plain functions: no Dagster, no model weights, no I/O beyond
reading the files a function is given. Each stage of the pipeline calls into here."""
