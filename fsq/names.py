"""Object names from untrusted storage: what fsq can handle, how it stores and shows them.

A store's listing is attacker-controlled (anyone who can upload, or who has write access to
the store, picks names). Three rules keep one name from stopping a pass or fooling a person:

* **Keys stay exact.** A local name that is not valid UTF-8 arrives (``os.fsdecode``, the
  ``surrogateescape`` handler) as a ``str`` with lone surrogates U+DC80..U+DCFF standing for
  the raw bytes; ``key_bytes`` gives them back. fsq never "fixes" a name: a repaired name
  would be a different file.
* **The state database stores them reversibly** (``db_key`` / ``key_from_db``). SQLite (and
  JSON) cannot hold lone surrogates, so a key holding one - or holding a backslash, the escape
  character - is written with backslash escapes: ``\\`` for a backslash, ``\\xHH`` for a raw
  byte, ``\\uHHHH`` for any other lone surrogate. Every other key is stored unchanged, so keys
  written before this existed keep their meaning. Escaped keys are exactly the keys
  ``key_problem`` refuses, so no read or remove ever works on an escaped form.
* **People see them escaped** (``display_key``): control characters, escape sequences,
  newlines, bidirectional overrides and other non-printable characters are shown as Python-
  style escapes, so a name cannot rewrite the terminal, forge an output line or hide its end.
"""

from __future__ import annotations

_SURR_LO, _SURR_HI = 0xD800, 0xDFFF
_ESC_LO, _ESC_HI = 0xDC80, 0xDCFF  # surrogateescape's range: one raw byte each


def _is_surrogate(c: str) -> bool:
    return _SURR_LO <= ord(c) <= _SURR_HI


def key_bytes(key: str) -> bytes:
    """The raw bytes a key stands for (inverse of ``os.fsdecode`` on POSIX)."""
    try:
        return key.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate outside U+DC80..U+DCFF: not from fsdecode
        return key.encode("utf-8", "surrogatepass")


def key_problem(key: str) -> str | None:
    """Why fsq cannot represent or safely act on a listed key, or None if it can.

    The answer is recorded as the object's skip reason; it names the bytes for keys that are
    not text, because the key itself cannot be shown faithfully."""
    if any(_is_surrogate(c) for c in key):
        return f"name is not valid UTF-8 (bytes {key_bytes(key)!r}); never read"
    if "\x00" in key:
        return "name contains a NUL byte; never read"
    if "\\" in key:
        return "name contains a backslash (not a POSIX path fsq can act on safely); never read"
    if not key or key.startswith("/") or any(s in ("", ".", "..") for s in key.split("/")):
        return "key is not a safe relative path (empty, '.' or '..' segment); never read"
    return None


def db_key(key: str) -> str:
    """The form a key is stored in (state DB, ``--json``): unchanged unless it holds a lone
    surrogate or a backslash, then backslash-escaped (reversible with ``key_from_db``)."""
    if "\\" not in key and not any(_is_surrogate(c) for c in key):
        return key
    out = []
    for c in key:
        o = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif _ESC_LO <= o <= _ESC_HI:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif _SURR_LO <= o <= _SURR_HI:
            out.append(f"\\u{o:04x}")
        else:
            out.append(c)
    return "".join(out)


def key_from_db(stored: str) -> str:
    """Inverse of ``db_key``. A stored key without a backslash is returned as it is."""
    if "\\" not in stored:
        return stored
    out, i, n = [], 0, len(stored)
    while i < n:
        c = stored[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = stored[i + 1]
        if nxt == "\\":
            out.append("\\")
            i += 2
        elif nxt == "x" and i + 4 <= n:
            out.append(chr(0xDC00 + int(stored[i + 2:i + 4], 16)))
            i += 4
        elif nxt == "u" and i + 6 <= n:
            out.append(chr(int(stored[i + 2:i + 6], 16)))
            i += 6
        else:  # not something db_key writes; keep it literally
            out.append(c)
            i += 1
    return "".join(out)


def display_key(key: str) -> str:
    """A key made safe for a terminal or a log line: printable characters as they are
    (a backslash doubled), everything else escaped (\\n, \\t, \\x1b, \\u202e, raw bytes of a
    non-UTF-8 name as \\xHH). Pass the raw key; for a stored one use ``show_stored_key``."""
    out = []
    for c in key:
        o = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif c == " " or (c.isprintable() and not _is_surrogate(c)):
            out.append(c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif _ESC_LO <= o <= _ESC_HI:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o <= 0xFF:
            out.append(f"\\x{o:02x}")
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out)


def show_stored_key(stored: str) -> str:
    """What every human-readable printer shows for a key read from the state database."""
    return display_key(key_from_db(stored))


__all__ = ["db_key", "display_key", "key_bytes", "key_from_db", "key_problem",
           "show_stored_key"]
