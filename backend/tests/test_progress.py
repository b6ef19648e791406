"""The progress of an import: a live bar on a terminal, plain lines in a log."""

import io
from collections.abc import Iterator

from rich.console import Console

from app.progress import RowProgress


def test_a_terminal_gets_a_bar_with_rows_rate_elapsed_and_time_left() -> None:
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=160)
    stream = io.BytesIO(b"x" * 5000)

    with RowProgress(console) as progress:
        rows = list(progress.track(range(5000), name="songs.csv", stream=stream, size=5000))

    assert rows == list(range(5000))
    shown = output.getvalue()
    assert "songs.csv" in shown
    assert "5,000 rows" in shown
    assert "rows/s" in shown
    assert "0:00:00" in shown  # elapsed, and the time left


def test_a_log_gets_plain_lines_with_the_time_left() -> None:
    output = io.StringIO()
    console = Console(file=output, force_terminal=False, soft_wrap=True)
    stream = io.BytesIO(b"x" * 3000)

    def rows() -> Iterator[int]:
        for number in range(3000):
            stream.seek(number + 1)  # as a reader moves through the file
            yield number

    with RowProgress(console, plain_every=0) as progress:
        list(progress.track(rows(), name="songs.csv", stream=stream, size=3000))

    lines = output.getvalue().splitlines()
    assert lines[0].startswith("songs.csv: 1,000 rows read, ")
    assert "rows/s" in lines[0]
    assert lines[0].endswith(" s left")
    assert lines[-1].startswith("songs.csv: 3,000 rows read, ")
    assert "\x1b" not in output.getvalue()  # no terminal codes in a log
