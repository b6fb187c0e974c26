"""What training shows while it runs, and what it says when its time budget cut it short.

On a terminal: a rich progress bar over the epochs (advanced batch by batch) with the
latest loss, the time spent and the time left, the smaller of what the pace predicts and
what the budget allows. Anywhere else (a file, a pipe, a CI log): one plain line per
epoch, never wrapped or cut, so a log read later says what happened.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

# The held-out prediction error still falling by more than this share per epoch at the
# cut: more epochs would most likely have given a better twin.
STILL_IMPROVING = 0.02


def _clock(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


class TrainingDisplay:
    """Progress of one training run; a no-op when `enabled` is False (API jobs, tests)."""

    def __init__(
        self,
        epochs: int,
        steps_per_epoch: int,
        max_seconds: float | None,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.epochs, self.steps_per_epoch = epochs, max(1, steps_per_epoch)
        self.max_seconds, self.enabled = max_seconds, enabled
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream)
        self.interactive = enabled and self.console.is_terminal
        self.started = time.perf_counter()
        self.steps_done, self.loss = 0, float("nan")
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> TrainingDisplay:
        self.started = time.perf_counter()
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]training twin"),
                BarColumn(),
                TextColumn("epoch {task.fields[epoch]}/{task.total:.0f}"),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TextColumn("left ~{task.fields[left]}"),
                TextColumn("{task.description}"),
                console=self.console,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.epochs, epoch=0, loss="-", left="?")
        elif self.enabled:
            budget = f", time budget {_clock(self.max_seconds)}" if self.max_seconds else ""
            self._line(
                f"training twin: {self.epochs} epochs of {self.steps_per_epoch} batches{budget}"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def time_left(self) -> float | None:
        """What the pace so far predicts, capped by what the budget allows."""
        total = self.epochs * self.steps_per_epoch
        if self.steps_done == 0:
            return self.max_seconds
        by_pace = self.elapsed() / self.steps_done * (total - self.steps_done)
        if self.max_seconds is None:
            return by_pace
        return min(by_pace, self.max_seconds - self.elapsed())

    def batch(self, loss: float) -> None:
        self.steps_done += 1
        self.loss = loss
        if self._progress is not None and self._task is not None:
            left = self.time_left()
            self._progress.update(
                self._task,
                completed=self.steps_done / self.steps_per_epoch,
                epoch=min(self.epochs, self.steps_done // self.steps_per_epoch + 1),
                loss=f"{loss:.4f}",
                left="?" if left is None else _clock(left),
            )

    def epoch(self, number: int, summary: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=summary)
        elif self.enabled:
            left = self.time_left()
            self._line(
                f"epoch {number}/{self.epochs} | {summary} | "
                f"{_clock(self.elapsed())} spent"
                + ("" if left is None else f", ~{_clock(left)} left")
            )

    def finish(self, note: str | None) -> None:
        """Say once, after the bar, how training ended when the budget ended it."""
        if self._progress is not None:
            self._progress.stop()
        if self.enabled and note:
            self._line(note)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def budget_note(
    history: Sequence[Mapping[str, Any]],
    epochs_asked: int,
    epochs_done: float,
    max_seconds: float | None,
    stopped_by_budget: bool,
) -> str | None:
    """A plain sentence when the time budget cut training short: how much was done and
    what the cut is likely to cost, judged from the held-out error's last trend."""
    if not stopped_by_budget or max_seconds is None:
        return None
    share = 100.0 * epochs_done / max(1, epochs_asked)
    done = f"{epochs_done:.2f}" if epochs_done < 1 else f"{epochs_done:.1f}"
    text = (
        f"training stopped by its time budget ({_clock(max_seconds)}) after "
        f"{done} of {epochs_asked} epochs ({share:.0f} %)"
    )
    full = [h for h in history if h.get("fraction", 1.0) >= 1.0]
    if len(full) >= 2:
        before, last = full[-2]["holdout_prediction"], full[-1]["holdout_prediction"]
        drop = (before - last) / before if before > 0 else 0.0
        if drop > STILL_IMPROVING:
            return (
                text + f"; the held-out prediction error was still falling "
                f"{100 * drop:.0f} % per epoch, so this twin is likely worse than a full "
                "run's: give more --max-minutes or fewer --epochs"
            )
        return (
            text + f"; the held-out prediction error had levelled off ({-100 * drop:+.1f} "
            "% in the last full epoch), so the cut likely costs little"
        )
    return (
        text + "; too few epochs to judge the trend: this twin is likely much worse "
        "than a full run's, give more --max-minutes"
    )
