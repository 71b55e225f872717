"""torch.compile for the training steps, with an eager fallback.

    auto   -> compiled on CUDA for a loop of at least AUTO_MIN_STEPS steps, eager otherwise
    always -> compiled wherever torch.compile works

Why: on this project's 2-core CPU the first compiled MiniLM step took minutes and compiled
steps were not faster (docs/results.md "Speed"), so on CPU compiling never pays. On a GPU an
eager MiniLM step at the default batch takes milliseconds while a cold compile takes tens of
seconds, so compiling can only pay back over long loops: the default budgets (40 pre-training
steps per stage, ~40 fine-tuning steps per cell) stay eager. AUTO_MIN_STEPS is that estimate,
not a measurement; benchmarks/gpu_check.sh measures compile time and per-step gain on a GPU.
    never  -> eager

A compiled step that raises (a backend or compiler failure, at the first step or at a later
recompile) is rerun in eager mode from the same state: gradients are cleared and the RNG state
restored first, so the rerun is the step eager mode would have run. One warning line names the
failure; every later step runs eager. An exception that the eager rerun raises too is the
step's own, and propagates.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import nn

BACKEND: Any = "inductor"  # torch.compile backend; tests swap in a counting or failing one
AUTO_MIN_STEPS = 1000


def resolve_compile(setting: str, device: torch.device | str, steps: int) -> bool:
    """Whether `setting` (auto / always / never) compiles a loop of `steps` steps on `device`."""
    if setting == "auto":
        return torch.device(device).type == "cuda" and steps >= AUTO_MIN_STEPS
    return setting == "always"


class CompiledStep:
    """Runs `step(module)` with `torch.compile(module)` when enabled, else with `module`;
    falls back to eager for good at the first failure of the compiled path."""

    def __init__(self, module: nn.Module, enabled: bool, what: str, dynamic: bool | None = None):
        self.eager, self.what = module, what
        self.compiled: nn.Module | None = None
        if enabled:
            try:
                self.compiled = torch.compile(module, backend=BACKEND, dynamic=dynamic)
            except Exception as e:  # e.g. a Python version torch.compile does not support
                self._warn(e)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, step: Callable[[nn.Module], Any], reset: Callable[[], None]) -> Any:
        """`step(module)` runs one training step's forward and backward; `reset()` clears what a
        failed attempt may have left (gradients) before the eager rerun."""
        if self.compiled is None:
            return step(self.eager)
        rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            return step(self.compiled)
        except Exception as e:
            self._warn(e)
            self.compiled = None
            reset()
            torch.random.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            return step(self.eager)

    def _warn(self, e: BaseException) -> None:
        while (inner := e.__cause__ or getattr(e, "inner_exception", None)) is not None:
            e = inner  # the compiler's own error, not dynamo's wrapper
        first = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"WARNING: torch.compile failed for {self.what} ({type(e).__name__}: {first}); "
              f"running eager from here on", file=sys.stderr, flush=True)
