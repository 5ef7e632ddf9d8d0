"""Lemmy database lookups for moderation actions: the target rows and what an action destroys.

Read-only, over ``LemmyDB`` (same schema detection, same column picking; both 0.19 and 1.0
schemas: see fsq.lemmy.lemmy_db). Data is only ever passed as query parameters.

* ``find_person`` - a person by id, by name (``name`` or ``name@domain``) or by actor URL;
* ``get_post`` / ``get_comment`` - the row with its image-bearing columns;
* ``person_upload_aliases`` - every ``local_image`` (0.19.0-0.19.3: ``image_upload``) alias of a
  person: 0.19 links it through ``local_user.person_id``, 1.0 through ``person_id`` (which 1.0
  also sets on thumbnails made for the person's link posts);
* ``person_post_images`` - ``url`` and ``thumbnail_url`` of the person's posts (a person purge
  purges those images too, and 0.19 records thumbnails without an uploader);
* ``person_logins`` - login IPs and user agents (``login_token``; the token is never selected);
* ``reports_for`` - the report rows about a post or comment.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fsq.errors import NotFound, UsageError
from fsq.lemmy.lemmy_db import LemmyDB, Login, Person, _iso

LIMIT = 10_000


def _sql():
    from psycopg import sql
    return sql


def _person_select(db: LemmyDB, where: Any, args: list[Any]) -> list[Person]:
    sql = _sql()
    q = (sql.SQL("SELECT ") + sql.SQL(", ").join(db._person_cols("p", "i"))
         + sql.SQL(" FROM person p LEFT JOIN instance i ON i.id = p.instance_id WHERE ")
         + where + sql.SQL(" ORDER BY p.id LIMIT 20"))
    return [Person(*r) for r in db._q(q, args)]


def find_person(db: LemmyDB, ref: str | int) -> Person:
    """A person by id ("12"), name ("bob" local first, "bob@host"), or actor URL."""
    sql = _sql()
    text = str(ref).strip()
    if not text:
        raise UsageError("which person? give an id, a name or an actor URL")
    actor = db._col("p", "person", "ap_id", "actor_id")
    if text.isdigit():
        found = _person_select(db, sql.SQL("p.id = %s"), [int(text)])
    elif text.startswith(("http://", "https://")):
        found = _person_select(db, actor + sql.SQL(" = %s"), [text.rstrip("/")])
    else:
        name, _, domain = text.lstrip("@").partition("@")
        if domain:
            found = _person_select(db, sql.SQL("p.name = %s AND i.domain = %s"),
                                   [name, domain.lower()])
        else:
            found = _person_select(db, sql.SQL("p.name = %s"), [name])
            local = [p for p in found if p.local]
            if len(found) > 1 and len(local) == 1:
                found = local
    if not found:
        raise NotFound(f"no Lemmy person {text!r} in the Lemmy database")
    if len(found) > 1:
        names = ", ".join(f"{p.id} ({p.name}@{p.instance_domain})" for p in found[:5])
        raise UsageError(f"person {text!r} is ambiguous: {names}; give the id or name@domain")
    return found[0]


def _row(db: LemmyDB, table: str, cols: dict[str, tuple[str, ...]], row_id: int
         ) -> dict[str, Any] | None:
    sql = _sql()
    names = list(cols)
    sel = [db._col("t", table, *cols[n]) for n in names]
    q = (sql.SQL("SELECT ") + sql.SQL(", ").join(sel)
         + sql.SQL(" FROM {} t WHERE t.id = %s").format(sql.Identifier(table)))
    r = db._q(q, [row_id])
    if not r:
        return None
    out = dict(zip(names, r[0]))
    for k, v in out.items():
        if hasattr(v, "isoformat"):
            out[k] = _iso(v)
    return out


def get_post(db: LemmyDB, post_id: int) -> dict[str, Any]:
    row = _row(db, "post", {
        "id": ("id",), "name": ("name",), "url": ("url",), "thumbnail_url": ("thumbnail_url",),
        "body": ("body",), "creator_id": ("creator_id",), "community_id": ("community_id",),
        "ap_id": ("ap_id",), "local": ("local",), "removed": ("removed",),
        "deleted": ("deleted",), "published": ("published_at", "published")}, post_id)
    if row is None:
        raise NotFound(f"no Lemmy post {post_id} in the Lemmy database")
    return row


def get_comment(db: LemmyDB, comment_id: int) -> dict[str, Any]:
    row = _row(db, "comment", {
        "id": ("id",), "content": ("content",), "creator_id": ("creator_id",),
        "post_id": ("post_id",), "ap_id": ("ap_id",), "local": ("local",),
        "removed": ("removed",), "deleted": ("deleted",),
        "published": ("published_at", "published")}, comment_id)
    if row is None:
        raise NotFound(f"no Lemmy comment {comment_id} in the Lemmy database")
    return row


def person_by_id(db: LemmyDB, person_id: int | None) -> Person | None:
    if person_id is None:
        return None
    found = _person_select(db, _sql().SQL("p.id = %s"), [int(person_id)])
    return found[0] if found else None


def person_upload_aliases(db: LemmyDB, person_id: int) -> list[tuple[str, str | None]]:
    """(alias, published) of every upload record naming the person, oldest first."""
    sql = _sql()
    t = db.schema.image_table
    if t is None:
        return []
    pub = db._col("li", t, "published_at", "published")
    if db.schema.has(t, "person_id"):
        q = sql.SQL("SELECT li.pictrs_alias, {} FROM {} li WHERE li.person_id = %s "
                    "ORDER BY 2, 1 LIMIT %s").format(pub, sql.Identifier(t))
    else:
        q = sql.SQL("SELECT li.pictrs_alias, {} FROM {} li JOIN local_user lu "
                    "ON lu.id = li.local_user_id WHERE lu.person_id = %s "
                    "ORDER BY 2, 1 LIMIT %s").format(pub, sql.Identifier(t))
    return [(r[0], _iso(r[1])) for r in db._q(q, [person_id, LIMIT])]


def person_post_images(db: LemmyDB, person_id: int) -> list[dict[str, Any]]:
    """id, url, thumbnail_url of the person's posts that have either."""
    sql = _sql()
    q = sql.SQL("SELECT t.id, {}, {} FROM post t WHERE t.creator_id = %s "
                "ORDER BY t.id LIMIT %s").format(db._col("t", "post", "url"),
                                                 db._col("t", "post", "thumbnail_url"))
    return [{"id": r[0], "url": r[1], "thumbnail_url": r[2]}
            for r in db._q(q, [person_id, LIMIT]) if r[1] or r[2]]


