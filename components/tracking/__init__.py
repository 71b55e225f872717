"""Layer tracking (just below run): W&B logging of steps, stages and the anytime matrix."""
