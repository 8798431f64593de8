"""Stage B: documents -> passages -> their Gaussian-pooled vectors -> matched templates."""
