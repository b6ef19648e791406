"""How a long command shows its progress: a live bar on a terminal, plain periodic lines otherwise."""

import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")

EVERY_ROWS = 1000  # how often the position is read
PLAIN_EVERY_SECONDS = 5.0


class _Rows(ProgressColumn):
    """Rows read and rows per second (the bar itself tracks bytes, for the time left)."""

    def render(self, task: Task) -> Text:
        rows = task.fields.get("rows", 0)
        rate = rows / task.elapsed if task.elapsed else 0
        return Text(f"{rows:,} rows  {rate:,.0f} rows/s")


class RowProgress:
    """Counts the rows of each file as they are read, and shows it on `console`."""

    def __init__(self, console: Console, *, plain_every: float = PLAIN_EVERY_SECONDS) -> None:
        self.console = console
        self.live = console.is_terminal
        self.plain_every = plain_every
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),  # a file's name, as it is: "a[/x].csv"
            BarColumn(),
            _Rows(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )

    def __enter__(self) -> "RowProgress":
        if self.live:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self._progress.stop()

    def track(self, items: Iterable[T], *, name: str, stream: IO[Any], size: int | None) -> Iterator[T]:
        """`items`, counted; `stream`'s position over `size` bytes tells how far the file is read."""
        task = self._progress.add_task(name, total=size, rows=0)
        started = last_line = time.monotonic()
        rows = 0
        for rows, item in enumerate(items, start=1):
            yield item
            if rows % EVERY_ROWS:
                continue
            position = stream.tell() if size is not None else None
            if self.live:
                self._progress.update(task, completed=position, rows=rows)
            elif (now := time.monotonic()) - last_line >= self.plain_every:
                last_line = now
                self._plain(_plain_line(name, rows, now - started, position, size))
        self._progress.update(task, completed=size, rows=rows)
        if not self.live:
            self._plain(_plain_line(name, rows, time.monotonic() - started, size, size))

    def finish(self, message: str) -> None:
        """Stops the live bar, its rows all read, and says what comes next."""
        if self.live:
            self._progress.stop()
        self.note(message)

    def note(self, message: str) -> None:
        self._plain(message)

    def _plain(self, line: str) -> None:
        self.console.print(line, highlight=False, markup=False)


def _plain_line(name: str, rows: int, elapsed: float, position: int | None, size: int | None) -> str:
    line = f"{name}: {rows:,} rows read, {rows / elapsed if elapsed else 0:,.0f} rows/s, {elapsed:.0f} s elapsed"
    if position and size and position < size:
        line += f", about {elapsed * (size - position) / position:.0f} s left"
    return line
