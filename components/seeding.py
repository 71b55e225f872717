"""The one seeding scheme: every random draw of a run is seeded by `mix_seed` of integers that
name it (the run seed, stage, step, rank, a purpose tag), so a draw never depends on a process's
history and every DDP rank derives the same seed without communication."""

from __future__ import annotations

import hashlib


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style mixing)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def name_id(name: str) -> int:
    """A stable integer for a name (a task, a purpose), to pass to `mix_seed`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1
