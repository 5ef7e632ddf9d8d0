"""Hash lists on disk: CSV and JSON lines with python-threatexchange / HMA signal type names.

Read (``parse``), one signal per line:

* CSV with a header naming ``signal_type`` and ``signal_value`` (the column names HMA and
  python-threatexchange use); other columns are optional: ``quality`` and ``note`` are kept,
  the rest ignored. Without such a header the first two columns are type and value.
* Whitespace-separated ``TYPE VALUE`` lines, as ``threatexchange hash`` prints them.
* JSON lines: ``{"signal_type": "pdq", "signal_value": "...", "note": "..."}``.

Blank lines and lines starting with ``#`` are skipped. Every bad line (unknown type, bad hex,
wrong length, unreadable JSON) is collected with its line number and the whole list is refused
(``ListError``), so an import is all or nothing. Values are normalised to lowercase hex.

Written (``write_csv``, ``write_jsonl``): the same shapes, header ``signal_type,signal_value``
plus ``note`` and ``quality`` when known, so an exported bank imports anywhere that reads HMA's
columns, and back into fsq unchanged.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any, Iterable, TextIO

from fsq.signals import HEX_LENGTH, SIGNAL_TYPES

MAX_NOTE = 500
MAX_ERRORS_SHOWN = 20
_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class Signal:
    signal_type: str
    signal_value: str
    quality: int | None = None
    note: str | None = None


class ListError(ValueError):
    """The list has bad lines; ``errors`` is [(line number, problem)]."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        self.errors = errors
        shown = "; ".join(f"line {n}: {msg}" for n, msg in errors[:MAX_ERRORS_SHOWN])
        more = len(errors) - MAX_ERRORS_SHOWN
        super().__init__(f"{len(errors)} bad line(s), nothing imported: {shown}"
                         + (f"; ... and {more} more" if more > 0 else ""))


def clean_text(value: Any) -> str | None:
    """Untrusted free text from a list: printable, bounded."""
    if value is None:
        return None
    s = "".join(c if c.isprintable() else "?" for c in str(value)[:MAX_NOTE]).strip()
    return s or None


def check_signal(signal_type: Any, signal_value: Any) -> tuple[str, str]:
    """Normalised (type, value); ValueError naming the problem."""
    t = str(signal_type or "").strip().lower()
    if t not in SIGNAL_TYPES:
        raise ValueError(f"unknown signal type {clean_text(t) or '(empty)'!r} "
                         f"(expected one of {', '.join(SIGNAL_TYPES)})")
    v = str(signal_value or "").strip().lower()
    if not v or not set(v) <= _HEX:
        raise ValueError(f"{t} value is not hex")
    if len(v) != HEX_LENGTH[t]:
        raise ValueError(f"{t} value has {len(v)} hex digits, expected {HEX_LENGTH[t]}")
    return t, v


def _quality(value: Any) -> int | None:
    if value in (None, ""):
        return None
    q = int(str(value).strip())
    if not 0 <= q <= 100:
        raise ValueError("quality must be 0..100")
    return q


def _from_fields(d: dict[str, Any]) -> Signal:
    t, v = check_signal(d.get("signal_type"), d.get("signal_value"))
    try:
        q = _quality(d.get("quality"))
    except ValueError:
        raise ValueError("quality must be a whole number 0..100") from None
    return Signal(t, v, q if t == "pdq" else None, clean_text(d.get("note")))


def parse(text: str) -> list[Signal]:
    """All signals of a list file's text, or ListError with every bad line."""
    out: list[Signal] = []
    errors: list[tuple[int, str]] = []
    header: list[str] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("{"):
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not valid JSON ({exc.msg})") from None
                if not isinstance(d, dict):
                    raise ValueError("a JSON line must be an object")
                out.append(_from_fields(d))
                continue
            if "," in line:
                cells = next(csv.reader([line]))
            else:
                cells = line.split()
            names = [c.strip().lower() for c in cells]
            if header is None and not out and "signal_type" in names \
                    and "signal_value" in names:
                header = names
                continue
            if header is not None:
                d = dict(zip(header, cells))
            else:
                if len(cells) < 2:
                    raise ValueError("expected signal_type,signal_value")
                d = {"signal_type": cells[0], "signal_value": cells[1]}
            out.append(_from_fields(d))
        except ValueError as exc:
            errors.append((n, str(exc)))
        except csv.Error as exc:
            errors.append((n, f"bad CSV ({exc})"))
    if errors:
        raise ListError(errors)
    return out


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["signal_type", "signal_value", "quality", "note"])
    n = 0
    for r in rows:
        w.writerow([r["signal_type"], r["signal_value"],
                    "" if r.get("quality") is None else r["quality"], r.get("note") or ""])
        n += 1
    return n


def write_jsonl(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    n = 0
    for r in rows:
        d = {"signal_type": r["signal_type"], "signal_value": r["signal_value"]}
        if r.get("quality") is not None:
            d["quality"] = r["quality"]
        if r.get("note"):
            d["note"] = r["note"]
        out.write(json.dumps(d, sort_keys=True) + "\n")
        n += 1
    return n


def render(rows: Iterable[dict[str, Any]], fmt: str) -> str:
    buf = io.StringIO()
    (write_jsonl if fmt == "jsonl" else write_csv)(rows, buf)
    return buf.getvalue()
