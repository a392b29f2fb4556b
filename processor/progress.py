"""Progress of the long commands (``analyze`` on many files, ``eval``, ``train``, ``bench``).

On a terminal: rich bars, gone when the command ends. Otherwise (a log file, CI, a pipe): plain
lines, at most one per task every few seconds plus the last, so that a log shows how far a run
got without a screenful of control characters. Progress goes to the console given (stderr in
the commands), which keeps stdout for the results.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import Progress, TaskID


class Task:
    """One counted activity; ``advance`` after each step."""

    def __init__(self, owner: Steps, description: str, total: int | None) -> None:
        self._owner = owner
        self.description = description
        self.total = total
        self.completed = 0
        self.started = time.monotonic()
        self._last_line = float("-inf")
        self._id: TaskID | None = None

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more done."""
        self.update(completed=self.completed + steps)

    def update(self, *, completed: int | None = None, description: str | None = None) -> None:
        """Set the count done and/or the description."""
        if completed is not None:
            self.completed = completed
        if description is not None:
            self.description = description
        self._owner.show(self)

    def line(self) -> str:
        """The task as one plain line: ``description: 3/10 (30%), 12 s``."""
        elapsed = time.monotonic() - self.started
        if self.total:
            share = f" ({100 * self.completed / self.total:.0f}%)"
            return f"{self.description}: {self.completed}/{self.total}{share}, {elapsed:.0f} s"
        return f"{self.description}: {self.completed}, {elapsed:.0f} s"


class Steps:
    """Context manager holding the tasks of one command. ``bars`` forces the choice (tests);
    by default bars are drawn when ``console`` is a terminal."""

    def __init__(
        self, console: Console, *, bars: bool | None = None, min_interval_s: float = 5.0
    ) -> None:
        self.console = console
        self.bars = console.is_terminal if bars is None else bars
        self.min_interval_s = min_interval_s
        self._progress: Progress | None = None

    def __enter__(self) -> Self:
        if self.bars:
            self._progress = Progress(console=self.console, transient=True)
            self._progress.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, exc, tb)
            self._progress = None

    def add(self, description: str, total: int | None) -> Task:
        """A new task of ``total`` steps (None: not known ahead)."""
        task = Task(self, description, total)
        if self._progress is not None:
            task._id = self._progress.add_task(description, total=total)
        return task

    def show(self, task: Task) -> None:
        """Draw ``task``'s new state: the bar, or a line when enough time has passed (the
        last step is always written)."""
        if self._progress is not None and task._id is not None:
            self._progress.update(task._id, completed=task.completed, description=task.description)
            return
        now = time.monotonic()
        finished = task.total is not None and task.completed >= task.total
        if finished or now - task._last_line >= self.min_interval_s:
            task._last_line = now
            self.console.print(task.line(), markup=False, highlight=False, soft_wrap=True)
