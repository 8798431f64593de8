"""Benchmarks: each script prints one table and exits (python -m bench.NAME --help)."""
