"""Layer models: the masked LM wrapper, the task model, loading, MLM-head warm-up, optimizer/schedule, precision."""
