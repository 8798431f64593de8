"""Stage F: the benchmarks, their scoring and the report."""
