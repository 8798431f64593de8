"""Stage E: each recipe's samples packed token for token against the documents, decontaminated
against the benchmarks."""
