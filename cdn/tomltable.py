"""Typed, path-aware reading of a parsed TOML document for the config loader.

Each `Table` remembers its key path ("zones[0].records[2]") so that every defect becomes one
`ConfigError("cdn.toml", "zones[0].records[2].ttl", "expected an integer ...")`, and the keys
it was asked for, so that a key nobody asked for (a typo) is an error rather than ignored.
The edge reads its own TOML with the same class, raising its own ConfigError subclass.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload

from cdn.errors import ConfigError

T = TypeVar("T")
D = TypeVar("D")
S = TypeVar("S")

_REQUIRED: Any = object()
_KIND_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "a table",
}


# tomllib converts a decimal integer with int(), which refuses more digits than
# sys.get_int_max_str_digits() (the CVE-2020-10735 guard, 4300 by default) with a plain
# ValueError, and recurses once per level of nested arrays and inline tables.
_DEEP_NESTING = re.compile(rb"(?:[\[{][^\[\]{}]*){100}")  # 100 opened, none closed
_KEY_LINE = re.compile(rb"[ \t]*([A-Za-z0-9_.\-\"' ]+?)[ \t]*=")
_HEADER_LINE = re.compile(rb"[ \t]*(\[\[?)[ \t]*([A-Za-z0-9_.\-\"' ]+?)[ \t]*\]")


def read_toml(
    path: Path, source: str, error_type: type[ConfigError] = ConfigError
) -> dict[str, Any]:
    """The parsed document at `path`; unreadable or malformed files raise `error_type`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error_type(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(data.decode())
    except UnicodeDecodeError as exc:
        raise error_type(source, "", f"not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise error_type(source, "", f"not valid TOML: {exc}") from None
    except ValueError as exc:  # int() refused the digits; tomllib does not say where
        limit = sys.get_int_max_str_digits()
        key, line = _locate(data, re.compile(rb"[0-9_]{%d,}" % (limit + 1))) if limit else ("", "")
        if not line:
            raise error_type(source, "", f"not valid TOML: {_one_line(exc)}") from None
        raise error_type(source, key, f"integer longer than {limit} digits{line}") from None
    except RecursionError:
        key, line = _locate(data, _DEEP_NESTING)
        message = f"arrays or inline tables nested too deeply{line}"
        raise error_type(source, key, message) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _locate(data: bytes, pattern: re.Pattern[bytes]) -> tuple[str, str]:
    """Where the first match of `pattern` is: the key path as far as plain headers and keys
    tell it ("nodes[2].capacity_rps") and " (line N)"; ("", "") if nothing matches."""
    found = pattern.search(data)
    if found is None:
        return "", ""
    lines = data[: found.start()].split(b"\n")
    indices: dict[str, int] = {}  # array-of-tables header -> index of its latest table
    header = ""
    for text in lines[:-1]:
        if match := _HEADER_LINE.match(text):
            dotted = match.group(2).decode().replace(" ", "")
            if match.group(1) == b"[[":  # a new table: its own sub-arrays start again
                indices = {k: v for k, v in indices.items() if not k.startswith(f"{dotted}.")}
                indices[dotted] = indices.get(dotted, -1) + 1
            header = _table_path(dotted, indices)
    key = _KEY_LINE.match(lines[-1])
    parts = [header] if header else []
    parts += [key.group(1).decode().replace(" ", "")] if key else []
    return ".".join(parts), f" (line {len(lines)})"


def _table_path(dotted: str, indices: dict[str, int]) -> str:
    """`dotted` with the current index after each array of tables it passes ("zones[1].x")."""
    out: list[str] = []
    prefix = ""
    for part in dotted.split("."):
        prefix = f"{prefix}.{part}" if prefix else part
        out.append(f"{part}[{indices[prefix]}]" if prefix in indices else part)
    return ".".join(out)


def _describe(value: object) -> str:
    """How a TOML value is named in an error: its TOML type and, for scalars, the value."""
    kind = _KIND_NAMES.get(type(value), type(value).__name__)
    return kind if isinstance(value, list | dict) else f"{kind} {value!r}"


class Table:
    """One TOML table: `with Table(...) as t:` reads keys and rejects unknown ones on exit."""

    def __init__(
        self,
        source: str,
        path: str,
        raw: dict[str, Any],
        error_type: type[ConfigError] = ConfigError,
    ) -> None:
        self.source = source
        self.path = path
        self.error_type = error_type  # sub-tables raise the same kind
        self._raw = raw
        self._known: set[str] = set()

    def __enter__(self) -> Table:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.reject_unknown()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError about `key` of this table ("" for the table itself)."""
        return self.error_type(self.source, self.key_path(key) if key else self.path, message)

    def has(self, key: str) -> bool:
        self._known.add(key)
        return key in self._raw

    @overload
    def get(self, key: str, kind: type[T]) -> T: ...
    @overload
    def get(self, key: str, kind: type[T], default: D) -> T | D: ...
    def get(self, key: str, kind: type[Any], default: Any = _REQUIRED) -> Any:
        """`key` as `kind` (an int passes as a float); a key without default is required."""
        if not self.has(key):
            if default is _REQUIRED:
                raise self.error(key, f"required key missing (expected {_KIND_NAMES[kind]})")
            return default
        return self._check(key, self._raw[key], kind)

    def integer(self, key: str, lo: int, hi: int, default: Any = _REQUIRED) -> int:
        value: int = self.get(key, int, default)
        if not lo <= value <= hi:
            raise self.error(key, f"expected an integer in {lo}..{hi}, got {value}")
        return value

    def real(
        self, key: str, lo: float, hi: float, default: Any = _REQUIRED, *, lo_open: bool = False
    ) -> float:
        value: float = self.get(key, float, default)
        if value < lo or value > hi or (lo_open and value == lo):
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise self.error(key, f"expected a number in {interval}, got {value:g}")
        return value

    def parsed(self, key: str, parse: Callable[[str], T], default: str | None = None) -> T:
        """A string converted by `parse`, whose ValueError becomes this key's ConfigError."""
        text = self.get(key, str) if default is None else self.get(key, str, default)
        return self.item(key, text, parse)

    def optional(self, key: str, parse: Callable[[str], T]) -> T | None:
        return self.parsed(key, parse) if self.has(key) else None

    def amount(self, key: str, parse: Callable[[str | int], T], default: str | int) -> T:
        """An integer or a string with a unit ("256M"), converted by `parse`."""
        value = self._raw[key] if self.has(key) else default
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.error(key, f"expected an integer or a string, got {_describe(value)}")
        return self.item(key, value, parse)

    def item(self, key: str, value: S, parse: Callable[[S], T]) -> T:
        """`parse(value)` for a value found at `key` (e.g. "ns[1]" from `strings`)."""
        try:
            return parse(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def strings(self, key: str) -> list[tuple[str, str]]:
        """An optional array of strings, each paired with its own key path ("ns[1]")."""
        items: list[Any] = self.get(key, list, [])
        for i, item in enumerate(items):
            self._check(f"{key}[{i}]", item, str)
        return [(f"{key}[{i}]", item) for i, item in enumerate(items)]

    def table(self, key: str) -> Table:
        """An optional sub-table (absent reads as empty)."""
        return Table(self.source, self.key_path(key), self.get(key, dict, {}), self.error_type)

    def tables(self, key: str) -> list[Table]:
        """An optional array of tables (`[[key]]`)."""
        items: list[Any] = self.get(key, list, [])
        for i, item in enumerate(items):
            self._check(f"{key}[{i}]", item, dict)
        return [
            Table(self.source, self.key_path(f"{key}[{i}]"), t, self.error_type)
            for i, t in enumerate(items)
        ]

    def reject_unknown(self) -> None:
        for key in self._raw:
            if key not in self._known:
                raise self._unknown(key)

    def _check(self, key: str, value: Any, kind: type[Any]) -> Any:
        # TOML booleans are not numbers, and 1 is a fine float but 1.5 is not an integer.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # TOML integers are unbounded; floats stop near 1.8e308
                raise self.error(key, "expected a finite number, got a huge integer") from None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {_KIND_NAMES[kind]}, got {_describe(value)}")
        if kind is float and not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value}")
        return value

    def _unknown(self, key: str) -> ConfigError:
        close = difflib.get_close_matches(key, sorted(self._known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return self.error(key, f"unknown key{hint}")
