"""Numeric precision: `auto` picks bf16 autocast only where the hardware multiplies bf16 natively.

    auto -> bf16  on CUDA devices with bf16 support, and on CPUs whose instruction set has
                  AMX-BF16 or AVX-512-BF16 (read from the CPU's feature flags, never guessed
                  from its name); fp32 everywhere else
    bf16 -> bf16  autocast (forced; on a CPU without native bf16 it is emulated and very slow)
    fp32 -> no autocast

Under bf16 autocast, master weights and optimizer state stay fp32 (autocast casts per op);
losses are computed on `.float()` logits.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'bf16' or 'fp32': what `precision` means on `device`."""
    device = torch.device(device)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def autocast_for(device: torch.device | str, precision: str):
    """A bf16 autocast context where `precision` resolves to bf16 on `device`, else a no-op."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
