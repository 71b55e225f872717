"""Shared test helpers: tiny models and stage infos, tiny pipeline configs, a private Ray head, DDP on CPU."""
