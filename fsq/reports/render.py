"""Render incident reports: one self-contained, script-free HTML file per incident.

Safety (invariant 4): text from Lemmy is hostile until proven otherwise.

* Jinja2 autoescaping is on for every template, with ``StrictUndefined`` so a template typo
  fails loudly instead of printing nothing.
* Before the template sees the model, ``sanitize_tree`` rewrites every string: invalid UTF-8 and
  lone surrogates become U+FFFD, bidirectional controls (U+202A-202E, U+2066-2069, LRM/RLM/ALM)
  and other control characters are replaced by a visible ``[U+XXXX]`` marker, and very long
  strings are cut with a marker saying how much was cut.
* Links are printed as text, never as ``href``/``src``; the page carries a Content-Security-
  Policy (``default-src 'none'; style-src 'unsafe-inline'``) so even a template mistake cannot
  load or send anything. No image bytes are ever embedded or linked.

Output: ``<reports_dir>/<incident id>.html``, written atomically, file 0600 in a 0700 directory;
each generation is an audit event ``report.generated`` with the HTML's SHA-256. Earlier
versions are kept as ``<id>.<timestamp>.html``, and a report with less linkage than the current
one is written beside it instead of over it (fsq.reports.versions).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

import fsq
from fsq.errors import ConfigError, UsageError
from fsq.ledger import audit
from fsq.lemmy.linkage import Linkage, link_incident
from fsq.reports import versions
from fsq.reports.model import build_model, incident_keys
from fsq.secrets import mask_secrets, redact
from fsq.timeutil import parse_iso

TEMPLATE = "incident.html"
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
MAX_TEXT = 1000

# Bidi embedding/override/isolate controls and the implicit marks; C0/C1 controls but TAB/LF/CR.
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_NEUTRALISE = re.compile("[" + _BIDI + "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(value: str | bytes, limit: int | None = MAX_TEXT) -> str:
    """Make one untrusted string safe to show (escaping itself is left to autoescape)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. surrogateescape'd file names
        value = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    cut = 0
    if limit is not None and len(value) > limit:
        cut = len(value) - limit
        value = value[:limit]
    value = _NEUTRALISE.sub(lambda m: f"[U+{ord(m.group(0)):04X}]", value)
    if cut:
        value += f" … [truncated: {cut} more characters]"
    return value


def sanitize_tree(obj: Any, limit: int | None = MAX_TEXT) -> Any:
    """Apply ``clean_text`` to every string (and dict key) in a JSON-like tree."""
    if isinstance(obj, (str, bytes, bytearray)):
        return clean_text(obj, limit)
    if isinstance(obj, dict):
        return {(clean_text(k, 200) if isinstance(k, str) else k): sanitize_tree(v, limit)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize_tree(v, limit) for v in obj]
    return obj


def shipped_templates_dir() -> Path:
    """templates/ as installed (data package fsq.templates) or in a checkout."""
    try:
        spec = importlib.util.find_spec("fsq.templates")
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / TEMPLATE).is_file():
            return Path(loc)
    checkout = Path(fsq.__file__).resolve().parent.parent / "templates"
    if (checkout / TEMPLATE).is_file():
        return checkout
    raise ConfigError("fsq's report templates are missing from this installation; reinstall "
                      "fsq")


def _yesno(v: Any) -> str:
    return "unknown" if v is None else ("yes" if v else "no")


def _size(v: Any) -> str:
    if not isinstance(v, int):
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v} {unit}" if unit == "bytes" else f"{v:.1f} {unit}"
        v = v / 1024  # type: ignore[assignment]
    return str(v)


