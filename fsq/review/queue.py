"""The review queue: incidents by review state, sortable, filterable, paginated.

Speed: every listing is one indexed query with LIMIT/OFFSET (migration 3 adds indexes on
``(review_state, created_at)``, ``(review_state, review_score)`` and ``created_at``), so a queue
of 10,000 incidents opens as fast as one of 10 (tests/test_review_queue.py measures it and
checks the query plans). ``review_score`` is a cached copy of the verdict's best margin over its
threshold, filled in lazily by ``refresh_scores`` for incidents that do not have one yet.

Nothing here decrypts anything or reads Lemmy: only the state database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from fsq.errors import UsageError

#: The reviewer's decisions, as stored in ``incidents.review_state`` (migration 3).
REVIEW_STATES = ("needs_review", "escalated", "to_report", "reported", "kept",
                 "false_positive", "cleared")
#: Queue tabs, in the order shown: work first.
TABS = REVIEW_STATES + ("all",)
TAB_LABELS = {"needs_review": "Needs review", "escalated": "Escalated",
              "to_report": "To report", "reported": "Reported", "kept": "Kept (not CSAM)",
              "false_positive": "False positive", "cleared": "Cleared", "all": "All"}
#: Lifecycle states with nothing left to review (``incidents.state``).
FINAL_STATES = ("released", "purged", "purging")
#: Tabs that hide incidents whose evidence is gone or given back.
_OPEN_TABS = ("needs_review", "escalated", "to_report", "kept")
SORTS = {"date": "created_at", "score": "review_score"}
ORIGINS = {"scan": "scan", "upload": "serve"}
MAX_PER_PAGE = 200

_COLUMNS = ("id, sha256, md5, state, review_state, review_score, review_uploader, origin, "
            "media_type, size, width, height, created_at, quarantined_at, reported_at, "
            "reviewed_at, reviewed_by")


@dataclass(frozen=True)
class QueueQuery:
    """One validated queue request (the HTTP layer builds it from query parameters)."""
    tab: str = "needs_review"
    sort: str = "date"
    order: str = "desc"
    origin: str | None = None
    uploader: str | None = None
    media_type: str | None = None
    page: int = 1
    per_page: int = 50

    @classmethod
    def parse(cls, params: dict[str, Any]) -> "QueueQuery":
        def one(name: str) -> str | None:
            v = params.get(name)
            v = v.strip() if isinstance(v, str) else v
            return v or None

        tab = one("state") or "needs_review"
        sort = one("sort") or "date"
        order = one("order") or "desc"
        origin = one("origin")
        if tab not in TABS:
            raise UsageError(f"unknown queue state {tab!r}; one of {', '.join(TABS)}")
        if sort not in SORTS:
            raise UsageError("sort must be date or score")
        if order not in ("asc", "desc"):
            raise UsageError("order must be asc or desc")
        if origin is not None and origin not in ORIGINS:
            raise UsageError("origin must be scan or upload")
        try:
            page = int(one("page") or 1)
            per_page = int(one("per_page") or 50)
        except (TypeError, ValueError):
            raise UsageError("page and per_page must be whole numbers") from None
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
            raise UsageError(f"page must be >= 1 and per_page 1..{MAX_PER_PAGE}")
        return cls(tab, sort, order, origin, one("uploader"), one("media_type"), page, per_page)

    def params(self, **changes: Any) -> dict[str, str]:
        """Query parameters reproducing this query (for links), with ``changes`` applied."""
        d = {"state": self.tab, "sort": self.sort, "order": self.order,
             "origin": self.origin, "uploader": self.uploader, "media_type": self.media_type,
             "page": self.page, "per_page": self.per_page}
        d.update(changes)
        return {k: str(v) for k, v in d.items() if v is not None}


def _where(q: QueueQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if q.tab != "all":
        clauses.append("review_state = ?")
        args.append(q.tab)
    if q.tab in _OPEN_TABS:
        clauses.append(f"state NOT IN ({','.join('?' * len(FINAL_STATES))})")
        args.extend(FINAL_STATES)
    if q.origin:
        clauses.append("origin = ?")
        args.append(ORIGINS[q.origin])
    if q.uploader:
        clauses.append("review_uploader = ?")
        args.append(q.uploader)
    if q.media_type:
        clauses.append("media_type = ?")
        args.append(q.media_type)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def queue_sql(q: QueueQuery) -> tuple[str, list[Any]]:
    """The listing query (exposed so a test can check its plan uses an index)."""
    where, args = _where(q)
    col = SORTS[q.sort]
    direction = "DESC" if q.order == "desc" else "ASC"
    sql = (f"SELECT {_COLUMNS} FROM incidents{where} ORDER BY {col} {direction}, "
           f"id {direction} LIMIT ? OFFSET ?")
    # one row more than a page tells whether there is a next page without counting
    return sql, [*args, q.per_page + 1, (q.page - 1) * q.per_page]


def refresh_scores(conn: sqlite3.Connection) -> int:
    """Fill ``review_score`` for incidents that have a verdict but no cached score yet.

    The score is the best (adjusted - threshold) margin among the fired concepts, 0 when the
    verdict fired none (e.g. a hash-list match). Unparseable verdict details score 0 too."""
    cur = conn.execute(
        "UPDATE incidents SET review_score = COALESCE((SELECT MAX("
        "json_extract(f.value, '$.adjusted') - json_extract(f.value, '$.threshold')) "
        "FROM verdicts v, json_each(v.details, '$.fired') f "
        "WHERE v.id = incidents.verdict_id AND json_valid(v.details) "
        "AND json_type(v.details, '$.fired') = 'array'), 0.0) "
        "WHERE review_score IS NULL AND verdict_id IS NOT NULL")
    return cur.rowcount


#: Tab counts stop at this many (shown as "1000+"), so counting stays cheap at any size.
COUNT_CAP = 1000
#: Media types offered by the filter (what fsq's decoder recognises), a fixed list so the
#: queue never scans the table to build it.
MEDIA_TYPES = ("image/jpeg", "image/png", "image/apng", "image/gif", "image/webp",
               "image/avif", "image/heic", "image/jxl", "image/bmp", "image/tiff",
               "video/mp4", "video/webm")


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Incidents per tab, each counted through an index and capped at ``COUNT_CAP + 1`` (the
    open tabs exclude released and purged incidents)."""
    out = {}
    for t in TABS:
        where, args = _where(QueueQuery(tab=t))
        out[t] = conn.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM incidents{where} "
                              "LIMIT ?)", [*args, COUNT_CAP + 1]).fetchone()[0]
    return out


