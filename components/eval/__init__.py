"""Layer eval: anytime metrics, the matrix, held-out diagnostics, reports, results tables, run comparison."""
