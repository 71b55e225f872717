"""Layer data: domains, corpora (local or remote), tokenization, block packing, MLM masking, task encoding."""
