"""Layer sweep (top): Ray Tune sweeps: the search space (space.py), one trial = one run (trial.py), the driver (runner.py)."""
