"""Stand-alone pre-training of Llama-style models on packed Parquet samples, runnable by hand with
`python -m training.train` or `torchrun`; no Dagster. Read `train.py` top to bottom."""
