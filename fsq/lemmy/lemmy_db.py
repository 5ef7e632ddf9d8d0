"""Read-only reader of a Lemmy PostgreSQL database: who uploaded an image and what uses it.

Supported schemas, detected from ``information_schema`` (never from a version string):

* ``0.18``  - no image table; only URLs inside content can be searched;
* ``0.19.0`` - ``image_upload(local_user_id NOT NULL, pictrs_alias, published)`` (0.19.0-0.19.3);
* ``0.19.4`` - ``local_image(pictrs_alias, local_user_id NULL, published)``; NULL = a thumbnail
  pict-rs made for the server (0.19.4-0.19.x);
* ``1.0``   - ``local_image(pictrs_alias, person_id NULL, thumbnail_for_post_id NULL,
  published_at)``, plus renames elsewhere (``published`` -> ``published_at``, ``actor_id`` ->
  ``ap_id``, community ``description`` -> ``sidebar``/``summary``).

Column names are picked from what the database has, per table, so a partial upgrade or a fork
still works; they come only from the fixed lists below. Data is only ever passed as query
parameters.

Searching: every column that can hold an image URL or Markdown is pre-filtered with
``LIKE ANY(patterns)`` (cheap, over-matches) and each candidate row is then confirmed by parsing
its URLs (fsq.lemmy.urls), so a row counts only if it really references the alias (on this
instance) or the remote URL that pict-rs proxied. Login tokens are read for IPs and user agents
only; the token itself is never selected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from fsq.errors import ExternalError
from fsq.lemmy import urls
from fsq.lemmy.pg import connect_readonly, scrub, text

SETTING = "FSQ_LEMMY_DATABASE_URL"
ROW_LIMIT = 500          # per kind of row; the report says when it was reached
EXCERPT = 240            # characters of context around a match

_TABLES = ("instance", "person", "local_user", "community", "post", "comment", "private_message",
           "site", "login_token", "custom_emoji", "post_report", "comment_report", "local_image",
           "image_upload", "instance_actions")


@dataclass
class Person:
    id: int | None
    name: str | None
    display_name: str | None
    actor_id: str | None
    local: bool | None
    instance_domain: str | None
    banned: bool | None = None
    deleted: bool | None = None


@dataclass
class Community:
    id: int | None
    name: str | None
    title: str | None
    actor_id: str | None
    local: bool | None
    instance_domain: str | None


@dataclass
class Hit:
    """One Lemmy row that references the image."""

    kind: str                 # post | comment | private_message | person | community | site |
                              # custom_emoji | post_report | comment_report
    id: int
    fields: list[str]         # columns that reference it, e.g. ["thumbnail_url", "body"]
    title: str | None
    excerpt: str | None
    ap_id: str | None
    creator: Person | None    # author; for person rows the person; for reports the reporter
    community: Community | None
    published: str | None
    removed: bool | None
    deleted: bool | None
    aliases: list[str] = field(default_factory=list)
    proxied_urls: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Login:
    ip: str | None
    user_agent: str | None
    published: str | None


@dataclass
class Upload:
    """A ``local_image``/``image_upload`` row: who uploaded an alias, when."""

    alias: str
    published: str | None
    table: str
    person: Person | None
    local_user_id: int | None
    email: str | None
    admin: bool | None
    thumbnail_for_post_id: int | None
    server_made: bool          # no uploader: a thumbnail Lemmy had pict-rs make
    logins: list[Login] = field(default_factory=list)
    # 1.0 records a server-made thumbnail under the *post's creator* (person_id) with
    # thumbnail_for_post_id set: that person posted the link, they did not upload the file.
    # Kept here, never as ``person`` (the uploader), so no report names them as uploader.
    link_poster: Person | None = None


@dataclass
class SchemaInfo:
    version: str               # 0.18 | 0.19.0 | 0.19.4 | 1.0
    image_table: str | None    # local_image | image_upload | None
    columns: dict[str, set[str]]

    def has(self, table: str, column: str | None = None) -> bool:
        cols = self.columns.get(table)
        return cols is not None and (column is None or column in cols)

    def pick(self, table: str, *names: str) -> str | None:
        for n in names:
            if self.has(table, n):
                return n
        return None


def detect_schema(columns: dict[str, set[str]]) -> SchemaInfo:
    """Decide the Lemmy schema version from table -> columns (pure function, table-tested)."""
    li = columns.get("local_image")
    if li is not None and "person_id" in li:
        return SchemaInfo("1.0", "local_image", columns)
    if li is not None and "local_user_id" in li:
        return SchemaInfo("0.19.4", "local_image", columns)
    if "image_upload" in columns:
        return SchemaInfo("0.19.0", "image_upload", columns)
    if "post" in columns and "person" in columns:
        person = columns["person"]
        return SchemaInfo("1.0" if "ap_id" in person and "actor_id" not in person else "0.18",
                          None, columns)
    raise ExternalError("Lemmy database: no Lemmy tables (post, person) found; is "
                        f"{SETTING} the Lemmy database, and may this role read it?")


def _iso(v: Any) -> str | None:
    if v is None:
        return None
    if hasattr(v, "isoformat"):
        if getattr(v, "tzinfo", None) is None:
            return v.isoformat() + "Z"
        return v.isoformat()
    return str(text(v))


def _excerpt(value: str, needles: Iterable[str]) -> str:
    pos = -1
    for n in needles:
        if n:
            pos = value.find(n)
            if pos >= 0:
                break
    if len(value) <= EXCERPT:
        return value
    start = max(0, pos - EXCERPT // 3) if pos >= 0 else 0
    out = value[start:start + EXCERPT]
    return ("…" if start > 0 else "") + out + ("…" if start + EXCERPT < len(value) else "")


@dataclass
class _Target:
    kind: str
    table: str
    search: tuple[str, ...]             # candidate columns holding URLs/Markdown
    title: tuple[str, ...] = ()
    creator_fk: str | None = None       # column pointing at person.id ("id" for person rows)
    community_fk: str | None = None
    text_cols: tuple[str, ...] = ()     # excerpt source, in order
    removed: bool = True
    deleted: bool = True
    extra: tuple[str, ...] = ()


_TARGETS = (
    _Target("post", "post", ("url", "thumbnail_url", "body", "embed_video_url"), ("name",),
            "creator_id", "community_id", ("body",), extra=("url",)),
    _Target("comment", "comment", ("content",), (), "creator_id", None, ("content",),
            extra=("post_id",)),
    _Target("private_message", "private_message", ("content",), (), "creator_id", None,
            ("content",), extra=("recipient_id",)),
    _Target("person", "person", ("avatar", "banner", "bio"), ("name",), "id", None, ("bio",),
            removed=False, extra=("banned",)),
    _Target("community", "community", ("icon", "banner", "description", "sidebar", "summary"),
            ("title", "name"), None, "id", ("summary", "sidebar", "description")),
    _Target("site", "site", ("icon", "banner", "sidebar", "description"), ("name",), None, None,
            ("sidebar", "description"), removed=False, deleted=False),
    _Target("custom_emoji", "custom_emoji", ("image_url",), ("shortcode",), None, None, (),
            removed=False, deleted=False, extra=("alt_text",)),
    _Target("post_report", "post_report", ("original_post_url", "original_post_body"),
            ("original_post_name",), "creator_id", None, ("original_post_body",),
            removed=False, deleted=False, extra=("post_id", "reason", "resolved")),
    _Target("comment_report", "comment_report", ("original_comment_text",), (), "creator_id",
            None, ("original_comment_text",), removed=False, deleted=False,
            extra=("comment_id", "reason", "resolved")),
)


class LemmyDB:
    """``with LemmyDB(url) as db: db.schema.version; db.uploads(aliases); db.references(...)``"""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = connect_readonly(url, "Lemmy database", SETTING)
        try:
            rows = self._q("SELECT table_name, column_name FROM information_schema.columns "
                           "WHERE table_schema = ANY(current_schemas(false)) "
                           "AND table_name = ANY(%s)", [list(_TABLES)])
            cols: dict[str, set[str]] = {}
            for t, c in rows:
                cols.setdefault(t, set()).add(c)
            self.schema = detect_schema(cols)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "LemmyDB":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    # -- plumbing ---------------------------------------------------------------------------

    def _q(self, query: Any, args: Any = None) -> list[tuple]:
        import psycopg

        try:
            with self.conn.cursor() as cur:
                cur.execute(query, args)
                rows = cur.fetchall()
            self.conn.rollback()
            return [tuple(text(v) for v in r) for r in rows]
        except psycopg.Error as exc:
            try:
                self.conn.rollback()
            except Exception:
                pass
            raise ExternalError(f"Lemmy database query failed: {scrub(str(exc), self.url)}; "
                                f"check the schema and that the {SETTING} role may read it") \
                from None

    def _col(self, alias: str, table: str, *names: str) -> Any:
        from psycopg import sql

        c = self.schema.pick(table, *names)
        return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) if c \
            else sql.SQL("NULL")

    def _person_cols(self, a: str, ia: str) -> list[Any]:
        from psycopg import sql

        return [sql.SQL("{}.id").format(sql.Identifier(a)),
                self._col(a, "person", "name"), self._col(a, "person", "display_name"),
                self._col(a, "person", "ap_id", "actor_id"), self._col(a, "person", "local"),
                self._col(ia, "instance", "domain"), self._banned(a),
                self._col(a, "person", "deleted")]

    def _banned(self, a: str) -> Any:
        """0.19: ``person.banned``. 1.0 moved bans to ``instance_actions`` (one row per person
        and instance, ``received_ban_at``/``ban_expires_at``): banned = an unexpired ban by the
        person's home instance or by this one (the instance of the local accounts)."""
        from psycopg import sql

        if self.schema.has("person", "banned") or not (
                self.schema.has("instance_actions", "received_ban_at")
                and self.schema.has("instance_actions", "person_id")):
            return self._col(a, "person", "banned")
        expires = (sql.SQL(" AND (ba.ban_expires_at IS NULL OR ba.ban_expires_at > now())")
                   if self.schema.has("instance_actions", "ban_expires_at") else sql.SQL(""))
        return sql.SQL(
            "EXISTS (SELECT 1 FROM instance_actions ba WHERE ba.person_id = {a}.id "
            "AND ba.received_ban_at IS NOT NULL{expires} AND (ba.instance_id = {a}.instance_id "
            "OR ba.instance_id IN (SELECT lp.instance_id FROM person lp WHERE lp.local)))"
        ).format(a=sql.Identifier(a), expires=expires)

    @staticmethod
    def _person(vals: tuple) -> Person | None:
        if vals[0] is None:
            return None
        return Person(*vals)

    def _community_cols(self, a: str, ia: str) -> list[Any]:
        from psycopg import sql

        return [sql.SQL("{}.id").format(sql.Identifier(a)),
                self._col(a, "community", "name"), self._col(a, "community", "title"),
                self._col(a, "community", "ap_id", "actor_id"),
                self._col(a, "community", "local"), self._col(ia, "instance", "domain")]

    @staticmethod
    def _community(vals: tuple) -> Community | None:
        if vals[0] is None:
            return None
        return Community(*vals)

    # -- facts ------------------------------------------------------------------------------

    def local_domain(self) -> str | None:
        """Domain of this instance, from its local people (or its site)."""
        if self.schema.has("person", "local") and self.schema.has("instance", "domain"):
            r = self._q("SELECT i.domain FROM person p JOIN instance i ON i.id = p.instance_id "
                        "WHERE p.local GROUP BY i.domain ORDER BY count(*) DESC LIMIT 1")
            if r:
                return r[0][0]
        return None

    def local_image_aliases(self) -> list[str]:
        """Every alias Lemmy recorded for local uploads and thumbnails (newest first)."""
        from psycopg import sql

        t = self.schema.image_table
        if t is None:
            return []
        pub = self.schema.pick(t, "published_at", "published")
        order = sql.SQL(" ORDER BY {} DESC").format(sql.Identifier(pub)) if pub else sql.SQL("")
        return [r[0] for r in self._q(
            sql.SQL("SELECT pictrs_alias FROM {}").format(sql.Identifier(t)) + order)]

    def uploads(self, aliases: Iterable[str]) -> list[Upload]:
        """Uploader rows for the aliases, with the uploader's login IPs and user agents."""
        from psycopg import sql

        aliases = list(dict.fromkeys(aliases))
        t = self.schema.image_table
        if t is None or not aliases:
            return []
        if self.schema.has(t, "person_id"):
            join = sql.SQL("LEFT JOIN person p ON p.id = li.person_id "
                           "LEFT JOIN local_user lu ON lu.person_id = p.id ")
        else:
            join = sql.SQL("LEFT JOIN local_user lu ON lu.id = li.local_user_id "
                           "LEFT JOIN person p ON p.id = lu.person_id ")
        q = sql.SQL("SELECT li.pictrs_alias, {pub}, {thumb}, lu.id, {email}, {admin}, {person} "
                    "FROM {t} li ").format(
            pub=self._col("li", t, "published_at", "published"),
            thumb=self._col("li", t, "thumbnail_for_post_id"),
            email=self._col("lu", "local_user", "email"),
            admin=self._col("lu", "local_user", "admin"),
            person=sql.SQL(", ").join(self._person_cols("p", "i")),
            t=sql.Identifier(t)) + join + sql.SQL(
            "LEFT JOIN instance i ON i.id = p.instance_id "
            "WHERE li.pictrs_alias = ANY(%s) ORDER BY li.pictrs_alias")
        out: list[Upload] = []
        for r in self._q(q, [aliases]):
            person = self._person(r[6:14])
            if r[2] is not None:  # 1.0: thumbnail_for_post_id set = the server made this file
                out.append(Upload(alias=r[0], published=_iso(r[1]), table=t, person=None,
                                  local_user_id=None, email=None, admin=None,
                                  thumbnail_for_post_id=r[2], server_made=True,
                                  link_poster=person))
                continue
            out.append(Upload(alias=r[0], published=_iso(r[1]), table=t, person=person,
                              local_user_id=r[3], email=r[4], admin=r[5],
                              thumbnail_for_post_id=r[2],
                              server_made=person is None and r[3] is None))
        users = sorted({u.local_user_id for u in out if u.local_user_id is not None})
        if users and self.schema.has("login_token", "user_id"):
            pub = self._col("lt", "login_token", "published_at", "published")
            logins: dict[int, list[Login]] = {}
            for uid, ip, ua, when in self._q(
                    sql.SQL("SELECT lt.user_id, {ip}, {ua}, {pub} FROM login_token lt "
                            "WHERE lt.user_id = ANY(%s) ORDER BY 4, 2").format(
                        ip=self._col("lt", "login_token", "ip"),
                        ua=self._col("lt", "login_token", "user_agent"), pub=pub), [users]):
                logins.setdefault(uid, []).append(Login(ip, ua, _iso(when)))
            for u in out:
                if u.local_user_id is not None:
                    u.logins = logins.get(u.local_user_id, [])
        return out

    def references(self, aliases: Iterable[str], proxied_urls: Iterable[str] = (),
                   instance_host: str | None = None,
                   post_ids: Iterable[int] = ()) -> tuple[list[Hit], list[str]]:
        """Rows referencing any alias (or proxied remote URL). Returns (hits, notes)."""
        aliases = list(dict.fromkeys(a for a in aliases if a))
        proxied = list(dict.fromkeys(u for u in proxied_urls if u))
        post_ids = sorted(set(post_ids))
        patterns: list[str] = []
        for a in aliases:
            patterns += urls.alias_like_patterns(a)
        for u in proxied:
            patterns += urls.proxy_like_patterns(u)
        hits: list[Hit] = []
        notes: list[str] = []
        if not patterns and not post_ids:
            return hits, notes
        for tg in _TARGETS:
            if not self.schema.has(tg.table):
                continue
            got, more = self._search(tg, patterns, set(aliases), proxied, instance_host,
                                     post_ids if tg.kind == "post" else [])
            hits += got
            if more:
                notes.append(f"more than {ROW_LIMIT} candidate {tg.table} rows; only the first "
                             f"{ROW_LIMIT} were examined")
        return hits, notes

    def _search(self, tg: _Target, patterns: list[str], aliases: set[str], proxied: list[str],
                host: str | None, ids: list[int]) -> tuple[list[Hit], bool]:
        from psycopg import sql

        search = [c for c in tg.search if self.schema.has(tg.table, c)]
        if not search:
            return [], False
        sel: list[Any] = [sql.SQL("t.id")]
        sel += [sql.SQL("t.{}").format(sql.Identifier(c)) for c in search]
        sel.append(self._col("t", tg.table, *tg.title) if tg.title else sql.SQL("NULL"))
        sel.append(self._col("t", tg.table, "ap_id", "actor_id"))
        sel.append(self._col("t", tg.table, "published_at", "published"))
        sel.append(self._col("t", tg.table, "removed") if tg.removed else sql.SQL("NULL"))
        sel.append(self._col("t", tg.table, "deleted") if tg.deleted else sql.SQL("NULL"))
        sel += [self._col("t", tg.table, c) for c in tg.extra]
        joins = sql.SQL("")
        n_person = n_comm = 0
        if tg.creator_fk:
            sel += self._person_cols("cr", "ci")
            n_person = 8
            joins += sql.SQL(" LEFT JOIN person cr ON cr.id = t.{} "
                             "LEFT JOIN instance ci ON ci.id = cr.instance_id").format(
                sql.Identifier(tg.creator_fk))
        comm_fk = tg.community_fk
        if tg.kind == "comment" and self.schema.has("post"):
            sel.append(self._col("po", "post", "name"))
            joins += sql.SQL(" LEFT JOIN post po ON po.id = t.post_id")
            if self.schema.has("community"):
                sel += self._community_cols("co", "coi")
                n_comm = 6
                joins += sql.SQL(" LEFT JOIN community co ON co.id = po.community_id "
                                 "LEFT JOIN instance coi ON coi.id = co.instance_id")
        elif comm_fk and self.schema.has("community"):
            sel += self._community_cols("co", "coi")
            n_comm = 6
            joins += sql.SQL(" LEFT JOIN community co ON co.id = t.{} "
                             "LEFT JOIN instance coi ON coi.id = co.instance_id").format(
                sql.Identifier(comm_fk))
        if tg.kind == "private_message":
            sel += self._person_cols("rc", "rci")
            joins += sql.SQL(" LEFT JOIN person rc ON rc.id = t.recipient_id "
                             "LEFT JOIN instance rci ON rci.id = rc.instance_id")
        conds = [sql.SQL("t.{} LIKE ANY(%(p)s)").format(sql.Identifier(c)) for c in search]
        if ids:
            conds.append(sql.SQL("t.id = ANY(%(ids)s)"))
        q = (sql.SQL("SELECT ") + sql.SQL(", ").join(sel)
             + sql.SQL(" FROM {} t").format(sql.Identifier(tg.table)) + joins
             + sql.SQL(" WHERE ") + sql.SQL(" OR ").join(conds)
             + sql.SQL(" ORDER BY t.id LIMIT %(lim)s"))
        rows = self._q(q, {"p": patterns, "ids": ids, "lim": ROW_LIMIT + 1})
        more = len(rows) > ROW_LIMIT
        hits: list[Hit] = []
        for r in rows[:ROW_LIMIT]:
            i = 0
            rid = r[i]; i += 1
            values = dict(zip(search, r[i:i + len(search)])); i += len(search)
            title, ap, pub, removed, deleted = r[i:i + 5]; i += 5
            extra = dict(zip(tg.extra, r[i:i + len(tg.extra)])); i += len(tg.extra)
            creator = None
            if n_person:
                creator = self._person(r[i:i + 8]); i += 8
            if tg.kind == "comment" and self.schema.has("post"):
                extra["post_name"] = r[i]; i += 1
            community = None
            if n_comm:
                community = self._community(r[i:i + 6]); i += 6
            if tg.kind == "private_message":
                extra["recipient"] = self._person(r[i:i + 8]); i += 8
            if tg.kind == "person":
                extra.pop("banned", None)          # shown with the person (the creator)

            fields, found_aliases, found_proxied, found_urls = [], set(), set(), []
            for col, val in values.items():
                if not isinstance(val, str) or not val:
                    continue
                refs = urls.find_image_refs(val, host)
                # post.url and similar hold one bare URL, maybe not caught by the text regex
                if not refs:
                    refs = urls.parse_image_url(val, host)
                col_hit = False
                for ref in refs:
                    if ref.alias and ref.alias in aliases:
                        found_aliases.add(ref.alias)
                        found_urls.append(ref.url)
                        col_hit = True
                    if ref.proxied_url and any(urls.same_url(ref.proxied_url, u)
                                               for u in proxied):
                        found_proxied.add(ref.proxied_url)
                        found_urls.append(ref.url)
                        col_hit = True
                for u in proxied:   # the remote URL itself, linked directly
                    if u in val:
                        found_proxied.add(u)
                        found_urls.append(u)
                        col_hit = True
                if col_hit:
                    fields.append(col)
            if rid in ids and not fields:
                fields.append("local_image.thumbnail_for_post_id")
            if not fields:
                continue    # a LIKE false positive (other host, other form)
            needles = list(found_aliases) + list(found_proxied)
            exc = None
            for c in tg.text_cols:
                v = values.get(c)
                if isinstance(v, str) and v and c in fields:
                    exc = _excerpt(v, needles)
                    break
            if tg.kind == "comment":
                title = extra.pop("post_name", None)
            hits.append(Hit(kind=tg.kind, id=rid, fields=fields, title=title, excerpt=exc,
                            ap_id=ap, creator=creator, community=community,
                            published=_iso(pub), removed=removed, deleted=deleted,
                            aliases=sorted(found_aliases), proxied_urls=sorted(found_proxied),
                            urls=list(dict.fromkeys(found_urls)), extra=extra))
        return hits, more


def to_dict(obj: Any) -> Any:
    """Dataclasses -> plain dicts (for the report model and --json)."""
    return asdict(obj)