def list_queue(conn: sqlite3.Connection, q: QueueQuery) -> dict[str, Any]:
    refresh_scores(conn)
    sql, args = queue_sql(q)
    rows = [dict(r) for r in conn.execute(sql, args)]
    has_next = len(rows) > q.per_page
    rows = rows[:q.per_page]
    for r in rows:
        r["origin"] = "upload" if r["origin"] == "serve" else r["origin"]
    return {"query": q.params(), "tab": q.tab, "tabs": [{"name": t, "label": TAB_LABELS[t]}
                                                          for t in TABS],
            "counts": counts(conn), "incidents": rows, "page": q.page,
            "per_page": q.per_page, "has_next": has_next, "has_prev": q.page > 1,
            "count_cap": COUNT_CAP, "media_types": list(MEDIA_TYPES)}


def neighbours(conn: sqlite3.Connection, row: sqlite3.Row, tab: str = "needs_review"
               ) -> dict[str, int | None]:
    """The previous and next incident around ``row`` in ``tab`` (newest first), for j/k."""
    if tab not in TABS:
        tab = "needs_review"
    where, args = _where(QueueQuery(tab=tab))
    joiner = " AND " if where else " WHERE "
    key = [row["created_at"], row["created_at"], row["id"]]
    nxt = conn.execute(f"SELECT id FROM incidents{where}{joiner}(created_at < ? OR "
                       "(created_at = ? AND id < ?)) ORDER BY created_at DESC, id DESC LIMIT 1",
                       [*args, *key]).fetchone()
    prv = conn.execute(f"SELECT id FROM incidents{where}{joiner}(created_at > ? OR "
                       "(created_at = ? AND id > ?)) ORDER BY created_at ASC, id ASC LIMIT 1",
                       [*args, *key]).fetchone()
    return {"next": nxt[0] if nxt else None, "prev": prv[0] if prv else None}
