"""Progress of a long phase: counts, rate and ETA, printed by the driver.

In a job log (stdout not a terminal, e.g. `ray job logs`, a CI log, a file) every update is one
plain line, at most one per `every_s` seconds plus the last one:

    stage 1 (laptop): step 40/100, loss 2.314, 870 tok/s, ETA 1m12s

With a terminal attached it is a live tqdm bar instead. The ETA counts only the work done in this
process (`start` = units already done before it, e.g. restored from a checkpoint):

    ETA = elapsed / (done - start) * (total - done)
"""

from __future__ import annotations

import sys
import time


def fmt_duration(seconds: float) -> str:
    """'45s', '3m05s', '2h07m'."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(elapsed: float, done: int, total: int, start: int = 0) -> float | None:
    """Seconds left at the rate of this process's own work; None before any of it is done."""
    if done - start <= 0:
        return None
    return elapsed / (done - start) * max(total - done, 0)


def interactive() -> bool:
    """A live bar only when a terminal is attached to stdout."""
    return sys.stdout.isatty()


class Progress:
    """`update(done, note)` as work completes; `close()` at the end. `label`: the phase
    ('tokenize acl', 'row 2'); `unit`: what is counted ('steps', 'cells', 'documents')."""

    def __init__(self, label: str, total: int, unit: str, start: int = 0, every_s: float = 10.0,
                 bar: bool | None = None, stream=None):
        self.label, self.total, self.unit, self.start = label, total, unit, start
        self.every_s, self.stream = every_s, stream or sys.stdout
        self.t0, self.last_print, self.done = time.monotonic(), -float("inf"), start
        self.elapsed: float | None = None   # set by `update(elapsed=...)` when the work is timed elsewhere
        self.bar = None
        if interactive() if bar is None else bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=label, unit=f" {unit}", file=self.stream,
                            dynamic_ncols=True, leave=True)

    def line(self, note: str = "") -> str:
        """'<label>: <done>/<total> <unit>[, note][, ETA ...]'."""
        elapsed = self.elapsed if self.elapsed is not None else time.monotonic() - self.t0
        eta = eta_seconds(elapsed, self.done, self.total, self.start)
        parts = [f"{self.label}: {self.done:,}/{self.total:,} {self.unit}"]
        if note:
            parts.append(note)
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {fmt_duration(eta)}")
        return ", ".join(parts)

    def update(self, done: int, note: str = "", force: bool = False, elapsed: float | None = None) -> None:
        """Record `done` units finished (absolute count); print if due. `elapsed`: seconds the
        work since `start` took, when measured where it ran (a training worker)."""
        step, self.done = done - self.done, done
        if elapsed is not None:
            self.elapsed = elapsed
        if self.bar is not None:
            self.bar.update(step)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            return
        now = time.monotonic()
        if force or done >= self.total or now - self.last_print >= self.every_s:
            self.last_print = now
            print(self.line(note), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunProgress:
    """The whole run's progress line after every stage and every anytime row:

        run: 1/3 stages, 4/12 cells done, elapsed 3m10s, ETA 9m40s

    ETA = stages left x mean wall time of the stages trained in this process
        + cells left x mean cell wall time / cells running at once
    (printed once both means are measured here; work skipped as already done does not count)."""

    def __init__(self, stages: int, cells: int, parallel_cells: int, stages_done: int = 0, cells_done: int = 0):
        self.stages, self.cells, self.parallel = stages, cells, max(1, parallel_cells)
        self.stages_done, self.cells_done = stages_done, cells_done
        self.stage_s: list[float] = []
        self.cell_s: list[float] = []
        self.t0 = time.monotonic()

    def stage_finished(self, seconds: float | None) -> None:
        """A stage is done (`seconds`: its wall time here; None when it was skipped)."""
        self.stages_done += 1
        if seconds is not None:
            self.stage_s.append(seconds)

    def cell_finished(self, seconds: float) -> None:
        self.cells_done += 1
        self.cell_s.append(seconds)

    def eta(self) -> float | None:
        stages_left, cells_left = self.stages - self.stages_done, self.cells - self.cells_done
        if (stages_left and not self.stage_s) or (cells_left and not self.cell_s):
            return None
        stage = sum(self.stage_s) / len(self.stage_s) if self.stage_s else 0.0
        cell = sum(self.cell_s) / len(self.cell_s) if self.cell_s else 0.0
        return stages_left * stage + cells_left * cell / self.parallel

    def line(self) -> str:
        eta = self.eta()
        done = self.stages_done == self.stages and self.cells_done == self.cells
        return (f"run: {self.stages_done}/{self.stages} stages, {self.cells_done}/{self.cells} cells done, "
                f"elapsed {fmt_duration(time.monotonic() - self.t0)}"
                + ("" if done or eta is None else f", ETA {fmt_duration(eta)}"))

    def report(self) -> None:
        print(self.line(), flush=True)