def person_logins(db: LemmyDB, person_id: int) -> tuple[int | None, str | None, list[Login]]:
    """(local_user id, email, logins) of a local person; (None, None, []) for remote ones."""
    sql = _sql()
    if not db.schema.has("local_user"):
        return None, None, []
    r = db._q(sql.SQL("SELECT lu.id, {} FROM local_user lu WHERE lu.person_id = %s").format(
        db._col("lu", "local_user", "email")), [person_id])
    if not r:
        return None, None, []
    uid, email = r[0]
    logins: list[Login] = []
    if db.schema.has("login_token", "user_id"):
        for ip, ua, when in db._q(
                sql.SQL("SELECT {}, {}, {} FROM login_token lt WHERE lt.user_id = %s "
                        "ORDER BY 3, 1").format(
                    db._col("lt", "login_token", "ip"),
                    db._col("lt", "login_token", "user_agent"),
                    db._col("lt", "login_token", "published_at", "published")), [uid]):
            logins.append(Login(ip, ua, _iso(when)))
    return uid, email, logins


def reports_for(db: LemmyDB, kind: str, row_id: int) -> list[dict[str, Any]]:
    """The post_report / comment_report rows about one post or comment, with the reporter."""
    sql = _sql()
    table, fk = {"post": ("post_report", "post_id"),
                 "comment": ("comment_report", "comment_id")}[kind]
    if not db.schema.has(table, fk):
        return []
    cols = ["reason", "resolved", "original_post_url", "original_post_name",
            "original_post_body", "original_comment_text", "published_at", "published"]
    have = [c for c in cols if db.schema.has(table, c)]
    q = (sql.SQL("SELECT t.id, t.creator_id")
         + sql.SQL("").join(sql.SQL(", t.{}").format(sql.Identifier(c)) for c in have)
         + sql.SQL(" FROM {} t WHERE t.{} = %s ORDER BY t.id LIMIT 500").format(
             sql.Identifier(table), sql.Identifier(fk)))
    out = []
    for r in db._q(q, [row_id]):
        d = {"id": r[0], "reporter": asdict(p) if (p := person_by_id(db, r[1])) else None}
        for c, v in zip(have, r[2:]):
            d["published" if c.startswith("published") else c] = _iso(v) \
                if hasattr(v, "isoformat") else v
        out.append(d)
    return out


def find_community(db: LemmyDB, ref: str) -> dict[str, Any]:
    """A community by id or name (``pics`` local first, ``pics@host``)."""
    sql = _sql()
    text = ref.strip().lstrip("!")
    base = sql.SQL("SELECT c.id, c.name, {}, {} FROM community c LEFT JOIN instance i "
                   "ON i.id = c.instance_id WHERE ").format(
        db._col("c", "community", "local"), db._col("i", "instance", "domain"))
    if text.isdigit():
        rows = db._q(base + sql.SQL("c.id = %s"), [int(text)])
    else:
        name, _, domain = text.partition("@")
        if domain:
            rows = db._q(base + sql.SQL("c.name = %s AND i.domain = %s"), [name, domain.lower()])
        else:
            rows = db._q(base + sql.SQL("c.name = %s"), [name])
            local = [r for r in rows if r[2]]
            if len(rows) > 1 and len(local) == 1:
                rows = local
    if not rows:
        raise NotFound(f"no Lemmy community {ref!r} in the Lemmy database")
    if len(rows) > 1:
        raise UsageError(f"community {ref!r} is ambiguous; give its id or name@domain")
    return {"id": rows[0][0], "name": rows[0][1], "local": rows[0][2], "domain": rows[0][3]}