def _num(v: Any, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _dt(v: Any) -> str:
    """ISO 8601 -> '2026-03-01 10:05:00 UTC'; anything unparseable is shown as it is."""
    if not v:
        return "–"
    try:
        return parse_iso(str(v)).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(v)


_MARKER = re.compile(r" … \[truncated: (\d+) more characters\]$")


def _clip(v: Any, n: int) -> Any:
    """Shorter cut for table cells, keeping the count of characters cut (sanitize_tree may
    already have cut at MAX_TEXT)."""
    if not isinstance(v, str):
        return v
    m = _MARKER.search(v)
    body, cut = (v[:m.start()], int(m.group(1))) if m else (v, 0)
    if len(body) <= n:
        return v
    return body[:n] + f" … [truncated: {cut + len(body) - n} more characters]"


def make_env(templates_dir: str | os.PathLike | None = None) -> jinja2.Environment:
    """The Jinja2 environment (cached per template directory: compiling the template costs
    more than rendering it; ``auto_reload`` still picks up edited templates)."""
    user = None
    if templates_dir:
        p = Path(templates_dir).expanduser()
        if not p.is_dir():
            raise ConfigError(f"FSQ_TEMPLATES_DIR {p} is not a directory; create it or unset "
                              "the setting")
        user = str(p.resolve())
    return _env(user, str(shipped_templates_dir()))


@functools.lru_cache(maxsize=8)
def _env(user: str | None, shipped: str) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if user:
        loaders.append(jinja2.FileSystemLoader(user))
    loaders.append(jinja2.FileSystemLoader(shipped))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(yesno=_yesno, size=_size, num=_num, dt=_dt, clip=_clip)
    env.globals["csp"] = CSP
    return env


def render_html(model: dict[str, Any], templates_dir: str | None = None) -> str:
    env = make_env(templates_dir)
    try:
        return env.get_template(TEMPLATE).render(r=sanitize_tree(model))
    except jinja2.TemplateError as exc:
        where = f" (FSQ_TEMPLATES_DIR={templates_dir})" if templates_dir else ""
        raise UsageError(f"report template error{where}: {exc.__class__.__name__}: "
                         f"{clean_text(str(exc), 300)}") from None


@dataclass
class ReportResult:
    path: Path
    sha256: str
    model: dict[str, Any]
    linkage: Linkage | None
    placement: versions.Placement | None = None


def _write_private(out_dir: Path, name: str, data: bytes) -> tuple[Path, str]:
    """Write to a temp file (0600) in ``out_dir`` (0700); return (temp path, final path)."""
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(out_dir, 0o700)
    except OSError as exc:
        raise UsageError(f"cannot prepare report directory {out_dir}: {exc.strerror}; fix its "
                         "ownership or set FSQ_REPORTS_DIR") from None
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp), str(out_dir / name)


def generate_report(conn: sqlite3.Connection, incident: str | int, settings: Any, *,
                    out_dir: str | os.PathLike | None = None,
                    linkage: Linkage | None = None, link: bool = True) -> ReportResult:
    """Build, render and write one incident report; audit it. Returns path and model."""
    if linkage is None and link:
        row, keys = incident_keys(conn, incident)
        linkage = link_incident(conn, row["sha256"], keys, settings)
    # Reports are handed to NCMEC or the police: every string of the model goes through the
    # one masking function before rendering, and the page once more afterwards.
    model = redact(build_model(conn, incident, settings, linkage=linkage, link=False))
    html = mask_secrets(render_html(model, getattr(settings, "templates_dir", None)))
    data = html.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    iid = model["incident"]["id"]
    directory = Path(out_dir if out_dir is not None else settings.reports_dir)
    lk = model["linkage"]
    # <id>.html is the newest report with the most linkage; see fsq.reports.versions.
    placed = versions.place(conn, directory, iid, list(lk.get("sources_used", [])))
    tmp, final = _write_private(directory, placed.name, data)
    try:
        audit.append(conn, "report.generated", f"incident:{iid}", {
            "file": placed.name, "sha256": digest,
            "linkage_sources": list(lk.get("sources_used", [])),
            "linkage_unavailable": [s["name"] for s in lk.get("missing", [])
                                    if s["status"] == "unavailable"],
            **({"previous_kept_as": placed.superseded_as} if placed.superseded_as else {}),
            **({"beside_current": f"{iid}.html", "linkage_lost": placed.lost_sources}
               if not placed.replaces_current else {}),
        })
        versions.keep_previous(directory, placed)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return ReportResult(Path(final), digest, model, linkage, placed)


def render_incident(conn: sqlite3.Connection, incident_id: str | int, settings: Any) -> Path:
    """Write ``<reports_dir>/<incident_id>.html`` and return its path."""
    return generate_report(conn, incident_id, settings).path
