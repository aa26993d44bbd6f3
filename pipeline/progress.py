"""Progress for humans, on stderr: rich bars on a terminal, plain lines elsewhere, or nothing.

The pipeline reports through an `echo` callable (one line of progress). A `Progress` is such a
callable that also draws bars for the long steps: preparing wheels (files), building the image
(Dockerfile steps) and pushing it (bytes). Any plain callable works too; `reporter(echo)` wraps
it, and its tasks then print their notes as plain lines, as before bars existed:

    progress = Progress(quiet=False)           # what the CLI passes
    progress("Resolving model versions")       # a line
    with progress.task("Building", total=8) as task:
        task.update(3, note="Step 3/8 : COPY ...")

With `quiet=True` nothing is printed at all: errors are raised and the CLI prints them, and the
final result goes to stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

# Where progress lines go: `print`-like, one line per call (stderr, a Progress, or nowhere).
Echo = Callable[[str], None]

Unit = Literal["steps", "files", "bytes"]


class Task:
    """One long step; `update` moves its bar (rich) or prints its note (plain)."""

    def __init__(self, progress: Progress, bar: Any = None, task_id: Any = None) -> None:
        self._progress = progress
        self._bar = bar
        self._id = task_id

    def update(
        self,
        completed: float | None = None,
        *,
        total: float | None = None,
        note: str | None = None,
    ) -> None:
        if self._bar is not None:
            fields: dict[str, Any] = {}
            if completed is not None:
                fields["completed"] = completed
            if total is not None:
                fields["total"] = total
            if note is not None:
                fields["note"] = note if len(note) <= 60 else note[:59] + "…"
            self._bar.update(self._id, **fields)
        elif note is not None:
            self._progress(f"  {note}")

    def advance(self, amount: float = 1, *, note: str | None = None) -> None:
        if self._bar is not None:
            self._bar.advance(self._id, amount)
        self.update(note=note)


class Progress:
    """An echo callable with bars; see the module docstring."""

    def __init__(
        self,
        echo: Callable[[str], None] | None = None,
        *,
        quiet: bool = False,
        rich: bool | None = None,
    ) -> None:
        """`echo` prints lines (default: stderr). `rich`: draw bars (default: stderr is a tty)."""
        self._echo = echo
        self.quiet = quiet
        self.rich = (echo is None and sys.stderr.isatty()) if rich is None else rich
        self._console: Any = None
        if self.rich and not quiet:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            self._console.print(message, markup=False)
        elif self._echo is not None:
            self._echo(message)
        else:
            print(message, file=sys.stderr, flush=True)

    @contextmanager
    def task(self, description: str, total: float | None, unit: Unit = "steps") -> Iterator[Task]:
        """A bar for one long step; plain and quiet reporters print its notes or nothing."""
        if self.quiet:
            yield Task(_Silent())
            return
        if self._console is None:
            self(description)
            yield Task(self)
            return
        from rich import progress as rp

        counter: list[rp.ProgressColumn] = (
            [rp.DownloadColumn(), rp.TransferSpeedColumn()]
            if unit == "bytes"
            else [rp.MofNCompleteColumn()]
        )
        columns = [
            rp.SpinnerColumn(),
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            *counter,
            rp.TimeElapsedColumn(),
            rp.TextColumn("[dim]{task.fields[note]}"),
        ]
        with rp.Progress(*columns, console=self._console, transient=False) as bar:
            task_id = bar.add_task(description, total=total, note="")
            yield Task(self, bar, task_id)
            if total is not None:
                bar.update(task_id, completed=bar.tasks[0].total, note="")


class _Silent(Progress):
    def __init__(self) -> None:
        super().__init__(lambda _: None, quiet=True, rich=False)


def reporter(echo: Callable[[str], None]) -> Progress:
    """`echo` itself when it is a `Progress`, else a plain `Progress` printing through it."""
    return echo if isinstance(echo, Progress) else Progress(echo, rich=False)


# Plain lines on stderr, without bars: the default `echo` of functions called outside the CLI.
to_stderr: Echo = Progress(rich=False)
