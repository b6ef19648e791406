"""Song files: CSV, NDJSON and JSON arrays read row by row, and CSV and NDJSON written, all streamed."""

import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePath
from typing import IO, Any

import orjson

from app.errors import FileError

# What an export writes, in this order; an import reads the same columns.
COLUMNS = ("id", "name", "artist", "year", "created_at", "updated_at")
REQUIRED = ("name", "artist")

# Undecodable bytes, kept by errors="surrogateescape" so that the row can be named.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_WHOLE_NUMBER = re.compile(r"\s*[+-]?[0-9]{1,10}\s*")  # ASCII digits: int() takes others too
_BOM = b"\xef\xbb\xbf"
_JSON_ELEMENT_MAX = 1024 * 1024  # a song is a few hundred bytes: anything far larger is not one


class Format(StrEnum):
    CSV = "csv"
    NDJSON = "ndjson"
    JSON = "json"


_EXTENSIONS = {".csv": Format.CSV, ".ndjson": Format.NDJSON, ".jsonl": Format.NDJSON, ".json": Format.JSON}


def format_of(path: str) -> Format:
    """The format a file name's extension tells."""
    suffix = PurePath(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise FileError(f"{path}: cannot tell the format from the extension; give --format csv, ndjson or json")
    return _EXTENSIONS[suffix]


@dataclass(slots=True)
class RawRow:
    """One record as read from a file: its fields, or why it could not be read."""

    line: int
    fields: dict[str, Any] | None
    error: str | None = None


def read_rows(stream: IO[bytes], file_format: Format) -> Iterator[RawRow]:
    """The records of a file, each with the line it starts on; streamed, however large the file."""
    if file_format is Format.NDJSON:
        yield from _read_ndjson(stream)
        return
    # Undecodable bytes are kept (as surrogates) so that only their row is rejected.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        yield from (_read_csv(text) if file_format is Format.CSV else _read_json_array(text))
    finally:
        if not text.closed:  # closed already when the caller gave up on the rows first (interrupted)
            text.detach()  # the caller's stream stays the caller's to close


def _read_csv(text: IO[str]) -> Iterator[RawRow]:
    # strict: a quote left open, or text after a closing one, is an error, not rows run together.
    reader = csv.reader(text, strict=True)
    header = next((row for row in reader if row), None)  # blank lines before it aside
    if header is None:
        raise FileError(f"line {max(reader.line_num, 1)}: no header; a CSV file starts with one naming name and artist")
    at = f"line {reader.line_num}"
    if _UNDECODABLE.search("".join(header)):
        raise FileError(f"{at}: the header is not UTF-8; save the file as UTF-8")
    names = [name.strip().lower() for name in header]
    if missing := [name for name in REQUIRED if name not in names]:
        raise FileError(f"{at}: the header has no {' and no '.join(missing)} column (it has: {', '.join(names)})")
    # Only the columns read: others are ignored, repeated or blank (a spreadsheet's trailing cells).
    if repeated := sorted({name for name in names if name in COLUMNS and names.count(name) > 1}):
        raise FileError(f"{at}: the header names {', '.join(repeated)} more than once")
    optional = [(name, name in ("year", "id")) for name in ("year", "id", "created_at", "updated_at") if name in names]
    line = reader.line_num + 1  # where the next record starts
    try:
        for values in reader:
            if not values:
                pass  # a blank line
            elif not (joined := "".join(values)).isprintable() and _UNDECODABLE.search(joined):
                yield RawRow(line, None, "not UTF-8")  # (text that is printable holds no surrogate)
            elif len(values) > len(names):
                yield RawRow(line, None, f"has {len(values)} fields, but the header names {len(names)}")
            else:
                yield RawRow(line, _csv_fields(names, values, optional))
            line = reader.line_num + 1
    except csv.Error as exc:
        # A field past the csv module's limit, or quotes that do not close: the reader stops
        # inside a field and would take the rest for rows of their own. Nothing after it can be trusted.
        raise FileError(f"line {line}: not valid CSV: {exc}") from None


def _csv_fields(names: list[str], values: list[str], optional: Sequence[tuple[str, bool]]) -> dict[str, Any]:
    """A record's fields by the header's names; `optional`: the header's optional columns, and whether each is a number.

    CSV has only text: an empty optional field is no value, and numbers are read as numbers.
    """
    fields: dict[str, Any] = dict(zip(names, values, strict=False))
    for name, number in optional:
        value = fields.get(name)
        if value is None:
            continue
        if number and value.isascii() and value.isdigit() and len(value) <= 10:
            fields[name] = int(value)  # nearly every number: what _WHOLE_NUMBER takes, told faster
        elif not value.strip():
            fields[name] = None
        elif number and _WHOLE_NUMBER.fullmatch(value):
            fields[name] = int(value)
    return fields


def _read_ndjson(stream: IO[bytes]) -> Iterator[RawRow]:
    for line, raw in enumerate(stream, start=1):
        data = (raw.removeprefix(_BOM) if line == 1 else raw).rstrip(b"\r\n")
        if not data.strip():
            continue
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            yield RawRow(line, None, _json_error(data, exc))
            continue
        if isinstance(value, dict):
            yield RawRow(line, value)
        else:
            yield RawRow(line, None, f"not a JSON object but {_json_kind(value)}")


def _json_error(data: bytes, exc: ValueError) -> str:
    try:
        data.decode()
    except UnicodeDecodeError:
        return "not UTF-8"
    return f"not valid JSON: {exc.args[0] if exc.args else exc}"


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _read_json_array(text: IO[str]) -> Iterator[RawRow]:
    """The elements of a JSON array, decoded one at a time from a sliding buffer."""
    array = _JsonArray(text)
    if array.at_next_token() != "[":
        raise FileError(f"line {array.line}: a .json file must hold one array of songs")
    array.position += 1
    if array.at_next_token() == "]":
        array.close()
        return
    while True:
        array.at_next_token()
        start_line = array.line
        value, element = array.element()
        if _UNDECODABLE.search(element):
            yield RawRow(start_line, None, "not UTF-8")
        elif isinstance(value, dict):
            yield RawRow(start_line, value)
        else:
            yield RawRow(start_line, None, f"not a JSON object but {_json_kind(value)}")
        separator = array.at_next_token()
        if separator == "]":
            array.close()
            return
        array.position += 1
        if separator != ",":
            found = repr(separator) if separator else "the end of the file"
            raise FileError(f"line {array.line}: expected ',' or ']' after an element, found {found}")


@dataclass
class _JsonArray:
    """Where `_read_json_array` is: the text read and not yet decoded, from `position`, and its line."""

    text: IO[str]
    buffer: str = ""
    position: int = 0
    line: int = 1
    eof: bool = False
    decoder: json.JSONDecoder = field(default_factory=json.JSONDecoder)

    def at_next_token(self) -> str:
        """Skips whitespace, reading more as needed; the next character, or '' at the end of the file."""
        while True:
            stripped = len(self.buffer) - len(self.buffer[self.position :].lstrip())
            self.line += self.buffer.count("\n", self.position, stripped)
            self.position = stripped
            if self.position < len(self.buffer) or self.eof:
                return self.buffer[self.position : self.position + 1]
            self.buffer, self.position = self.text.read(65536), 0
            self.eof = not self.buffer

    def close(self) -> None:
        """Past the array's `]`: nothing but whitespace may follow (another array would go unread)."""
        self.position += 1
        if (after := self.at_next_token()) != "":
            raise FileError(f"line {self.line}: found {after!r} after the array; a .json file holds one array")

    def element(self) -> tuple[Any, str]:
        """The value that starts here, and its text, reading more as needed (up to 1 MiB)."""
        start_line = self.line
        # An element cut off by the buffer's end fails further on once more is read; one that is not
        # JSON fails at the same place again (but for a string not ended yet, which fails where it
        # starts until its end is read): that is its error, told at once.
        previous: tuple[str, int] | None = None
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.position)
                break
            except json.JSONDecodeError as exc:
                error = (exc.msg, exc.pos - self.position)
                if error == previous and not exc.msg.startswith("Unterminated string"):
                    raise FileError(f"line {start_line}: not valid JSON: {exc.msg}") from None
                previous = error
                more = "" if self.eof else self.text.read(65536)
                if not more:
                    raise FileError(f"line {start_line}: not valid JSON: {exc.msg}") from None
                if len(self.buffer) - self.position > _JSON_ELEMENT_MAX:
                    raise FileError(f"line {start_line}: an element of the array is larger than 1 MiB") from None
                self.buffer, self.position = self.buffer[self.position :] + more, 0
            except (RecursionError, ValueError) as exc:
                # Nested past Python's recursion limit, or an integer of more digits than int() takes.
                reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
                raise FileError(f"line {start_line}: not valid JSON: {reason}") from None
        if end - self.position > _JSON_ELEMENT_MAX:  # read whole, as one 64 KiB read more made it
            raise FileError(f"line {start_line}: an element of the array is larger than 1 MiB")
        element = self.buffer[self.position : end]
        self.line += element.count("\n")
        self.position = end
        return value, element
